"""The standard benchmarks through ``torchvision.datasets``, held in memory as uint8 tensors.

Each set is read once in ``setup`` and augmented per image on tensors. Validation is carved from the training
split with a fixed generator (``SPLIT_SEED``), never from the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from robust.data.base import (
    SPLIT_SEED, DataNotFoundError, ImageTensorDataset, RobustDataModule, absolute, check_val_size, split_indices)
from robust.data.registry import register_datamodule


class TorchvisionDataModule(RobustDataModule):
    """A torchvision data set read into memory; subclasses say how to open and unpack it.

    Args:
        root: directory torchvision downloads to / reads from (relative to the current directory).
        download: download the files when they are missing (needs internet).
        augment: random crop (and horizontal flip where the class allows it) on training images.
        val_size: validation examples carved from the training split (a count or a fraction).
        options: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``device_resident``
            (see ``RobustDataModule``).
    """

    flip: bool = False
    crop_padding: int = 4
    torchvision_name: str = ""  # the data set's class in torchvision.datasets
    files_hint: str = ""  # where torchvision looks for the files, for the message when they are missing

    def __init__(self, root: str = "data", download: bool = False, *, val_size: int | float = 5000,
                 augment: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.root = root
        self.download = bool(download)
        self.val_size = check_val_size(val_size)
        self.augment = bool(augment)

    # -- subclass hooks ------------------------------------------------------------
    def _open(self, split: str, download: bool) -> Any:
        """The torchvision data set of ``split`` ("train" or "test")."""
        import torchvision.datasets

        dataset = getattr(torchvision.datasets, self.torchvision_name)
        return dataset(self.root, train=split == "train", download=download)

    def _unpack(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, H, W) and int64 labels of an opened data set."""
        raise NotImplementedError

    def _groups(self, dataset: Any) -> np.ndarray | None:
        """Ids of groups of near-duplicate training images kept on one side of the val split."""
        return None

    # -- loading -------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.download:
            for split in ("train", "test"):
                self._open_or_explain(split)

    def _open_or_explain(self, split: str) -> Any:
        try:
            return self._open(split, download=False)
        except (RuntimeError, OSError) as err:
            if not self.download:
                raise self._not_found(err, tried_download=False) from err
        try:
            return self._open(split, download=True)
        except (RuntimeError, OSError) as err:
            raise self._not_found(err, tried_download=True) from err

    def _not_found(self, err: BaseException, tried_download: bool) -> DataNotFoundError:
        root = absolute(self.root)
        if tried_download:
            what = "are missing and could not be downloaded (no internet?)"
            how = "Run once with download=True on a machine with internet and copy the files here"
        else:
            what = "are missing (download=False)"
            how = "Pass download=True on a machine with internet"
        return DataNotFoundError(
            f"{self.name}: the torchvision files under {root} {what}; "
            f"torchvision.datasets looks for {self.files_hint.format(root=root, name=self.torchvision_name)}. "
            f"{how}, or place the torchvision files under {root} (or pass root=<directory>). "
            f"torchvision said: {str(err).strip()}",
            root,
        )

    def _augmentation(self) -> tuple[int, bool]:
        return (self.crop_padding, self.flip) if self.augment else (0, False)

    def _train_transform(self) -> v2.Transform | None:
        if not self.augment:
            return None
        steps: list[v2.Transform] = [v2.RandomCrop(self.image_size, padding=self.crop_padding)]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)

    def _load_fit(self) -> tuple[Dataset, Dataset | None]:
        dataset = self._open_or_explain("train")
        images, labels = self._unpack(dataset)
        train, val = split_indices(len(labels), self.val_size, self._groups(dataset), seed=SPLIT_SEED)
        train_set = ImageTensorDataset(images[train], labels[train], self._train_transform())
        val_set = ImageTensorDataset(images[val], labels[val]) if len(val) else None
        return train_set, val_set

    def _load_test(self) -> Dataset:
        images, labels = self._unpack(self._open_or_explain("test"))
        return ImageTensorDataset(images, labels)


def _labels(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


class _MNISTLike(TorchvisionDataModule):
    in_channels = 1
    image_size = 28
    crop_padding = 2
    files_hint = "{root}/{name}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte"

    def _unpack(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return dataset.data.unsqueeze(1).contiguous(), _labels(dataset.targets)


@register_datamodule("mnist")
class MNIST(_MNISTLike):
    """MNIST (60,000 + 10,000 28x28 grayscale digits); val = 5,000 of the training images.

    ``augment=True`` adds a random crop with 2 pixels of padding (never a flip);
    the default is no augmentation, as in Madry et al. 2018 and TRADES.
    """

    num_classes = 10
    mean = (0.1307,)
    std = (0.3081,)
    torchvision_name = "MNIST"


@register_datamodule("fashion_mnist")
class FashionMNIST(_MNISTLike):
    """Fashion-MNIST (60,000 + 10,000 28x28 grayscale clothing images); val = 5,000 training images.

    ``augment=True`` adds a random crop with 2 pixels of padding (no flip).
    """

    num_classes = 10
    mean = (0.2860,)
    std = (0.3530,)
    torchvision_name = "FashionMNIST"


class _CIFAR(TorchvisionDataModule, augment=True):
    in_channels = 3
    image_size = 32
    flip = True

    def _unpack(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
        return images, _labels(dataset.targets)


@register_datamodule("cifar10")
class CIFAR10(_CIFAR):
    """CIFAR-10 (50,000 + 10,000 32x32 colour images); val = 5,000 training images.

    ``augment=True`` (default): random crop 32 with 4 pixels of zero padding and a
    horizontal flip, the augmentation of Madry et al. 2018, TRADES and Rice et al. 2020.
    """

    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    torchvision_name = "CIFAR10"
    files_hint = "{root}/cifar-10-batches-py"


@register_datamodule("cifar100")
class CIFAR100(_CIFAR):
    """CIFAR-100 (50,000 + 10,000 32x32 colour images, 100 classes); val = 5,000 training images.

    ``augment=True`` (default): random crop 32 with 4 pixels of padding and a horizontal flip.
    """

    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    torchvision_name = "CIFAR100"
    files_hint = "{root}/cifar-100-python"


@register_datamodule("svhn")
class SVHN(TorchvisionDataModule):
    """SVHN (73,257 + 26,032 32x32 colour house-number digits; the "extra" split is unused);
    val = 5,000 training images.

    ``augment=True`` adds a random crop with 4 pixels of padding, never a flip (digits are
    not mirror-symmetric); the default is no augmentation.
    """

    num_classes = 10
    in_channels = 3
    image_size = 32
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    files_hint = "{root}/train_32x32.mat and {root}/test_32x32.mat"

    def _open(self, split: str, download: bool) -> Any:
        from torchvision.datasets import SVHN as TV

        return TV(self.root, split=split, download=download)

    def _unpack(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(dataset.data)), _labels(dataset.labels)

