"""Evaluation attacks from torchattacks, independent of our training attacks.

torchattacks' attacks put the model in eval mode for the attack and restore it,
check that inputs lie in [0, 1], and some reseed the global RNG: every call here
runs under ``torch.random.fork_rng()`` with a fixed seed, so the caller's random
stream (training shuffles, random starts) is left untouched.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

from robust.threat import ThreatModel


def _check_range(x: torch.Tensor) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images must lie in [0, 1] (normalisation belongs inside the model), got min {lo:.4g}, max {hi:.4g}")


def pgd_robust_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    steps: int = 50,
    step_size: float | None = None,
    restarts: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Per-example bool: still classified correctly after torchattacks' PGD.

    L-inf uses ``torchattacks.PGD``, L2 ``torchattacks.PGDL2``; each restart draws a
    fresh random start and an example counts as robust only if it survives all of
    them. ``step_size`` defaults to ``eps / 10``.
    """
    _check_range(x)
    if restarts < 1 or steps < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    eps = float(threat.eps)
    alpha = eps / 10 if step_size is None else float(step_size)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(seed)
        if threat.norm == "linf":
            attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        else:
            attack = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        for _ in range(restarts):
            idx = correct.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_adv = attack(x[idx], y[idx])
            with torch.no_grad():
                still = model(x_adv).argmax(1) == y[idx]
            correct[idx] = still
    return correct
