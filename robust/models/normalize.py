"""Normalisation as the model's first layer, so everything outside works in [0, 1] pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust.base.spec import Recorded


class Normalize(Recorded, nn.Module):
    """``(x - mean) / std`` per channel, with mean and std stored as buffers.

    Args:
        mean: per-channel means of images in [0, 1] (one value per channel).
        std: per-channel standard deviations, all > 0.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.dim() != 1 or std_t.shape != mean_t.shape:
            raise ValueError(f"mean and std must be equal-length sequences, got {list(mean)} and {list(std)}")
        if not torch.all(std_t > 0):
            raise ValueError(f"std must be > 0 for every channel, got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalize(body: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """Prefix ``body`` with :class:`Normalize` when mean and std are given."""
    if mean is None and std is None:
        return body
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    return nn.Sequential(Normalize(mean, std), body)


def input_layer(mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """``Normalize(mean, std)`` when both are given, else ``nn.Identity()`` (keeps state_dict keys stable)."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    return nn.Identity() if mean is None else Normalize(mean, std)
