"""The real MNIST test split (t10k), read from its IDX files: MNIST where the training split is absent.

Agreed "mnist-t10k split": images 0..7,999 are training data (the last ``val_size`` of
them validation, for checkpoint selection) and images 8,000..9,999 the held-out test
set. Numbers from it are not comparable with published MNIST figures, which train on
all 60,000 training images: quote them as "mnist-t10k split".
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from robust.data.base import (
    DataFormatError, DataNotFoundError, RobustDataModule, absolute, check_val_size, resolve_val_size)
from robust.data.registry import register_datamodule

DEFAULT_ROOT = "../shared/data/mnist-t10k"
IMAGES_FILE = "t10k-images-idx3-ubyte"
LABELS_FILE = "t10k-labels-idx1-ubyte"
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_IMAGES = 10_000
TRAIN_END = 8_000


def default_mnist_t10k_root() -> Path | None:
    """``../shared/data/mnist-t10k`` (relative to the current directory) as an absolute
    path when both IDX files are there, else ``None``."""
    root = absolute(DEFAULT_ROOT)
    try:
        _find(root, IMAGES_FILE)
        _find(root, LABELS_FILE)
    except DataNotFoundError:
        return None
    return root


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed if its name ends in ``.gz``) as a uint8 array.

    ``magic`` is the expected magic number: 2051 for images (N, rows, cols), 2049 for labels (N,).
    Raises ``DataFormatError`` naming the file on a wrong magic number or a truncated file.
    """
    path = absolute(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        raise DataNotFoundError(f"IDX file not found: {path}", path) from err
    except (OSError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot read it as a {'gzip-compressed ' if path.suffix == '.gz' else ''}IDX file ({err})") from err
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes is too short for an IDX file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataFormatError(
            f"{path}: IDX magic number is {found} (0x{found:08x}), expected {magic} (0x{magic:08x}); "
            "the file is corrupted or is not the MNIST file of that name"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataFormatError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data (truncated or corrupted)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    where = f"directory {root} does not exist" if not root.is_dir() else f"{root} holds no {stem}.gz"
    raise DataNotFoundError(
        f"MNIST t10k data not found: {where}. Place {IMAGES_FILE}.gz and {LABELS_FILE}.gz "
        f"(the MNIST test split in IDX format, as torchvision's MNIST/raw holds it) under {root}, "
        "or pass root=<the directory that holds them>",
        root,
    )


def load_mnist_t10k(root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8, (10000, 28, 28)) and labels (uint8, (10000,))."""
    root = absolute(root)
    images = read_idx(_find(root, IMAGES_FILE), IDX_IMAGES_MAGIC)
    labels = read_idx(_find(root, LABELS_FILE), IDX_LABELS_MAGIC)
    if images.shape != (NUM_IMAGES, 28, 28):
        raise DataFormatError(f"{root}: expected {NUM_IMAGES} images of 28x28, got shape {images.shape}")
    if labels.shape != (NUM_IMAGES,):
        raise DataFormatError(f"{root}: expected {NUM_IMAGES} labels, got shape {labels.shape}")
    if labels.max() > 9:
        raise DataFormatError(f"{root}: labels must be digits 0..9, found {int(labels.max())}")
    return images, labels


@register_datamodule("mnist10k")
class MNIST10k(RobustDataModule):
    """MNIST's real test split (t10k) as train / val / test = images [0, 8000 - val_size) /
    [8000 - val_size, 8000) / [8000, 10000): 7,000 / 1,000 / 2,000 by default.

    Args:
        root: directory holding ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``
            (relative paths are taken from the current directory).
        val_size: how many of the last of the first 8,000 images validate (a count or a fraction).
        options: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``device_resident``
            (see ``RobustDataModule``).
    """

    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(self, root: str = DEFAULT_ROOT, *, val_size: int | float = 1000, **options: Any) -> None:
        super().__init__(**options)
        self.root = root
        self.val_size = check_val_size(val_size)
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data is None:
            images, labels = load_mnist_t10k(self.root)
            x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
            self._data = x, torch.from_numpy(labels.astype(np.int64))
        return self._data

    def _load_fit(self) -> tuple[TensorDataset, TensorDataset | None]:
        x, y = self._tensors()
        n_val = resolve_val_size(self.val_size, TRAIN_END)
        cut = TRAIN_END - n_val
        train = TensorDataset(x[:cut], y[:cut])
        val = TensorDataset(x[cut:TRAIN_END], y[cut:TRAIN_END]) if n_val else None
        return train, val

    def _load_test(self) -> TensorDataset:
        x, y = self._tensors()
        return TensorDataset(x[TRAIN_END:], y[TRAIN_END:])
