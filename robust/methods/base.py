"""The training-method contract: ``method.loss(model, x, y) -> (loss, logs)``."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from robust.base.spec import Recorded
from robust.base.threat import ThreatModel

WarmupUnit = Literal["epochs", "steps"]


def finite_nonnegative(value: float, field: str) -> float:
    """``value`` as a float; a ``ValueError`` naming ``field`` unless it is finite and >= 0 (a NaN or
    infinite warm-up would silently keep eps at 0 forever)."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a finite number >= 0, got {value}")
    return float(value)


class Method(Recorded):
    """Base class of training objectives.

    Subclasses implement :meth:`loss`. Methods with a threat model get an epsilon
    warm-up: the attack budget ramps linearly from 0 to ``threat.eps`` over the first
    ``warmup`` epochs or steps (``warmup_unit``), as in Gowal et al. 2018 and the
    MNIST recipes of Wong et al. 2020. The ramp scales the budget inside the method;
    the ThreatModel itself always holds the full, positive eps.

    ``attack_mode`` says in which mode BatchNorm/dropout run while the training attack
    is crafted: ``"train"`` (Madry et al., Wong et al.: the mode the loss uses) or
    ``"eval"`` (TRADES and MART reference code). It is switched once per batch.
    """

    threat: ThreatModel | None = None
    attack_mode: Literal["train", "eval"] = "train"

    def __init__(self, warmup: float = 0, warmup_unit: WarmupUnit = "epochs") -> None:
        self.warmup = finite_nonnegative(warmup, "warmup")
        if warmup_unit not in ("epochs", "steps"):
            raise ValueError(f"warmup_unit must be 'epochs' or 'steps', got {warmup_unit!r}")
        self.warmup_unit = warmup_unit
        self.eps_scale = 1.0

    def update_schedule(self, epoch: float, step: int) -> float:
        """Set the warm-up scale from training progress (fractional epoch, global step)."""
        if self.warmup <= 0:
            self.eps_scale = 1.0
        else:
            progress = epoch if self.warmup_unit == "epochs" else float(step)
            self.eps_scale = min(1.0, max(0.0, progress / self.warmup))
        return self.eps_scale

    @property
    def current_eps(self) -> float:
        """The attack budget in force now (``threat.eps`` times the warm-up scale)."""
        return 0.0 if self.threat is None else float(self.threat.eps) * self.eps_scale

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def eval_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-batch validation/test metrics of this method (mean over the batch), logged as
        ``val/<name>`` and ``test/<name>``; the model is in eval mode and ``logits`` are its clean
        outputs on ``x`` (already computed). None by default."""
        return {}

    def _craft(self, model: nn.Module, fn: Any) -> torch.Tensor:
        """Run ``fn()`` with the model in ``attack_mode``, then restore its mode."""
        was_training = model.training
        want_training = self.attack_mode == "train" and was_training
        if want_training != was_training:
            model.train(want_training)
        try:
            return fn()
        finally:
            if model.training != was_training:
                model.train(was_training)

    def __repr__(self) -> str:
        args = getattr(self, "_robust_spec", {}).get("init_args", {})
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
