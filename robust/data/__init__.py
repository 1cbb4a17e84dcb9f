"""Data modules: every one yields float32 images in [0, 1] of shape (N, C, H, W) and int64 labels.

Normalisation is the model's first layer; each module's ``mean``/``std`` are there to build it.
``Digits`` needs no download and is the offline default; ``MNIST10k`` reads the MNIST test
split from ``../shared/data/mnist-t10k`` where the full MNIST cannot be downloaded.
"""

from __future__ import annotations

from typing import Any

from robust.data.base import (
    DataFormatError,
    DataNotFoundError,
    ImageTensorDataset,
    RobustDataModule,
    dataset_tensors,
)
from robust.data.digits import Digits
from robust.data.mnist10k import MNIST10k, default_mnist_t10k_root, load_mnist_t10k, read_idx
from robust.data.npz import Npz
from robust.data.vision import CIFAR10, CIFAR100, GTSRB, MNIST, SVHN, FashionMNIST, TorchvisionDataModule

DATAMODULES: dict[str, type[RobustDataModule]] = {
    "digits": Digits,
    "mnist": MNIST,
    "mnist10k": MNIST10k,
    "fashion_mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "svhn": SVHN,
    "gtsrb": GTSRB,
    "npz": Npz,
}


def create_datamodule(name: str, **kwargs: Any) -> RobustDataModule:
    """Build the data module registered as ``name`` (case-insensitive; ``-`` reads as ``_``)."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in DATAMODULES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATAMODULES))}")
    return DATAMODULES[key](**kwargs)


__all__ = [
    "CIFAR10", "CIFAR100", "DATAMODULES", "DataFormatError", "DataNotFoundError", "Digits",
    "FashionMNIST", "GTSRB", "ImageTensorDataset", "MNIST", "MNIST10k", "Npz", "RobustDataModule",
    "SVHN", "TorchvisionDataModule", "create_datamodule", "dataset_tensors", "default_mnist_t10k_root",
    "load_mnist_t10k", "read_idx",
]
