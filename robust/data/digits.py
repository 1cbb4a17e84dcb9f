"""scikit-learn's bundled handwritten digits: the offline default data set."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from robust.data.base import RobustDataModule, channel_stats
from robust.data.registry import register_datamodule

TRAIN_SIZE, VAL_SIZE, TEST_SIZE = 1197, 300, 300


@lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (1797, 8, 8) in [0, 1], labels, and the fixed train/val/test indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).clip(0.0, 1.0)
    y = digits.target.astype(np.int64)
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=TEST_SIZE, random_state=0, stratify=y)
    train, val = train_test_split(rest, test_size=VAL_SIZE, random_state=0, stratify=y[rest])
    arrays = (x, y, np.sort(train), np.sort(val), np.sort(test))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _images(indices: np.ndarray, upscale: int | None) -> torch.Tensor:
    x, _, _, _, _ = _digits_split()
    images = torch.tensor(x[indices]).unsqueeze(1)
    if upscale is not None and upscale != images.shape[-1]:
        images = F.interpolate(images, size=(upscale, upscale), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    return images.contiguous()


def _labels(indices: np.ndarray) -> torch.Tensor:
    return torch.tensor(_digits_split()[1][indices])


@register_datamodule("digits")
class Digits(RobustDataModule):
    """The 1,797 8x8 grayscale digits bundled with scikit-learn (``load_digits``), 10 classes.

    Needs no download. Pixels are the original 0..16 counts divided by 16. The split
    is fixed and independent of ``seed`` (stratified ``train_test_split`` with
    ``random_state=0``): train / val / test = 1,197 / 300 / 300; val is for picking
    checkpoints, test is held out.

    Args:
        upscale: resize the images (bilinear) to ``upscale x upscale``, e.g. 16 or 28;
            ``None`` keeps 8x8.
        options: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``device_resident``
            (see ``RobustDataModule``).
    """

    num_classes = 10
    in_channels = 1

    def __init__(self, *, upscale: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        if upscale is not None and (isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 8):
            raise ValueError(f"upscale must be None or an integer >= 8 (the original size), got {upscale!r}")
        self.upscale = upscale
        self.image_size = 8 if upscale is None else upscale
        self.mean, self.std = channel_stats(_images(_digits_split()[2], upscale))

    def _load_fit(self) -> tuple[TensorDataset, TensorDataset]:
        _, _, train, val, _ = _digits_split()
        return (
            TensorDataset(_images(train, self.upscale), _labels(train)),
            TensorDataset(_images(val, self.upscale), _labels(val)),
        )

    def _load_test(self) -> TensorDataset:
        test = _digits_split()[4]
        return TensorDataset(_images(test, self.upscale), _labels(test))
