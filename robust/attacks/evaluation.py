"""Evaluation attacks from torchattacks, behind a registry of names.

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

from robust.threat import ThreatModel

L2_ONLY = frozenset({"cw-l2", "deepfool"})
MAX_TARGETS = 9  # RobustBench standard: APGD-T and FAB-T use the 9 most likely other classes
MIN_CLASSES_TARGETED = 4  # the targeted DLR loss reads the 3rd and 4th largest logits


def check_images(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError`` naming the problem unless x is (N, C, H, W) in [0, 1] and y is (N,) integer."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"images must be a float tensor of shape (N, C, H, W), got {shape}")
    if x.numel() and (not torch.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0):
        lo, hi = float(x.nan_to_num(nan=-1.0).min()), float(x.nan_to_num(nan=2.0).max())
        raise ValueError(f"images must lie in [0, 1] (normalisation belongs inside the model), "
                         f"got min {lo:.4g}, max {hi:.4g}")
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex():
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got shape {shape}"
                         + (f" and dtype {y.dtype}" if isinstance(y, torch.Tensor) else ""))
    if len(y) != len(x):
        raise ValueError(f"got {len(x)} images but {len(y)} labels")


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


def _norm_name(threat: ThreatModel) -> str:
    return "Linf" if threat.norm == "linf" else "L2"


def _targets(n_classes: int, name: str) -> int:
    if n_classes < MIN_CLASSES_TARGETED:
        raise ValueError(f"{name} needs at least {MIN_CLASSES_TARGETED} classes (its targeted DLR loss "
                         f"reads the 3rd and 4th largest logits), got {n_classes}")
    return min(MAX_TARGETS, n_classes - 1)


def _apgd(threat, steps, loss, eot_iter=1, restarts=1):
    def build(model, seed):
        return torchattacks.APGD(model, norm=_norm_name(threat), eps=float(threat.eps), steps=steps,
                                 n_restarts=restarts, seed=seed, loss=loss, eot_iter=eot_iter, rho=0.75)
    return build


def _apgdt(threat, steps, n_classes, restarts=1):
    targets = _targets(n_classes, "apgd-t")

    def build(model, seed):
        attack = torchattacks.APGDT(model, norm=_norm_name(threat), eps=float(threat.eps), steps=steps,
                                    n_restarts=restarts, seed=seed, eot_iter=1, rho=0.75, n_classes=n_classes)
        attack.n_target_classes = targets
        return attack
    return build, targets


def _fab(threat, steps, n_classes, targeted, restarts=1):
    targets = _targets(n_classes, "fab-t") if targeted else None

    def build(model, seed):
        attack = torchattacks.FAB(model, norm=_norm_name(threat), eps=float(threat.eps), steps=steps,
                                  n_restarts=restarts, seed=seed, multi_targeted=targeted, n_classes=n_classes)
        if targeted:
            attack.n_target_classes = targets
        return attack
    return build, targets


def _square(threat, queries, p_init=0.8):
    def build(model, seed):
        return torchattacks.Square(model, norm=_norm_name(threat), eps=float(threat.eps), n_queries=queries,
                                   n_restarts=1, p_init=p_init, loss="margin", resc_schedule=False, seed=seed)
    return build


def _pgd(threat, steps, step_size, restarts, loss, random_start=True):
    alpha = step_size if step_size is not None else 2.5 * float(threat.eps) / steps
    cls = PGD if threat.norm == "linf" else PGDL2

    def build(model, seed):
        return cls(model, eps=float(threat.eps), alpha=alpha, steps=steps, restarts=restarts, loss=loss,
                   random_start=random_start)
    return build, alpha


def build_attack(name: str, threat: ThreatModel, n_classes: int, **options: Any) -> EvalAttack:
    """The registry: an :class:`EvalAttack` for ``name`` under ``threat`` with the published defaults.

    ``options`` override the defaults listed in ``ATTACK_DEFAULTS[name]``; unknown options,
    unknown names and L2-only attacks under ``linf`` raise a ``ValueError`` that says so.
    """
    threat = ThreatModel.coerce(threat)
    if name not in ATTACK_DEFAULTS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACK_DEFAULTS)}")
    if name in L2_ONLY and threat.norm != "l2":
        raise ValueError(f"{name} is an L2 attack and is refused under the {threat.norm} threat model")
    unknown = set(options) - set(ATTACK_DEFAULTS[name])
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for attack {name!r}; "
                         f"it takes {sorted(ATTACK_DEFAULTS[name]) or 'none'}")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes to attack, got {n_classes}")
    o = {**ATTACK_DEFAULTS[name], **options}
    for key in ("steps", "restarts", "queries", "eot_iter"):
        if key in o and (not isinstance(o[key], int) or o[key] < 1):
            raise ValueError(f"{name}: {key} must be a positive integer, got {o[key]!r}")
    settings: dict[str, Any] = {"norm": threat.norm, "eps": float(threat.eps), **o}
    parts: list = []
    if name == "fgsm":
        eps = float(threat.eps)
        cls = PGD if threat.norm == "linf" else PGDL2
        parts = [("fgsm", lambda m, s: cls(m, eps=eps, alpha=eps, steps=1, random_start=False))]
        settings["step_size"] = eps
        settings["impl"] = "single signed-gradient step (L2: normalised gradient) via robust.attacks.evaluation.PGD"
    elif name in ("pgd", "pgd-cw"):
        build, alpha = _pgd(threat, o["steps"], o["step_size"], o["restarts"], "cw" if name == "pgd-cw" else "ce",
                            bool(o["random_start"]))
        settings["step_size"] = alpha
        settings["loss"] = "cw-margin" if name == "pgd-cw" else "ce"
        parts = [(name, build)]
    elif name == "apgd-ce":
        parts = [(name, _apgd(threat, o["steps"], "ce", restarts=o["restarts"]))]
    elif name == "apgd-dlr":
        parts = [(name, _apgd(threat, o["steps"], "dlr", restarts=o["restarts"]))]
    elif name == "apgd-t":
        build, settings["target_classes"] = _apgdt(threat, o["steps"], n_classes, o["restarts"])
        parts = [(name, build)]
    elif name in ("fab", "fab-t"):
        build, targets = _fab(threat, o["steps"], n_classes, name == "fab-t", o["restarts"])
        if targets:
            settings["target_classes"] = targets
        parts = [(name, build)]
    elif name == "square":
        parts = [(name, _square(threat, o["queries"], o["p_init"]))]
    elif name == "cw-l2":
        c, kappa, steps, lr = o["c"], o["kappa"], o["steps"], o["lr"]
        parts = [(name, lambda m, s: torchattacks.CW(m, c=c, kappa=kappa, steps=steps, lr=lr))]
    elif name == "deepfool":
        steps, overshoot = o["steps"], o["overshoot"]
        parts = [(name, lambda m, s: torchattacks.DeepFool(m, steps=steps, overshoot=overshoot))]
    elif name == "autoattack":
        apgdt, targets = _apgdt(threat, o["steps"], n_classes)
        fabt, _ = _fab(threat, o["steps"], n_classes, True)
        parts = [("apgd-ce", _apgd(threat, o["steps"], "ce")), ("apgd-t", apgdt), ("fab-t", fabt),
                 ("square", _square(threat, o["queries"]))]
        settings.update(version="standard", components=["apgd-ce", "apgd-t", "fab-t", "square"],
                        target_classes=targets, restarts=1, square_p_init=0.8)
    elif name == "autoattack-rand":
        parts = [("apgd-ce", _apgd(threat, o["steps"], "ce", eot_iter=o["eot_iter"])),
                 ("apgd-dlr", _apgd(threat, o["steps"], "dlr", eot_iter=o["eot_iter"]))]
        settings.update(version="rand", components=["apgd-ce", "apgd-dlr"], restarts=1)
    settings["impl"] = settings.get("impl", f"torchattacks {torchattacks.__version__}")
    return EvalAttack(name, threat, settings, parts)


ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
    "fgsm": {},
    "pgd": {"steps": 50, "step_size": None, "restarts": 1, "random_start": True},
    "pgd-cw": {"steps": 50, "step_size": None, "restarts": 1, "random_start": True},
    "apgd-ce": {"steps": 100, "restarts": 1},
    "apgd-dlr": {"steps": 100, "restarts": 1},
    "apgd-t": {"steps": 100, "restarts": 1},
    "fab": {"steps": 100, "restarts": 1},
    "fab-t": {"steps": 100, "restarts": 1},
    "square": {"queries": 5000, "p_init": 0.8},
    "cw-l2": {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 0.01},
    "deepfool": {"steps": 50, "overshoot": 0.02},
    "autoattack": {"steps": 100, "queries": 5000},
    "autoattack-rand": {"steps": 100, "eot_iter": 20},
}
"""Registry of evaluation attacks and their defaults (RobustBench / the attacks' papers)."""


def list_attacks() -> list[str]:
    return list(ATTACK_DEFAULTS)


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
    """Per-example bool: still classified correctly after PGD with restarts (step ``eps / 10`` by default).

    Used by :class:`~robust.module.RobustClassifier`'s test step; the registry's ``pgd`` is the
    same attack with Madry's step rule ``2.5 * eps / steps``.
    """
    threat = ThreatModel.coerce(threat)
    if restarts < 1 or steps < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    alpha = float(threat.eps) / 10 if step_size is None else float(step_size)
    attack = build_attack("pgd", threat, n_classes=2, steps=steps, step_size=alpha, restarts=restarts)
    return attack.run(model, x, y, seed=seed).robust

