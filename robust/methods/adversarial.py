"""Adversarial training objectives (images in [0, 1]; eps in pixel units)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.attacks.training import pgd
from robust.base.threat import Eps, ThreatModel, positive_eps
from robust.methods.base import Method, WarmupUnit, finite_nonnegative


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean().detach()


def _step(value: Any, field: str) -> float | None:
    return None if value is None else positive_eps(value, field)


def _steps(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"steps must be an integer >= 1, got {value!r}")
    return value


class Standard(Method):
    """Empirical risk minimisation: cross-entropy on clean images."""

    def __init__(self) -> None:
        super().__init__()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "clean_acc": _accuracy(logits, y)}


class _Attacking(Method):
    def __init__(self, threat: ThreatModel | dict, warmup: float, warmup_unit: WarmupUnit) -> None:
        super().__init__(warmup=warmup, warmup_unit=warmup_unit)
        self.threat = ThreatModel.coerce(threat)

    def _logs(self, loss: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        return {"loss": loss.detach(), "adv_acc": _accuracy(adv_logits, y), "eps": self.current_eps}


class PGD(_Attacking):
    """PGD adversarial training (Madry et al. 2018): cross-entropy on a k-step PGD point.

    Args:
        threat: the ball to train against (``{norm: linf, eps: 0.3}``).
        steps: PGD iterations.
        step_size: per-step size in pixel units; default ``2.5 * eps / steps``.
        random_start: start uniformly inside the ball.
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        step_size: Eps | None = None,
        random_start: bool = True,
        warmup: float = 0,
        warmup_unit: WarmupUnit = "epochs",
    ) -> None:
        super().__init__(threat, warmup, warmup_unit)
        self.steps = _steps(steps)
        self.step_size = _step(step_size, "step_size")
        self.random_start = bool(random_start)

    def _alpha(self, eps: float) -> float:
        if self.step_size is None:
            return 2.5 * eps / self.steps
        return self.step_size * self.eps_scale

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        eps = self.current_eps
        if eps > 0:
            x_adv = self._craft(model, lambda: pgd(model, x, y, self.threat, self.steps, self._alpha(eps), self.random_start, eps))
        else:
            x_adv = x
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, self._logs(loss, logits, y)


class FGSM(PGD):
    """FGSM with random start ("fast adversarial training", Wong, Rice & Kolter 2020).

    One signed-gradient step of ``step_size`` (default ``1.25 * eps``) from a uniform
    random start. Prone to catastrophic overfitting: pair it with
    ``robust.callbacks.CatastrophicOverfitting``.
    """

    def __init__(
        self,
        threat: ThreatModel,
        step_size: Eps | None = None,
        warmup: float = 0,
        warmup_unit: WarmupUnit = "epochs",
    ) -> None:
        super().__init__(threat, steps=1, step_size=step_size, random_start=True, warmup=warmup, warmup_unit=warmup_unit)

    def _alpha(self, eps: float) -> float:
        return 1.25 * eps if self.step_size is None else self.step_size * self.eps_scale


def _kl_sum(adv_logits: torch.Tensor, nat_probs: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(adv_logits, dim=1), nat_probs, reduction="sum")


class _Regularised(_Attacking):
    """A clean term plus ``beta`` times a robustness regulariser, attack crafted in eval mode."""

    attack_mode = "eval"

    def __init__(
        self,
        threat: ThreatModel,
        beta: float = 6.0,
        steps: int = 10,
        step_size: Eps | None = None,
        warmup: float = 0,
        warmup_unit: WarmupUnit = "epochs",
    ) -> None:
        super().__init__(threat, warmup, warmup_unit)
        self.beta = finite_nonnegative(beta, "beta")
        self.steps = _steps(steps)
        self.step_size = _step(step_size, "step_size")

    def _alpha(self, eps: float) -> float:
        return 2.5 * eps / self.steps if self.step_size is None else self.step_size * self.eps_scale


class TRADES(_Regularised):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``.

    The inner maximisation ascends the KL divergence from ``x + 0.001 * N(0, 1)``
    with the model in eval mode; clean and adversarial logits come from separate
    forward passes, as in the reference code. Published settings:
    CIFAR-10 ``beta=6, eps=0.031, steps=10, step_size=0.007``; MNIST ``beta=1,
    eps=0.3, steps=40, step_size=0.01``. Default step size ``2.5 * eps / steps``.
    """

    def _attack(self, model: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
        alpha = self._alpha(eps)
        with torch.no_grad():
            nat_probs = F.softmax(model(x), dim=1)
        start = x + 0.001 * torch.randn_like(x)
        return pgd(model, x, nat_probs, self.threat, self.steps, alpha, eps=eps, loss_fn=_kl_sum, start=start)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        eps = self.current_eps
        x_adv = self._craft(model, lambda: self._attack(model, x, eps)) if eps > 0 else x
        nat_logits, adv_logits = model(x), model(x_adv)
        natural = F.cross_entropy(nat_logits, y)
        robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(nat_logits, dim=1), reduction="batchmean")
        loss = natural + self.beta * robust
        logs = self._logs(loss, adv_logits, y)
        logs.update(clean_acc=_accuracy(nat_logits, y), natural_loss=natural.detach(), robust_loss=robust.detach())
        return loss, logs


class MART(_Regularised):
    """MART (Wang et al. 2020): boosted CE on x' plus ``beta * KL(f(x)||f(x')) * (1 - p_y(x))``.

    The boosted CE adds ``-log(1 - max_{k != y} p_k(x'))`` to the cross-entropy,
    weighting misclassified examples. The attack is PGD on cross-entropy from
    ``x + 0.001 * N(0, 1)``, crafted in eval mode; clean and adversarial logits come
    from separate forward passes (BatchNorm statistics as in the reference code). Published CIFAR-10 settings: ``beta=6``,
    ``eps=8/255``, 10 steps of ``2/255``.
    """

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        eps = self.current_eps
        if eps > 0:
            alpha = self._alpha(eps)
            start = x + 0.001 * torch.randn_like(x)
            x_adv = self._craft(model, lambda: pgd(model, x, y, self.threat, self.steps, alpha, eps=eps, start=start))
        else:
            x_adv = x
        nat_logits, adv_logits = model(x), model(x_adv)
        adv_probs = F.softmax(adv_logits, dim=1)
        nat_probs = F.softmax(nat_logits, dim=1)
        wrong = adv_probs.scatter(1, y[:, None], -1.0).argmax(1)
        boosted = F.cross_entropy(adv_logits, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
        robust = (kl * (1.0000001 - true_probs)).mean()
        loss = boosted + self.beta * robust
        logs = self._logs(loss, adv_logits, y)
        logs.update(clean_acc=_accuracy(nat_logits, y), robust_loss=robust.detach())
        return loss, logs
