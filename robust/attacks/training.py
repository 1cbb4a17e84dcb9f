"""Training-time attacks, written for speed (these never *measure* robustness).

Gradients are taken with respect to the input only: the parameters are marked as not
requiring gradients for the attack's duration, so autograd (and a ``torch.compile``d
backward, which would otherwise compute weight gradients too) does no work for them and
they accumulate nothing. The model's train/eval mode is left as the caller set it (no
toggling per step); the L-inf feasible box is computed once per batch and each step is
a single clamp to it. Inputs are images in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from robust.base.threat import ThreatModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model``'s trainable parameters marked ``requires_grad=False``, then restore them."""
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    eps: float | None = None,
    loss_fn: LossFn = _ce_sum,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn(model(x_adv), y)`` inside ``threat``.

    ``eps`` overrides ``threat.eps`` (for warm-up schedules); ``step_size`` defaults
    to ``2.5 * eps / steps`` (Madry et al. 2018). ``start`` replaces the random start
    (TRADES starts at ``x + 0.001 * N(0, 1)``). The loss should be a *sum* over the
    batch so the per-example gradient does not shrink with the batch size.
    Returns a detached tensor inside the ball and [0, 1].
    """
    e = float(threat.eps if eps is None else eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alpha = 2.5 * e / steps if step_size is None else float(step_size)
    x = x.detach()
    box = threat.box(x, e) if threat.norm == "linf" else None
    if start is not None:
        x_adv = threat.project(start.detach(), x, e, box)
    elif random_start:
        x_adv = threat.random_start(x, e)
    else:
        x_adv = x.clone()
    with frozen_parameters(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(threat.step(x_adv.detach(), grad, alpha), x, e, box)
    x_adv = x_adv.detach()
    # never a point outside the ball or [0, 1]: checked on the device, without waiting for it
    torch._assert_async(threat.contains(x_adv, x, e).all(), "pgd returned a point outside the threat model's ball or [0, 1]")
    return x_adv


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    step_size: float | None = None,
    eps: float | None = None,
    loss_fn: LossFn = _ce_sum,
) -> torch.Tensor:
    """FGSM from a uniform random start (Wong, Rice & Kolter 2020), default step 1.25 * eps."""
    e = float(threat.eps if eps is None else eps)
    alpha = 1.25 * e if step_size is None else float(step_size)
    return pgd(model, x, y, threat, steps=1, step_size=alpha, random_start=True, eps=e, loss_fn=loss_fn)
