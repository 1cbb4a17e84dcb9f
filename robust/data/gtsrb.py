"""GTSRB, the German Traffic Sign Recognition Benchmark (Stallkamp et al. 2012): 43 classes of real signs.

Two sources, told apart by what ``root`` holds:

- an **offline copy**: a folder with ``train.npz`` (the official training set, 39,209 images, with ``track``
  ids) and ``test.npz`` (the official final test set, 12,630 images), ``x`` uint8 (N, H, W, 3), ``y`` the
  ClassId; the copy beside this project was resized to 32x32 by OpenCV with the margin around the sign kept;
- **torchvision's** ``GTSRB`` files (downloaded with ``download=True``; its training set has 26,640 images,
  resized here with antialiasing).

The two differ, so ``mean``/``std`` are measured on the training images of the copy in use and ``source``
names it (reports record it in their protocol). Each track holds ~30 frames of one physical sign: the
validation part is split off by track, never by image, and ``holdout_tracks`` keeps whole tracks of every
class out of training and validation for physical, track-level evaluation (``held_out()``), as a car sees
a sign: the same sign over many frames.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from robust.base.classes import class_metadata
from robust.data.base import (
    SPLIT_SEED, DataFormatError, ImageTensorDataset, absolute, channel_stats, split_indices)
from robust.data.registry import register_datamodule
from robust.data.vision import TorchvisionDataModule

NUM_CLASSES = 43
OFFLINE_FILES = ("train.npz", "test.npz")
DEFAULT_OFFLINE_ROOT = "../shared/data/gtsrb"


def is_offline_copy(root: str | Path) -> bool:
    """Whether ``root`` is a folder holding both ``train.npz`` and ``test.npz``."""
    folder = absolute(root)
    return all((folder / name).is_file() for name in OFFLINE_FILES)


def default_gtsrb_root() -> Path | None:
    """``../shared/data/gtsrb`` (against the current directory) when it holds the offline copy, else ``None``."""
    root = absolute(DEFAULT_OFFLINE_ROOT)
    return root if is_offline_copy(root) else None


def read_gtsrb(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, y, track)`` of the offline copy's ``split`` ("train" or "test"): uint8 images (N, 3, H, W),
    int64 labels and int64 track ids (``None`` for the test set). A missing or malformed file is named."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    file = absolute(root) / f"{split}.npz"
    if not file.is_file():
        from robust.data.base import DataNotFoundError

        raise DataNotFoundError(f"GTSRB: {file} not found; give root=<folder with train.npz and test.npz> "
                                "or torchvision's GTSRB folder with download=True", file)
    try:
        with np.load(file, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            if not {"x", "y"} <= keys:
                raise DataFormatError(f"{file}: has arrays {sorted(keys)}; a GTSRB copy needs x and y")
            x, y = arrays["x"], arrays["y"]
            track = arrays["track"] if "track" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(f"{file}: not a readable .npz file ({err})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
        raise DataFormatError(f"{file}: x has dtype {x.dtype} and shape {x.shape}; expected uint8 (N, H, H, 3)")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (len(y) and not 0 <= y.min() <= y.max() < NUM_CLASSES):
        raise DataFormatError(f"{file}: y must hold one ClassId in 0..{NUM_CLASSES - 1} per image")
    if split == "train" and (track is None or track.shape != (len(x),)):
        raise DataFormatError(f"{file}: the training set needs one track id per image (array 'track')")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y.astype(np.int64))
    tracks = None if track is None else torch.from_numpy(track.astype(np.int64))
    return images, labels, tracks


def split_tracks(track: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, fraction: float,
                 seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(keep_idx, held_idx)``: ``fraction`` of the tracks of every class (rounded, at least one
    when ``fraction > 0`` and the class has two or more tracks) go to ``held``, chosen by a fixed generator."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout_tracks must be a fraction in [0, 1), got {fraction}")
    track, y = torch.as_tensor(np.asarray(track)).long(), torch.as_tensor(np.asarray(y)).long()
    held = torch.zeros(len(track), dtype=torch.bool)
    if fraction > 0:
        gen = torch.Generator().manual_seed(seed)
        for c in torch.unique(y).tolist():
            ids = torch.unique(track[y == c])
            if len(ids) < 2:
                continue
            count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
            chosen = ids[torch.randperm(len(ids), generator=gen)[:count]]
            held |= torch.isin(track, chosen) & (y == c)
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()


@register_datamodule("gtsrb")
class GTSRB(TorchvisionDataModule, val_size=0.1):
    """German Traffic Sign Recognition Benchmark (43 classes), from an offline copy or torchvision's files.

    ``root`` holding ``train.npz`` and ``test.npz`` is read as an offline copy (at its own resolution; the
    copy's side must equal ``image_size``); otherwise torchvision's files under ``root`` are read, every image
    resized to ``image_size`` (bilinear, antialiased). val = ``val_size`` of the remaining training images,
    as whole tracks. ``augment=True`` adds a random crop with ``image_size // 8`` pixels of padding, never a
    flip (a mirrored "turn left" sign is "turn right").

    Args:
        image_size: the side, in pixels, of every image (at least 8).
        holdout_tracks: fraction of every class's training tracks kept out of training and validation for
            track-level physical evaluation (:meth:`held_out`); 0 keeps none.
    """

    num_classes = NUM_CLASSES
    in_channels = 3
    files_hint = ("{root}/train.npz and {root}/test.npz (an offline copy), or torchvision's {root}/gtsrb/GTSRB/"
                  "Training and {root}/gtsrb/GTSRB/Final_Test/Images with {root}/gtsrb/GT-final_test.csv")

    def __init__(self, *, image_size: int = 32, holdout_tracks: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if isinstance(holdout_tracks, bool) or not isinstance(holdout_tracks, (int, float)) \
                or not 0.0 <= holdout_tracks < 1.0:
            raise ValueError(f"holdout_tracks must be a fraction in [0, 1), got {holdout_tracks!r}")
        self.image_size = image_size
        self.holdout_tracks = float(holdout_tracks)
        self.crop_padding = max(1, image_size // 8)
        self.offline = is_offline_copy(self.root)
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._held: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._train_all: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def source(self) -> str:
        """Which copy is in use, as reports record it."""
        if self.offline:
            return (f"GTSRB offline copy (train.npz/test.npz in {absolute(self.root).name}/: official training set "
                    f"39,209 and final test set 12,630 images, {self.image_size}x{self.image_size})")
        return f"GTSRB via torchvision.datasets (training set 26,640 images, resized to {self.image_size} with antialiasing)"

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_metadata("gtsrb").names

    # -- normalisation statistics of the copy in use -----------------------------------
    @property
    def mean(self) -> tuple[float, ...]:  # type: ignore[override]
        return self._channel_stats()[0]

    @property
    def std(self) -> tuple[float, ...]:  # type: ignore[override]
        return self._channel_stats()[1]

    def _channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std of the training images of the copy in use (all of them, before any split)."""
        if self._stats is None:
            self._stats = channel_stats(self._training()[0])
        return self._stats

    # -- loading -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        if not self.offline:
            super().prepare_data()

    def _training(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole training set: uint8 images, labels, int64 track ids."""
        if self._train_all is None:
            if self.offline:
                x, y, track = read_gtsrb(self.root, "train")
                self._check_size(x, "train")
            else:
                dataset = self._open_or_explain("train")
                x, y = self._unpack(dataset)
                _, inverse = np.unique(self._groups(dataset), return_inverse=True)
                track = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
            self._train_all = (x, y, track)
        return self._train_all

    def _check_size(self, x: torch.Tensor, split: str) -> None:
        if x.shape[-1] != self.image_size:
            raise DataFormatError(f"{absolute(self.root) / (split + '.npz')}: images are {x.shape[-1]}x{x.shape[-1]}, "
                                  f"image_size is {self.image_size}; set image_size={x.shape[-1]}")

    def _load_fit(self) -> tuple[Dataset, Dataset | None]:
        x, y, track = self._training()
        keep, held = split_tracks(track, y, self.holdout_tracks)
        self._held = (x[held], y[held], track[held])
        train, val = split_indices(len(keep), self.val_size, track[keep].numpy(), seed=SPLIT_SEED)
        # validation in a fixed random order: the file is sorted by class, and a trainer that validates on its
        # first batches (limit_val_batches) must see every class, not the speed limits alone
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(SPLIT_SEED))
        train, val = keep[train], keep[val[order]]
        train_set = ImageTensorDataset(x[train], y[train], self._train_transform())
        val_set = ImageTensorDataset(x[val], y[val]) if len(val) else None
        return train_set, val_set

    def _load_test(self) -> Dataset:
        if self.offline:
            x, y, _ = read_gtsrb(self.root, "test")
            self._check_size(x, "test")
            return ImageTensorDataset(x, y)
        images, labels = self._unpack(self._open_or_explain("test"))
        return ImageTensorDataset(images, labels)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The held-out tracks (``holdout_tracks``) as ``(x, y, track)``: float images in [0, 1], labels, ids."""
        if self.holdout_tracks == 0:
            raise ValueError("no tracks are held out: build GTSRB with holdout_tracks > 0 (e.g. 0.1)")
        self._ensure("fit")
        x, y, track = self._held
        return x.float().div(255), y, track

    # -- torchvision's files -------------------------------------------------------------
    def _open(self, split: str, download: bool) -> Any:
        from torchvision.datasets import GTSRB as TV

        size = (self.image_size, self.image_size)
        resize = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True)])
        return TV(self.root, split=split, transform=resize, download=download)

    def _unpack(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(dataset, batch_size=256, num_workers=self.num_workers)
        images, labels = zip(*loader)
        return torch.cat(images), torch.cat(labels).long()

    def _groups(self, dataset: Any) -> np.ndarray:
        """Track ids: training files are ``Training/<class>/<track>_<frame>.ppm``."""
        return np.array([f"{Path(p).parent.name}/{Path(p).name.split('_')[0]}" for p, _ in dataset._samples])
