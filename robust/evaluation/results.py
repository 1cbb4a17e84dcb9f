"""The result object of :func:`robust.evaluation.evaluate`: accuracies with their counts and
intervals, per attack, per class, the audit and the protocol; ``to_dict()``/``to_json()`` give the
RobustBench-style record the report writers and the leaderboard read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class RobustnessReport:
    """The result of :func:`evaluate`; ``to_json()`` gives the RobustBench-style record.

    Accuracies are fractions in [0, 1]; every accuracy record carries its ``correct``, ``n``
    and 95% Clopper-Pearson interval. ``masks`` (not serialised) holds the per-example
    robust masks of each attack, ``examples`` a few clean/adversarial pairs for plots.
    """

    threat: dict[str, Any]
    n_examples: int
    clean: dict[str, Any]
    robust: dict[str, Any]
    per_attack: dict[str, dict[str, Any]]
    per_class: dict[str, dict[str, Any]]
    confusion: list[dict[str, int]]
    audit: dict[str, Any]
    protocol: dict[str, Any]
    seconds: float = 0.0
    sweep: list[dict[str, Any]] | None = None
    class_names: list[str] | None = None
    corruptions: dict[str, Any] | None = None
    physical: dict[str, Any] | None = None
    per_example: dict[str, Any] | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    examples: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def clean_accuracy(self) -> float:
        return self.clean["accuracy"]

    @property
    def robust_accuracy(self) -> float:
        return self.robust["accuracy"]

    @property
    def unreliable(self) -> bool:
        return bool(self.audit.get("unreliable", False))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("masks", "examples")}
        out = {"kind": "robustness", **out, "clean_accuracy": self.clean_accuracy,
               "robust_accuracy": self.robust_accuracy, "unreliable": self.unreliable}
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustnessReport":
        names = set(cls.__dataclass_fields__) - {"masks", "examples"}
        return cls(**{k: v for k, v in d.items() if k in names})
