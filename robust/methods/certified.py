"""Interval bound propagation training (Gowal et al. 2018, "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models"); images in [0, 1], L-inf eps in pixel units."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.base.threat import Eps, ThreatModel, positive_eps
from robust.certify.ibp import certified, elided_bounds
from robust.methods.base import Method, WarmupUnit, finite_nonnegative


class IBP(Method):
    """``kappa * CE(z(x), y) + (1 - kappa) * CE(-m(x), y)``, ``m`` the elided margin lower bounds.

    ``m_j`` bounds ``z_y - z_j`` from below over the L-inf ball of the current training eps
    (:func:`robust.certify.ibp.elided_bounds`), so ``-m`` are worst-case logits relative to
    ``z_y``. Schedule (Gowal et al. Sec. 4): ``warmup`` epochs or steps of clean training
    (eps 0, kappa 1), then over ``ramp`` more, eps rises linearly to ``eps_train`` and kappa
    falls linearly to ``kappa_end``. The ramp is the base class's ``eps_scale``. Gowal et al.
    train MNIST with 2k warm-up and 10k ramp steps, ``kappa_end=0.5`` and ``eps_train = 1.1 * eps``.

    Bounds are computed with the model in eval mode (``attack_mode="eval"``: BatchNorm uses
    running statistics, dropout is off); the clean term uses the model's own mode.

    Args:
        eps: L-inf radius of the threat model (validation attacks, default ``eps_train``).
        kappa_end: final weight of the clean term, in [0, 1].
        warmup: length of the clean-only phase, in ``warmup_unit``.
        ramp: length of the linear ramp, in ``warmup_unit``; 0 jumps to the final values.
        eps_train: radius trained against; default ``eps``.
    """

    attack_mode = "eval"

    def __init__(
        self,
        eps: Eps,
        kappa_end: float = 0.5,
        warmup: float = 0,
        ramp: float = 0,
        eps_train: Eps | None = None,
        warmup_unit: WarmupUnit = "epochs",
    ) -> None:
        super().__init__(warmup=warmup, warmup_unit=warmup_unit)
        self.threat = ThreatModel("linf", eps)
        if not 0.0 <= kappa_end <= 1.0:
            raise ValueError(f"kappa_end must lie in [0, 1], got {kappa_end}")
        self.kappa_end = float(kappa_end)
        self.ramp = finite_nonnegative(ramp, "ramp")
        self.eps_train = float(self.threat.eps) if eps_train is None else positive_eps(eps_train, "eps_train")
        self.eps_scale = 0.0 if self.warmup + self.ramp > 0 else 1.0

    def update_schedule(self, epoch: float, step: int) -> float:
        """Set ``eps_scale`` in [0, 1]: 0 during warm-up, then linear over ``ramp``."""
        progress = (epoch if self.warmup_unit == "epochs" else float(step)) - self.warmup
        if progress < 0:
            self.eps_scale = 0.0
        else:
            self.eps_scale = 1.0 if self.ramp <= 0 else min(1.0, progress / self.ramp)
        return self.eps_scale

    @property
    def current_eps(self) -> float:
        """The training radius in force now (``eps_train`` times the schedule's scale)."""
        return self.eps_train * self.eps_scale

    @property
    def kappa(self) -> float:
        """Weight of the clean term now: 1 at the start of the ramp, ``kappa_end`` at its end."""
        return 1.0 - self.eps_scale * (1.0 - self.kappa_end)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        eps, kappa = self.current_eps, self.kappa
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        logs: dict[str, Any] = {"clean_acc": (logits.argmax(1) == y).float().mean().detach(), "eps": eps,
                                "kappa": kappa}
        if kappa >= 1.0:
            return clean, {"loss": clean.detach(), **logs}
        margins = self._craft(model, lambda: elided_bounds(model, x, y, eps))
        robust = F.cross_entropy(-margins, y)
        loss = kappa * clean + (1.0 - kappa) * robust
        logs.update(loss=loss.detach(), robust_loss=robust.detach(),
                    verified_acc=(certified(margins.detach(), y) & (logits.argmax(1) == y)).float().mean())
        return loss, logs

    def eval_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``verified_acc``: correct and IBP-verified at the threat model's eps (not the training eps)."""
        with torch.no_grad():
            proved = certified(elided_bounds(model, x, y, float(self.threat.eps)), y)
        return {"verified_acc": (proved & (logits.argmax(1) == y)).float().mean()}
