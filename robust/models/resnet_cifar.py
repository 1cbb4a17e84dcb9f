"""ResNets for CIFAR-sized images: ResNet-20/32/44/56/110 (depth = 6n + 2).

He et al. 2016 ("Deep Residual Learning for Image Recognition", Sec. 4.2): a 3x3
stem with 16 channels, three stages of ``n`` basic blocks with 16-32-64 channels,
global average pooling and a linear head. This is the variant with 1x1-conv + BN
projection shortcuts (bearpaw/pytorch-classification) that Cohen, Rosenfeld &
Kolter 2019 ("Certified Adversarial Robustness via Randomized Smoothing") train as
ResNet-110 on CIFAR-10. Pooling is adaptive, so other input sizes work too.

Inputs are images in [0, 1]; given ``mean``/``std``, a :class:`Normalize` is the
first layer. Attribute names follow the reference code, so its state_dicts load
into a model built without ``mean``/``std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.base.spec import Recorded
from robust.models.normalize import input_layer
from robust.models.registry import forwarded_signature, register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the (projected) input, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(Recorded, nn.Module):
    """CIFAR ResNet of ``depth`` = 6n + 2 layers (n >= 1: 8, 14, 20, 32, 44, 56, 110, ...)."""

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 56, 110), got {depth!r}")
        n = (depth - 2) // 6
        self.normalize = input_layer(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inplanes = 16
        for i, planes in enumerate((16, 32, 64), start=1):
            stride = 1 if i == 1 else 2
            blocks = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class ResNet110(CifarResNet):
    """ResNet-110 (18 blocks per stage, 1.7M parameters), Cohen et al. 2019's CIFAR-10 base classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(110, num_classes, in_channels, mean, std)


register_model("resnet110")(ResNet110)


@register_model("resnet20")
def resnet20(num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-20 (3 blocks per stage, 0.27M parameters)."""
    return CifarResNet(20, num_classes=num_classes, **kwargs)


resnet20.__signature__ = forwarded_signature(CifarResNet, "depth")  # type: ignore[attr-defined]
