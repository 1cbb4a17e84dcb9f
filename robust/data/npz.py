"""Bring your own arrays: a data module over an ``.npz`` file."""

from __future__ import annotations

import zipfile
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


@register_datamodule("npz")
class Npz(RobustDataModule):
    """Images and labels from an ``.npz`` file, held in memory.

    Keys: ``x_train``, ``y_train`` and optionally ``x_val``/``y_val`` and ``x_test``/``y_test``;
    or just ``x``, ``y``, which are split 80/10/10 (train/val/test) by a fixed permutation.
    Without ``x_val``, ``val_size`` of the training examples are carved off for validation;
    without ``x_test`` there is no test split.

    Images: uint8 (0..255, divided by 255) or floating point already in [0, 1];
    layout NCHW, NHWC (detected when the last axis has 1 or 3 entries and axis 1 does
    not; force it with ``layout``) or NHW (one channel). Images must be square.
    Labels: integers in ``[0, num_classes)``; ``num_classes`` defaults to the largest label + 1.
    ``mean``/``std`` are measured on the training split.

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
        if layout is not None and layout.lower() not in ("nchw", "nhwc"):
            raise ValueError(f"layout must be 'nchw', 'nhwc' or None, got {layout!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.path = path
        self.val_size = check_val_size(val_size)
        self.layout = None if layout is None else layout.lower()
        self._splits = self._read(num_classes)
        x_train = self._splits["train"][0]
        self.in_channels = int(x_train.shape[1])
        self.image_size = int(x_train.shape[2])
        self.mean, self.std = channel_stats(x_train)

    def _read(self, num_classes: int | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        file = absolute(self.path)
        if not file.is_file():
            raise DataNotFoundError(
                f"npz file not found: {file} (pass path=<an .npz file with x_train/y_train or x/y arrays>)", file
            )
        try:
            loaded = np.load(file, allow_pickle=False)
            if not hasattr(loaded, "files"):
                raise DataFormatError(f"{file}: holds a single array, not an .npz archive of named arrays")
            with loaded as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            if isinstance(err, DataFormatError):
                raise
            raise DataFormatError(f"{file}: cannot read it as an .npz archive of plain arrays ({err})") from err

        if "x_train" in arrays or "y_train" in arrays:
            keys = {s: (f"x_{s}", f"y_{s}") for s in SPLITS if s == "train" or {f"x_{s}", f"y_{s}"} & set(arrays)}
        elif "x" in arrays or "y" in arrays:
            keys = {"train": ("x", "y")}
        else:
            raise DataFormatError(
                f"{file}: expected keys x_train and y_train (optionally x_val/y_val, x_test/y_test) "
                f"or x and y; found {sorted(arrays) or 'no arrays'}"
            )
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, (kx, ky) in keys.items():
            for key, partner in ((kx, ky), (ky, kx)):
                if key not in arrays:
                    raise DataFormatError(f"{file}: has {partner} but no {key}")
            x, y = self._images(file, kx, arrays[kx]), self._labels(file, ky, arrays[ky], num_classes)
            if len(x) != len(y):
                raise DataFormatError(f"{file}: {kx} has {len(x)} images but {ky} has {len(y)} labels")
            if len(x) == 0:
                raise DataFormatError(f"{file}: {kx} is empty")
            tensors[split] = (x, y)
        shapes = {tuple(x.shape[1:]) for x, _ in tensors.values()}
        if len(shapes) > 1:
            raise DataFormatError(f"{file}: the splits' images differ in shape (C, H, W): {sorted(shapes)}")

        if keys["train"] == ("x", "y"):
            x, y = tensors["train"]
            if len(y) < 10:
                raise DataFormatError(f"{file}: x and y hold {len(y)} examples; an 80/10/10 split needs at least 10")
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
            n_held = int(round(0.1 * len(y)))
            parts = {
                "test": perm[:n_held],
                "val": perm[n_held : 2 * n_held],
                "train": perm[2 * n_held :],
            }
            tensors = {s: (x[i.sort().values], y[i.sort().values]) for s, i in parts.items()}
        elif "val" not in tensors:
            x, y = tensors["train"]
            train, val = split_indices(len(y), self.val_size, seed=SPLIT_SEED)
            tensors["train"] = (x[train], y[train])
            if len(val):
                tensors["val"] = (x[val], y[val])

        if num_classes is None:
            num_classes = max(max(int(y.max()) for _, y in tensors.values()) + 1, 2)
        self.num_classes = num_classes
        return tensors

    def _images(self, file: Path, key: str, x: np.ndarray) -> torch.Tensor:
        if x.dtype == np.uint8:
            scaled = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
                raise DataFormatError(
                    f"{file}: {key} holds floats in [{lo}, {hi}], but float images must lie in [0, 1] "
                    "(store uint8 0..255, or divide by 255 and do not normalise: the model's first layer does)"
                )
            scaled = x.astype(np.float32)
        else:
            raise DataFormatError(f"{file}: {key} has dtype {x.dtype}; images must be uint8 (0..255) or float in [0, 1]")
        if scaled.ndim == 3:
            scaled = scaled[:, None]
        elif scaled.ndim == 4:
            nhwc = self.layout == "nhwc" or (
                self.layout is None and scaled.shape[-1] in (1, 3) and scaled.shape[1] not in (1, 3)
            )
            if nhwc:
                scaled = scaled.transpose(0, 3, 1, 2)
        else:
            raise DataFormatError(f"{file}: {key} has shape {x.shape}; expected (N, C, H, W), (N, H, W, C) or (N, H, W)")
        if scaled.shape[2] != scaled.shape[3]:
            raise DataFormatError(
                f"{file}: {key} images are {scaled.shape[2]}x{scaled.shape[3]} (C={scaled.shape[1]}); "
                "images must be square (if this is NHWC data, pass layout='nhwc')"
            )
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
        return torch.from_numpy(y.astype(np.int64))

    def _load_fit(self) -> tuple[TensorDataset, TensorDataset | None]:
        val = self._splits.get("val")
        return TensorDataset(*self._splits["train"]), None if val is None else TensorDataset(*val)

    def _load_test(self) -> TensorDataset:
        if "test" not in self._splits:
            raise ValueError(f"{absolute(self.path)}: has no test split (add x_test and y_test, or give x and y)")
        return TensorDataset(*self._splits["test"])
