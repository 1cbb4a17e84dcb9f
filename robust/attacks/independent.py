"""Evaluation attacks from torchattacks, built from the plans of :mod:`robust.attacks.registry`.

These attacks *measure* robustness, so they are independent of our training attacks
(a bug in one cannot flatter the other). Every attack here:

* runs with the model in eval mode (torchattacks switches it and restores it);
* runs under ``torch.random.fork_rng()`` with a fixed seed: torchattacks' APGD, APGD-T,
  FAB and Square call ``torch.manual_seed`` on every call, which would otherwise reset
  the caller's random stream;
* is judged by us, not by the attack: an example counts as broken only when the
  returned input lies in [0, 1] and in the eps-ball (checked with the threat model's
  norm) *and* the model misclassifies it. Minimum-norm attacks (FAB, CW-L2, DeepFool)
  can return points outside the ball; those count as failures.

``autoattack`` is the RobustBench "standard" protocol (Croce & Hein 2020) composed from
torchattacks' pieces with the reference settings, because torchattacks' own
``AutoAttack`` (3.5.1) runs 10 iterations and n-1 target classes:
APGD-CE (100 steps, 1 restart) -> APGD-T (100 steps, 9 target classes) -> FAB-T
(100 steps, 9 target classes) -> Square (5000 queries, p_init 0.8), each on the points
still classified correctly. ``autoattack-rand`` is the protocol's version for randomised
defences: APGD-CE and APGD-DLR with 20 EOT samples per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchattacks
from torch import nn

from robust.attacks.registry import ATTACK_DEFAULTS, Part, list_attacks, plan_attack  # noqa: F401 - re-exported
from robust.base.batching import check_images
from robust.base.threat import ThreatModel


def in_ball(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Per-example bool: ``x_adv`` lies in [0, 1] and within the threat's eps-ball around ``x``.

    The tolerance (1e-5 relative, 1e-6 absolute) only absorbs float rounding of the clamp.
    """
    delta = (x_adv - x).flatten(1).float()
    eps = float(threat.eps)
    size = delta.abs().amax(1) if threat.norm == "linf" else delta.norm(dim=1)
    box = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(1)
    return box & (size <= eps * (1 + 1e-5) + 1e-6)


def cw_margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive once misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return (other - true).sum()


class PGD(torchattacks.PGD):
    """torchattacks' L-inf PGD with restarts: an example is broken by the first restart that fools it.

    ``loss`` is ``"ce"`` (Madry et al. 2018) or ``"cw"`` (the margin loss of Carlini & Wagner
    2017, which does not saturate when the softmax does).
    """

    def __init__(self, model, eps, alpha, steps, restarts=1, random_start=True, loss="ce"):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
        self.restarts, self.loss = restarts, loss

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "cw":
            return cw_margin_loss(logits, labels)
        return nn.functional.cross_entropy(logits, labels, reduction="sum")

    def _step(self, adv: torch.Tensor, images: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        delta = (adv + self.alpha * grad.sign() - images).clamp(-self.eps, self.eps)
        return (images + delta).clamp(0, 1)

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return images.clone()
        return (images + torch.empty_like(images).uniform_(-self.eps, self.eps)).clamp(0, 1)

    def _single(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = self._start(images).detach()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            grad, = torch.autograd.grad(self._loss(self.get_logits(adv), labels), adv)
            adv = self._step(adv.detach(), images, grad).detach()
        return adv

    def forward(self, images, labels):
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        best = images.clone()
        todo = torch.ones(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.restarts):
            idx = todo.nonzero().flatten()
            if idx.numel() == 0:
                break
            adv = self._single(images[idx], labels[idx])
            with torch.no_grad():
                fooled = self.get_logits(adv).argmax(1) != labels[idx]
            best[idx] = adv  # the last restart's point for survivors, the first fooling one otherwise
            todo[idx[fooled]] = False
        return best


class PGDL2(PGD):
    """L2 PGD with restarts (normalised-gradient steps, projection onto the L2 ball), as torchattacks.PGDL2."""

    def _step(self, adv: torch.Tensor, images: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-10).view(-1, *[1] * (grad.ndim - 1))
        delta = adv + self.alpha * grad / norm - images
        dnorm = delta.flatten(1).norm(dim=1).view_as(norm)
        delta = delta * (self.eps / dnorm.clamp_min(1e-12)).clamp(max=1.0)
        return (images + delta).clamp(0, 1)

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return images.clone()
        delta = torch.randn_like(images)
        norm = delta.flatten(1).norm(dim=1).view(-1, *[1] * (images.ndim - 1))
        r = torch.rand_like(norm)
        return (images + delta / norm * r * self.eps).clamp(0, 1)


OWN_ATTACKS = {"PGD": PGD, "PGDL2": PGDL2}
"""The attacks of ours a plan may name (``robust.attacks.independent.PGD``), besides torchattacks'."""


@dataclass
class AttackOutcome:
    """What one attack did to a batch: ``robust`` (bool, N) is True where the model still
    classifies correctly; ``x_adv`` are the points tried, ``adv_pred`` the model's predictions
    on them; ``components`` counts, for composed attacks, the examples each part broke."""

    robust: torch.Tensor
    x_adv: torch.Tensor
    adv_pred: torch.Tensor
    components: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class EvalAttack:
    """A named evaluation attack with its settings; ``run`` attacks the correctly classified examples.

    ``parts`` is a list of (name, builder) where ``builder(model, seed)`` returns a torchattacks
    attack; parts run in order, each on the examples that survived the ones before it.
    """

    name: str
    threat: ThreatModel
    settings: dict[str, Any]
    parts: list[tuple[str, Callable[[nn.Module, int], torchattacks.attack.Attack]]]

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> AttackOutcome:
        """Attack ``(x, y)``; examples misclassified without attack are not attacked and count as broken."""
        check_images(x, y)
        start = time.perf_counter()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad():
            pred = model(x).argmax(1)
        robust = pred == y
        x_adv, adv_pred = x.clone(), pred.clone()
        components: dict[str, int] = {}
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            for i, (part, builder) in enumerate(self.parts):
                idx = robust.nonzero().flatten()
                components[part] = 0
                if idx.numel() == 0:
                    continue
                torch.manual_seed(seed + 7919 * i)
                attack = builder(model, seed + 7919 * i)
                cand = attack(x[idx], y[idx]).detach()
                with torch.no_grad():
                    cand_pred = model(cand).argmax(1)
                broken = (cand_pred != y[idx]) & in_ball(cand, x[idx], self.threat)
                hit = idx[broken]
                x_adv[hit], adv_pred[hit] = cand[broken], cand_pred[broken]
                robust[hit] = False
                components[part] = int(broken.sum())
        return AttackOutcome(robust, x_adv, adv_pred, components, time.perf_counter() - start)


def part_builder(part: Part) -> Callable[[nn.Module, int], torchattacks.attack.Attack]:
    """``builder(model, seed)`` for a planned part: its class, torchattacks' or ours, with its arguments."""
    package, _, name = part.cls.rpartition(".")
    if package == "torchattacks":
        cls = getattr(torchattacks, name)
    elif package == __name__ and name in OWN_ATTACKS:
        cls = OWN_ATTACKS[name]
    else:
        raise ValueError(f"part {part.name!r}: {part.cls!r} is neither a torchattacks class nor one of ours")

    def build(model: nn.Module, seed: int) -> torchattacks.attack.Attack:
        attack = cls(model, **part.kwargs, **({"seed": seed} if part.seeded else {}))
        for key, value in part.attrs.items():
            setattr(attack, key, value)
        return attack

    return build


def build_attack(name: str, threat: ThreatModel, n_classes: int, **options: Any) -> EvalAttack:
    """An :class:`EvalAttack` for the registered ``name`` under ``threat`` with its published defaults.

    ``options`` override the defaults (``robust.attacks.registry.attack_defaults(name)``); unknown
    options, unknown names and L2-only attacks under ``linf`` raise a ``ValueError`` that says so.
    """
    threat = ThreatModel.coerce(threat)
    plan = plan_attack(name, threat, n_classes, **options)
    settings = {**plan.settings, "impl": plan.settings.get("impl", f"torchattacks {torchattacks.__version__}")}
    return EvalAttack(name, threat, settings, [(part.name, part_builder(part)) for part in plan.parts])


def pgd_robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int = 0,
                       **options: Any) -> torch.Tensor:
    """Per-example bool: still classified correctly after the registry's ``pgd`` with ``options``
    (``steps``, ``step_size``, ``restarts``, ``random_start``), seeded with ``seed``.

    A shorthand for one batch (the test loop's default step: ``eps / 10`` unless given, where the
    registry's ``pgd`` takes Madry's ``2.5 * eps / steps``); measurements go through
    :func:`robust.evaluation.evaluate`.
    """
    threat = ThreatModel.coerce(threat)
    step = options.get("step_size")
    options["step_size"] = float(threat.eps) / 10 if step is None else float(step)
    return build_attack("pgd", threat, 2, **options).run(model, x, y, seed=seed).robust
