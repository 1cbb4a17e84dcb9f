"""Masked training for PatchCleanser (Xiang, Mahloujifar & Mittal, USENIX Security 2022, Sec. 5.1):
Cutout (DeVries & Taylor 2017) with two masks of the mask-set size, so the classifier stays right on
the one- and two-mask images that double masking predicts."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robust.certify.patchcleanser import MaskSet, apply_keep, mask_set
from robust.methods.base import Method

PLACEMENTS = ("random", "maskset")


class MaskedTraining(Method):
    """Cross-entropy on images with ``masks`` rectangles hidden (set to ``fill``), new ones every batch.

    The mask side is PatchCleanser's ``m = p + s - 1`` for the ``patch`` it will certify and
    ``masks_per_axis`` ``k`` (``s = ceil((n - p + 1) / k)``, :mod:`robust.certify.patchcleanser`), worked
    out from each batch's image size, or ``mask_size`` pixels when given. ``placement="random"`` is Cutout as
    in the paper's training: each mask's top-left corner uniform over the positions that keep it inside the
    image; ``"maskset"`` draws each mask uniformly from the R-covering set, the very views certification
    evaluates. Two masks (the paper's choice) cover the second round; one-mask views are the overlapping draws.

    Args:
        patch: the patch to certify: a fraction of the image area in (0, 1) or a side in pixels.
        masks_per_axis: ``k`` of the mask set (6 in the paper).
        mask_size: the mask side in pixels instead of ``patch`` (``"random"`` placement only).
        masks: masks per image.
        placement: ``"random"`` or ``"maskset"``.
        fill: the value of masked pixels in [0, 1] (certify with the same one; 0.5 is mid-grey).
    """

    def __init__(self, patch: float | int | None = None, masks_per_axis: int = 6, mask_size: int | None = None,
                 masks: int = 2, placement: Literal["random", "maskset"] = "random", fill: float = 0.5) -> None:
        super().__init__()
        if (patch is None) == (mask_size is None):
            raise ValueError(f"give exactly one of patch or mask_size, got patch={patch!r}, mask_size={mask_size!r}")
        if mask_size is not None and (isinstance(mask_size, bool) or not isinstance(mask_size, int) or mask_size < 1):
            raise ValueError(f"mask_size is a side in pixels and must be an integer >= 1, got {mask_size!r}")
        if mask_size is not None and placement != "random":
            raise ValueError(f"mask_size goes with placement 'random' (a mask set is built from a patch), got "
                             f"{placement!r}")
        if patch is not None and (isinstance(patch, bool) or not isinstance(patch, (int, float))
                                  or not math.isfinite(patch) or patch <= 0):
            raise ValueError(f"patch must be a fraction of the image area in (0, 1) or a side in pixels, got {patch!r}")
        if patch is not None and patch >= 1 and not float(patch).is_integer():
            raise ValueError(f"patch {patch!r} is neither a fraction of the image area in (0, 1) nor whole pixels")
        for name, value in (("masks_per_axis", masks_per_axis), ("masks", masks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0.0 <= float(fill) <= 1.0:
            raise ValueError(f"fill is the value of masked pixels in [0, 1], got {fill!r}")
        self.patch, self.masks_per_axis, self.mask_size = patch, masks_per_axis, mask_size
        self.masks, self.placement, self.fill = masks, placement, float(fill)
        self._sets: dict[tuple[int, int], MaskSet] = {}

    def mask_set(self, height: int, width: int) -> MaskSet:
        """The R-covering set for ``patch`` on ``height x width`` images (cached per size)."""
        key = (height, width)
        if key not in self._sets:
            self._sets[key] = mask_set(key, self.patch, self.masks_per_axis)
        return self._sets[key]

    def side(self, height: int, width: int) -> tuple[int, int]:
        """The mask ``(rows, cols)`` in pixels on ``height x width`` images."""
        if self.mask_size is not None:
            if self.mask_size > min(height, width):
                raise ValueError(f"mask_size {self.mask_size} is larger than the {height}x{width} images")
            return self.mask_size, self.mask_size
        return self.mask_set(height, width).mask_size

    def visible(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool (N, H, W): the pixels of each image that no mask hides, drawn afresh."""
        n, _, h, w = x.shape
        dev = x.device
        if self.placement == "maskset":
            keep = self.mask_set(h, w).keep(dev)
            idx = torch.randint(0, len(keep), (n * self.masks,), generator=generator, device=dev)
            return keep[idx].view(n, self.masks, h, w).all(1)
        mh, mw = self.side(h, w)
        top = torch.randint(0, h - mh + 1, (n, self.masks, 1, 1), generator=generator, device=dev)
        left = torch.randint(0, w - mw + 1, (n, self.masks, 1, 1), generator=generator, device=dev)
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        hidden = (rows >= top) & (rows < top + mh) & (cols >= left) & (cols < left + mw)
        return ~hidden.any(1)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(apply_keep(x, self.visible(x), self.fill))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "masked_acc": (logits.argmax(1) == y).float().mean().detach()}

    def eval_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``masked_acc``: accuracy with ``masks`` masks drawn from a fixed seed, the cheap proxy of
        PatchCleanser's two-mask accuracy that recipes select on."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        with torch.no_grad():
            masked = model(apply_keep(x, self.visible(x, generator), self.fill))
        return {"masked_acc": (masked.argmax(1) == y).float().mean()}
