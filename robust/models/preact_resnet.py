"""Pre-activation ResNet-18 for CIFAR-sized images.

The network of Wong, Rice & Kolter 2020 ("Fast is better than free: revisiting
adversarial training"), built from the pre-activation blocks of He et al. 2016
("Identity Mappings in Deep Residual Networks"): a 3x3 stem, four stages of two
blocks with 64-128-256-512 channels, BN-ReLU, global average pooling and a linear
head. Pooling is adaptive, so inputs other than 32x32 work too.

Inputs are images in [0, 1]; given ``mean``/``std``, a :class:`Normalize` is the
first layer. Attribute names follow the reference code, so its state_dicts load
into a model built without ``mean``/``std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robust.base.spec import Recorded
from robust.models.normalize import input_layer
from robust.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity (or 1x1 projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(Recorded, nn.Module):
    """Pre-activation ResNet-18 (Wong et al. 2020; He et al. 2016), 11.2M parameters."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = input_layer(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        in_planes = 64
        for i, planes in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if i == 1 else 2
            self.add_module(f"layer{i}", nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)))
            in_planes = planes
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


register_model("preact_resnet18")(PreActResNet18)
