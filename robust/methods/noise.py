"""Gaussian data augmentation for randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.methods.base import Method


class GaussianNoise(Method):
    """Cross-entropy on ``x + sigma * N(0, I)``: the training of Cohen et al. 2019, Sec. 4.

    The noise is added in [0, 1] pixel space and not clamped, exactly as at certification
    time (:class:`robust.certify.smoothing.Smooth`); train with the ``sigma`` you certify with.

    Args:
        sigma: standard deviation of the noise, in pixel units.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(x + self.sigma * torch.randn_like(x))
        loss = F.cross_entropy(logits, y)
        noisy_acc = (logits.argmax(1) == y).float().mean().detach()
        return loss, {"loss": loss.detach(), "noisy_acc": noisy_acc, "sigma": self.sigma}

    def eval_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``noisy_acc``: accuracy of the base model on ``x + sigma * N(0, I)`` (fixed noise seed),
        the single-sample proxy of the smoothed classifier's accuracy that recipes select on."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            return {"noisy_acc": (model(x + self.sigma * noise).argmax(1) == y).float().mean()}
