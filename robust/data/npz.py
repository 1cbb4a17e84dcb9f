"""Bring your own arrays: a data module over an ``.npz`` file."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from robust.data.base import (
    SPLIT_SEED, DataFormatError, DataNotFoundError, RobustDataModule, absolute, channel_stats, check_val_size,
    split_indices)
from robust.data.registry import register_datamodule

SPLITS = ("train", "val", "test")
MAX_CLASSES = 100_000
"""Labels are class indices below this (ImageNet-21k has 21,841 classes): a larger label is a broken file."""
NEEDS = {
    "train": "x_train/y_train (or x/y)",
    "val": "x_val/y_val, or x_train/y_train (val_size of them carved off)",
    "test": "x_test/y_test (or x/y)",
    "all": "x/y",
}


@register_datamodule("npz")
class Npz(RobustDataModule):
    """Images and labels from an ``.npz`` file, held in memory.

    Keys: any of ``x_train``/``y_train``, ``x_val``/``y_val`` and ``x_test``/``y_test`` (each pair
    whole); or just ``x``, ``y``, which are split 80/10/10 (train/val/test) by a fixed permutation
    (with at least 10 examples). Without ``x_val``, ``val_size`` of the training examples are carved
    off for validation; a split the file lacks is refused where it is needed (``fit`` needs a training
    split, ``test`` a test split), naming the arrays the file has.

    Images: uint8 (0..255, divided by 255) or floating point already in [0, 1], finite;
    layout NCHW, NHWC (detected when the last axis has 1 or 3 entries and axis 1 does
    not; force it with ``layout``) or NHW (one channel). Images must be square.
    Labels: integers in ``[0, num_classes)``; ``num_classes`` defaults to the largest label + 1
    (``classes_inferred`` then says that the count is a lower bound).
    ``mean``/``std`` are measured on the training split (on the first split the file has without one).

    The file is read when the module is built, so that ``num_classes``, ``in_channels``
    and ``image_size`` are known before a model is.

    Args:
        path: the ``.npz`` file (read with ``allow_pickle=False``).
        num_classes: number of classes; inferred from the labels when ``None``.
        layout: ``"nchw"`` or ``"nhwc"`` to override detection for 4-D arrays.
        val_size: validation count or fraction carved from ``x_train`` when there is no ``x_val``.
        options: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``device_resident``
            (see ``RobustDataModule``).
    """

    def __init__(self, path: str, num_classes: int | None = None, layout: str | None = None, *,
                 val_size: int | float = 0.1, **options: Any) -> None:
        super().__init__(**options)
        if layout is not None and (not isinstance(layout, str) or layout.lower() not in ("nchw", "nhwc")):
            raise ValueError(f"layout must be 'nchw', 'nhwc' or None, got {layout!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or not 2 <= num_classes <= MAX_CLASSES):
            raise ValueError(f"num_classes must be an integer in [2, {MAX_CLASSES}], got {num_classes!r}")
        if not isinstance(path, (str, Path)):
            raise ValueError(f"path must be the path of an .npz file, got {path!r}")
        self.path = str(path)
        self.val_size = check_val_size(val_size)
        self.layout = None if layout is None else layout.lower()
        self.file = absolute(self.path)
        self.arrays: tuple[str, ...] = ()
        self._whole: tuple[torch.Tensor, torch.Tensor] | None = None
        self._splits = self._read(num_classes)
        x_first = (self._splits.get("train") or next(iter(self._splits.values()), None) or self._whole)[0]
        self.in_channels = int(x_first.shape[1])
        self.image_size = int(x_first.shape[2])
        self.mean, self.std = channel_stats(x_first)

    # -- public access -------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        """Whether the file defines ``split`` ("train", "val", "test", or "all": the whole of ``x``/``y``)."""
        return self._whole is not None if split == "all" else split in self._splits

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``split`` ("train", "val", "test" or "all"), or a :class:`DataFormatError` that
        names the arrays the file has and the ones the split needs."""
        if split not in NEEDS:
            raise ValueError(f"split must be one of {', '.join(NEEDS)}, got {split!r}")
        if not self.has_split(split):
            have = ", ".join(self.arrays)
            why = ""
            if self._whole is not None and split != "all":
                why = f" (x/y hold {len(self._whole[1])} examples; the 80/10/10 split needs at least 10)"
            raise DataFormatError(f"{self.file}: has no {split} split{why}: it holds {have}; "
                                  f"the {split} split needs {NEEDS[split]}")
        return self._whole if split == "all" else self._splits[split]

    def split_keys(self, split: str) -> str:
        """The arrays ``split`` comes from, for a description, e.g. ``"x_test/y_test"``."""
        if self._whole is not None:
            return "x/y" if split == "all" else f"x/y ({split} part of the 80/10/10 split)"
        if split == "val" and "x_val" not in self.arrays:
            return "val carved from x_train/y_train"
        return f"x_{split}/y_{split}"

    # -- reading -------------------------------------------------------------------
    def _read(self, num_classes: int | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        file = self.file
        if file.is_dir():
            raise DataFormatError(f"{file}: is a folder; give the path of an .npz file with x_test/y_test, "
                                  "x_train/y_train or x/y arrays")
        if not file.is_file():
            raise DataNotFoundError(
                f"npz file not found: {file} (pass path=<an .npz file with x_train/y_train, x_test/y_test or x/y "
                "arrays>)", file
            )
        arrays = _load_arrays(file)
        self.arrays = tuple(sorted(arrays))
        named = {f"{a}_{s}" for a in "xy" for s in SPLITS} & set(arrays)
        plain = {"x", "y"} & set(arrays)
        if named and plain:
            raise DataFormatError(f"{file}: holds both x/y and per-split arrays ({', '.join(sorted(named))}); "
                                  "keep one scheme: x/y, or x_train/y_train, x_val/y_val, x_test/y_test")
        if named:
            keys = {s: (f"x_{s}", f"y_{s}") for s in SPLITS if {f"x_{s}", f"y_{s}"} & named}
        elif plain:
            keys = {"all": ("x", "y")}
        else:
            raise DataFormatError(
                f"{file}: expected arrays x_test/y_test, x_train/y_train (optionally x_val/y_val) "
                f"or x/y; found {', '.join(self.arrays) or 'no arrays'}"
            )
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, (kx, ky) in keys.items():
            for key, partner in ((kx, ky), (ky, kx)):
                if key not in arrays:
                    raise DataFormatError(f"{file}: has {partner} but no {key}")
            x, y = self._images(file, kx, arrays[kx]), self._labels(file, ky, arrays[ky], num_classes)
            if len(x) != len(y):
                raise DataFormatError(f"{file}: {kx} has {len(x)} images but {ky} has {len(y)} labels")
            tensors[split] = (x, y)
        shapes = {tuple(x.shape[1:]) for x, _ in tensors.values()}
        if len(shapes) > 1:
            raise DataFormatError(f"{file}: the splits' images differ in shape (C, H, W): {sorted(shapes)}")

        if "all" in tensors:
            self._whole = x, y = tensors.pop("all")
            if len(y) >= 10:
                perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
                n_held = int(round(0.1 * len(y)))
                parts = {"test": perm[:n_held], "val": perm[n_held:2 * n_held], "train": perm[2 * n_held:]}
                tensors = {s: (x[i.sort().values], y[i.sort().values]) for s, i in parts.items()}
        elif "train" in tensors and "val" not in tensors:
            x, y = tensors["train"]
            train, val = split_indices(len(y), self.val_size, seed=SPLIT_SEED)
            tensors["train"] = (x[train], y[train])
            if len(val):
                tensors["val"] = (x[val], y[val])

        self.classes_inferred = num_classes is None
        if num_classes is None:
            labels = [y for _, y in tensors.values()] + ([self._whole[1]] if self._whole is not None else [])
            num_classes = max(max(int(y.max()) for y in labels) + 1, 2)
        self.num_classes = num_classes
        return tensors

    def _images(self, file: Path, key: str, x: np.ndarray) -> torch.Tensor:
        if x.ndim not in (3, 4):
            raise DataFormatError(f"{file}: {key} has shape {x.shape}; expected (N, C, H, W), (N, H, W, C) "
                                  "or (N, H, W)")
        if x.shape[0] == 0:
            raise DataFormatError(f"{file}: {key} is empty (shape {x.shape}); it needs at least one image")
        if x.dtype == np.uint8:
            scaled = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            if not np.isfinite(x).all():
                raise DataFormatError(f"{file}: {key} holds NaN or infinite values; images must be finite, "
                                      "in [0, 1] (or uint8 0..255)")
            lo, hi = float(x.min()), float(x.max())
            if not (0.0 <= lo and hi <= 1.0):
                raise DataFormatError(
                    f"{file}: {key} holds floats in [{lo}, {hi}], but float images must lie in [0, 1] "
                    "(store uint8 0..255, or divide by 255 and do not normalise: the model's first layer does)"
                )
            scaled = x.astype(np.float32)
        else:
            raise DataFormatError(f"{file}: {key} has dtype {x.dtype}; images must be uint8 (0..255) "
                                  "or float in [0, 1]")
        if scaled.ndim == 3:
            scaled = scaled[:, None]
        else:
            nhwc = self.layout == "nhwc" or (
                self.layout is None and scaled.shape[-1] in (1, 3) and scaled.shape[1] not in (1, 3)
            )
            if nhwc:
                scaled = scaled.transpose(0, 3, 1, 2)
        if scaled.shape[2] != scaled.shape[3]:
            raise DataFormatError(
                f"{file}: {key} images are {scaled.shape[2]}x{scaled.shape[3]} (C={scaled.shape[1]}); "
                "images must be square (if this is NHWC data, pass layout='nhwc')"
            )
        if min(scaled.shape[1:]) < 1:
            raise DataFormatError(f"{file}: {key} has shape {x.shape}; images need at least one channel and pixel")
        return torch.from_numpy(np.ascontiguousarray(scaled))

    @staticmethod
    def _labels(file: Path, key: str, y: np.ndarray, num_classes: int | None) -> torch.Tensor:
        if y.ndim != 1:
            raise DataFormatError(f"{file}: {key} has shape {y.shape}; labels must be 1-D class indices")
        if not np.issubdtype(y.dtype, np.integer):
            if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
                raise DataFormatError(f"{file}: {key} has dtype {y.dtype}; labels must be integer class indices")
        if y.size and y.min() < 0:
            raise DataFormatError(f"{file}: {key} has label {y.min()}; labels must lie in [0, num_classes)")
        if y.size and num_classes is not None and y.max() >= num_classes:
            raise DataFormatError(f"{file}: {key} has label {y.max()}, not in [0, num_classes={num_classes})")
        if y.size and y.max() >= MAX_CLASSES:
            raise DataFormatError(f"{file}: {key} has label {y.max()}; labels are class indices below {MAX_CLASSES}")
        return torch.from_numpy(y.astype(np.int64))

    def _load_fit(self) -> tuple[TensorDataset, TensorDataset | None]:
        x, y = self.split_tensors("train")
        val = self._splits.get("val")
        return TensorDataset(x, y), None if val is None else TensorDataset(*val)

    def _load_test(self) -> TensorDataset:
        return TensorDataset(*self.split_tensors("test"))


def _load_arrays(file: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, each checked against what its header declares before it is read
    (a shape larger than the bytes stored is a truncated or edited file, refused without allocating it)."""
    try:
        loaded = np.load(file, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataFormatError(f"{file}: cannot read it as an .npz archive of plain arrays ({err})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataFormatError(f"{file}: holds a single array, not an .npz archive of named arrays")
    arrays = {}
    with loaded as archive:
        for key in archive.files:
            try:
                _check_member(archive.zip, key)
                arrays[key] = archive[key]
            except DataFormatError as err:
                raise DataFormatError(f"{file}: {err}") from None
            except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, MemoryError) as err:
                raise DataFormatError(f"{file}: cannot read array {key} ({err or type(err).__name__}); "
                                      "the file is truncated or corrupted") from None
    return arrays


def _check_member(archive: zipfile.ZipFile, key: str) -> None:
    """Refuse an array stored as pickled objects, or whose header promises more bytes than are stored."""
    name = f"{key}.npy"
    if name not in archive.namelist():
        return  # NpzFile also serves members without the .npy suffix; np.load checks those
    info = archive.getinfo(name)
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            return  # a newer format: np.load checks it
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        header = member.tell()
    if dtype.hasobject:
        raise DataFormatError(f"{key} holds Python objects (dtype {dtype}), which are loaded only by unpickling; "
                              "store plain numeric arrays")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if info.file_size - header != expected:
        raise DataFormatError(f"{key} declares shape {tuple(shape)} of {dtype} ({expected} bytes) but the file "
                              f"stores {info.file_size - header} bytes (truncated or corrupted)")
