"""Wide residual networks WRN-d-k for CIFAR-sized images (depth d = 6n + 4).

Zagoruyko & Komodakis 2016 ("Wide Residual Networks"): a 3x3 stem with 16 channels,
three stages of ``n`` pre-activation blocks with 16k-32k-64k channels, BN-ReLU,
global average pooling and a linear head. WRN-34-10 is the TRADES (Zhang et al.
2019) network and WRN-28-10 the usual RobustBench one. Pooling is adaptive, so
other input sizes work too.

Inputs are images in [0, 1]; given ``mean``/``std``, a :class:`Normalize` is the
first layer. Attribute names follow the TRADES/RobustBench code, so their
state_dicts load into a model built without ``mean``/``std`` (TRADES checkpoints
also hold an unused ``sub_block1``; drop those keys first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.base.spec import Recorded
from robust.models.normalize import input_layer
from robust.models.registry import forwarded_signature, register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3; a width change projects the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.convShortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """One stage: ``n`` blocks, the first changing width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
              for i in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Recorded, nn.Module):
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016), e.g. WRN-28-10 (36.5M parameters)."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 16, 28, 34), got {depth!r}")
        if not isinstance(widen_factor, int) or isinstance(widen_factor, bool) or widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {widen_factor!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = input_layer(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _wrn(depth: int, widen_factor: int) -> Callable[..., WideResNet]:
    def build(num_classes: int = 10, **kwargs: Any) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes=num_classes, **kwargs)

    build.__doc__ = f"WRN-{depth}-{widen_factor}."
    build.__signature__ = forwarded_signature(WideResNet, "depth", "widen_factor")  # type: ignore[attr-defined]
    return build


register_model("wrn16_1")(_wrn(16, 1))
register_model("wrn28_10")(_wrn(28, 10))
register_model("wrn34_10")(_wrn(34, 10))
