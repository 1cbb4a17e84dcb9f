"""The result object of :func:`robust.evaluation.evaluate`: accuracies with their counts and
intervals, per attack, per class, the audit and the protocol; ``to_dict()``/``to_json()`` give the
RobustBench-style record the report writers and the leaderboard read."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class InconsistentReport(ValueError):
    """A report whose numbers contradict each other (robust above clean, correct above n, ...): a bug
    upstream, refused before the report is written or ranked."""


def _record(rec: Any, where: str, n: int | None = None) -> tuple[int, int]:
    """``(correct, n)`` of an accuracy record, after checking that it is one: integer counts with
    ``0 <= correct <= n``, ``accuracy == correct / n`` and a 95% interval of two numbers around it."""
    if not isinstance(rec, Mapping):
        raise InconsistentReport(f"{where}: expected an accuracy record, got {rec!r}")
    correct, total, accuracy, ci = rec.get("correct"), rec.get("n"), rec.get("accuracy"), rec.get("ci95")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (correct, total)) or not 0 <= correct <= total:
        raise InconsistentReport(f"{where}: needs integer counts with 0 <= correct <= n, got correct {correct!r} "
                                 f"of n {total!r}")
    if n is not None and total != n:
        raise InconsistentReport(f"{where}: counts {total} examples where the report has {n}")
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or \
            not math.isclose(float(accuracy), correct / total if total else 0.0, rel_tol=1e-9, abs_tol=1e-12):
        raise InconsistentReport(f"{where}: accuracy {accuracy!r} is not correct / n = {correct}/{total}")
    if ci is not None:
        if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ci) \
                or not 0 <= ci[0] <= float(accuracy) + 1e-9 or not float(accuracy) - 1e-9 <= ci[1] <= 1:
            raise InconsistentReport(f"{where}: ci95 must be two numbers in [0, 1] around the accuracy, got {ci!r}")
    return correct, total


def _entries(report: Mapping[str, Any], field_: str) -> list[tuple[Any, Mapping[str, Any]]]:
    """``(key, entry)`` of a report's mapping (or list) ``field_``; entries that are ``None`` are left out."""
    value = report.get(field_) or {}
    items = list(value.items()) if isinstance(value, Mapping) else list(enumerate(value)) \
        if isinstance(value, list) else None
    if items is None or not all(isinstance(v, Mapping) for _, v in items if v is not None):
        raise InconsistentReport(f"{field_}: expected a mapping of records, got {value!r:.80}")
    return [(k, v) for k, v in items if v is not None]


def check_report(report: Mapping[str, Any]) -> None:
    """Raise :class:`InconsistentReport` naming the field unless the numbers of a robustness report (the dict
    of :meth:`RobustnessReport.to_dict`) agree: every accuracy record is well formed; clean, robust and each
    attack count the report's ``n_examples``; robust <= each attack's robust <= clean; per class and per
    eps robust <= clean; the audit is unreliable exactly when it has flags."""
    n = report.get("n_examples")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InconsistentReport(f"n_examples must be a count, got {n!r}")
    clean, _ = _record(report.get("clean"), "clean", n)
    robust, _ = _record(report.get("robust"), "robust", n)
    if robust > clean:
        raise InconsistentReport(f"robust accuracy ({robust}/{n}) is above clean accuracy ({clean}/{n}): an "
                                 "example can only be robust if it is classified correctly")
    for name, rec in _entries(report, "per_attack"):
        alone, _ = _record(rec.get("robust"), f"per_attack.{name}.robust", n)
        if not robust <= alone <= clean:
            raise InconsistentReport(f"per_attack.{name}: {alone}/{n} robust must lie between the worst case over "
                                     f"all attacks ({robust}) and clean ({clean})")
    for c, rec in _entries(report, "per_class"):
        k = rec.get("n")
        c_clean, _ = _record(rec.get("clean"), f"per_class.{c}.clean", k) if rec.get("clean") else (None, k)
        c_robust, _ = _record(rec.get("robust"), f"per_class.{c}.robust", k)
        if c_clean is not None and c_robust > c_clean:
            raise InconsistentReport(f"per_class.{c}: robust {c_robust}/{k} is above clean {c_clean}/{k}")
    for _, point in _entries(report, "sweep"):
        p_robust, p_n = _record(point.get("robust"), f"sweep at eps {point.get('eps')}.robust")
        if point.get("clean") is not None:
            p_clean, _ = _record(point["clean"], f"sweep at eps {point.get('eps')}.clean", p_n)
            if p_robust > p_clean:
                raise InconsistentReport(f"sweep at eps {point.get('eps')}: robust {p_robust}/{p_n} is above clean "
                                         f"{p_clean}/{p_n}")
    for kind, sub in _entries(report, "physical"):
        if sub.get("clean") is not None:
            s_clean, s_n = _record(sub["clean"], f"physical.{kind}.clean")
            s_robust, _ = _record(sub.get("robust"), f"physical.{kind}.robust", s_n)
            if s_robust > s_clean:
                raise InconsistentReport(f"physical.{kind}: robust {s_robust}/{s_n} is above clean {s_clean}/{s_n}")
    check_stickers(report.get("stickers"))
    audit = report.get("audit") or {}
    if audit.get("ran") and bool(audit.get("unreliable")) != bool(audit.get("flags")):
        raise InconsistentReport(f"audit: unreliable is {audit.get('unreliable')!r} but it lists "
                                 f"{len(audit.get('flags') or [])} flag(s)")


def check_stickers(stickers: Mapping[str, Any] | None) -> None:
    """Raise :class:`InconsistentReport` unless each track-level sticker result (the dicts of
    :func:`robust.evaluation.stickers.evaluate_on_tracks`) agrees: well-formed records (success records carry
    ``rate``/``successes``); frames fooled counted among clean-correct frames; every level counts the tracks
    evaluated, at most the tracks; no level fools more tracks than ``any`` or fewer than ``all``."""
    for name, sub in _entries({"stickers": stickers}, "stickers"):
        where = f"stickers.{name}"

        def success(rec: Any, at: str, n: int | None = None) -> tuple[int, int]:
            rec = {"accuracy": rec.get("rate"), "correct": rec.get("successes"), "n": rec.get("n"),
                   "ci95": rec.get("ci95")} if isinstance(rec, Mapping) else rec
            return _record(rec, f"{where}.{at}", n)

        clean, frames = _record(sub.get("clean"), f"{where}.clean")
        _, counted = success(sub.get("per_image"), "per_image")
        if counted > clean:
            raise InconsistentReport(f"{where}: {counted} frames counted but only {clean}/{frames} read right clean")
        evaluated, tracks = sub.get("tracks_evaluated"), sub.get("tracks")
        if not isinstance(evaluated, int) or not isinstance(tracks, int) or not 0 <= evaluated <= tracks:
            raise InconsistentReport(f"{where}: tracks_evaluated {evaluated!r} must be a count <= tracks {tracks!r}")
        fooled = {level: success(rec, f"per_track.{level}", evaluated)[0]
                  for level, rec in (sub.get("per_track") or {}).items()}
        for level, k in fooled.items():
            if not fooled.get("all", 0) <= k <= fooled.get("any", evaluated):
                raise InconsistentReport(f"{where}.per_track.{level}: {k} tracks fooled, outside [all, any] = "
                                         f"[{fooled.get('all', 0)}, {fooled.get('any', evaluated)}]")


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
    weather: dict[str, Any] | None = None  # robust.evaluation.weather.evaluate_weather: a group apart from corruptions
    physical: dict[str, Any] | None = None
    stickers: dict[str, Any] | None = None  # robust.evaluation.stickers.evaluate_on_tracks results, by name
    per_example: dict[str, Any] | None = None
    safety: dict[str, Any] | None = None  # robust.evaluation.safety.safety_view: safety classes, harm, targeted
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

    def check(self) -> None:
        """:func:`check_report` on this report, plus what only the object knows: the per-class counts add
        up to the totals and the robust count is the worst case of the per-attack masks."""
        check_report(self.to_dict())
        per_class = self.per_class or {}
        if per_class:
            for field_ in ("clean", "robust"):
                total = sum(rec[field_]["correct"] for rec in per_class.values())
                if total != getattr(self, field_)["correct"] or sum(rec["n"] for rec in per_class.values()) \
                        != self.n_examples:
                    raise InconsistentReport(f"per_class: the {field_} counts add up to {total}, the report "
                                             f"says {getattr(self, field_)['correct']}")
        if self.masks and self.per_example:
            import torch

            clean_ok = torch.tensor(self.per_example["clean_pred"]) == torch.tensor(self.per_example["label"])
            worst = int((torch.stack(list(self.masks.values())).all(0) & clean_ok).sum())
            if worst != self.robust["correct"]:
                raise InconsistentReport(f"robust: {self.robust['correct']} examples, but {worst} survive every "
                                         "attack's mask")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustnessReport":
        names = set(cls.__dataclass_fields__) - {"masks", "examples"}
        return cls(**{k: v for k, v in d.items() if k in names})
