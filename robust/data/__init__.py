"""Data modules: every one yields float32 images in [0, 1] of shape (N, C, H, W) and int64 labels.

Normalisation is the model's first layer; each module's ``mean``/``std`` are there to build it.
``Digits`` needs no download and is the offline default; ``MNIST10k`` reads the MNIST test
split from ``../shared/data/mnist-t10k`` where the full MNIST cannot be downloaded.
"""

from robust.data.base import DataFormatError, DataNotFoundError, ImageTensorDataset, RobustDataModule, dataset_tensors
from robust.data.digits import Digits
from robust.data.mnist10k import MNIST10k, default_mnist_t10k_root, load_mnist_t10k, read_idx
from robust.data.npz import Npz
from robust.data.registry import create_datamodule, list_datamodules, register_datamodule
from robust.data.gtsrb import GTSRB, default_gtsrb_root, read_gtsrb, split_tracks
from robust.data.vision import CIFAR10, CIFAR100, MNIST, SVHN, FashionMNIST, TorchvisionDataModule

__all__ = [
    "CIFAR10", "CIFAR100", "DataFormatError", "DataNotFoundError", "Digits",
    "FashionMNIST", "GTSRB", "ImageTensorDataset", "MNIST", "MNIST10k", "Npz", "RobustDataModule",
    "SVHN", "TorchvisionDataModule", "create_datamodule", "dataset_tensors", "default_gtsrb_root",
    "default_mnist_t10k_root", "read_gtsrb", "split_tracks",
    "list_datamodules", "load_mnist_t10k", "read_idx", "register_datamodule",
]
