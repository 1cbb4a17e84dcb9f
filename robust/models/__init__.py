"""Models: a registry (``create``), ``Normalize`` and the architectures the field trains."""

from robust.models.cnn import CNN4, CNNLarge, CNNMedium, CNNSmall, MadryCNN, SmallCNN
from robust.models.normalize import Normalize, with_normalize
from robust.models.preact_resnet import PreActResNet18
from robust.models.registry import create, list_models, register_model
from robust.models.resnet_cifar import CifarResNet, ResNet110
from robust.models.wide_resnet import WideResNet

__all__ = [
    "CNN4", "CNNLarge", "CNNMedium", "CNNSmall", "MadryCNN", "CifarResNet", "Normalize", "PreActResNet18",
    "ResNet110", "SmallCNN", "WideResNet",
    "create", "list_models", "register_model", "with_normalize",
]
