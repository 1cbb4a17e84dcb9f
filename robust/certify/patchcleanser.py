"""PatchCleanser (Xiang, Mahloujifar & Mittal, USENIX Security 2022): double masking, certified against one
adversarial patch of up to ``p x p`` pixels placed anywhere in the image, for any classifier.

**Mask set** (the paper's R-covering set, Sec. 4.2 and its reference code): along an image side of ``n``
pixels, for a patch side ``p`` and ``k`` mask positions per axis, the stride is
``s = ceil((n - p + 1) / k)`` and the mask side ``m = p + s - 1`` (at most ``n``); masks start at
``0, s, 2s, ...`` up to ``n - m`` and at ``n - m`` itself, so every patch window ``[u, u + p)``,
``0 <= u <= n - p``, lies inside one mask window: the mask at the largest start ``v <= u`` ends at
``v + m >= u + p`` because ``u - v <= s - 1``. The two axes are crossed: at most ``k * k`` masks.

**Masking** sets the hidden pixels to ``fill``, a constant in [0, 1] pixel space (default 0.5, mid-grey;
the reference code writes 0 after normalisation, i.e. the data set's mean colour). Train with the fill
you certify with (:class:`robust.methods.MaskedTraining`).

**Double masking** (Algorithm 1): the first round predicts every one-mask image ``x ⊙ m``; if all agree,
that label is the output (case 1). Otherwise, for each disagreeing mask ``m_d`` in mask order (the
disagreers of the majority label, ties broken by the smallest class id), the second round predicts every
two-mask image ``x ⊙ m_d ⊙ m``; the first disagreer whose second round agrees with its own label wins
(case 2), else the majority label is the output (case 3).

**Certificate** (Theorem 1): if every two-mask prediction ``F(x ⊙ m0 ⊙ m1)``, ``m0 = m1`` included, is
the true label, double masking outputs it for every image that differs from ``x`` only inside a patch
the set covers. All ``K (K + 1) / 2`` pairs are evaluated (the pair matrix is symmetric), but only for
images whose first round is all correct; the others need only their disagreers' rows.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robust.base.batching import check_images, collect
from robust.base.errors import InputError
from robust.base.provenance import describe_run
from robust.base.runtime import batched_logits, eval_mode, model_device, num_classes
from robust.base.safe_load import check_finite_weights
from robust.base.stats import accuracy_record

__all__ = ["MaskSet", "PatchSizeError", "CASES", "ATTACK_DEFAULTS", "patch_pixels", "mask_set", "apply_keep",
           "pair_predictions", "decide", "double_masking", "is_certified", "attack_double_masking",
           "patchcleanser_report"]

CASES = {1: "agreed", 2: "disagreer", 3: "majority"}
"""Which branch of Algorithm 1 gave the output."""
ATTACK_DEFAULTS: dict[str, Any] = {"steps": 20, "step_size": 0.1, "stride": None, "views": "one", "seed": 0}
PAPER = "Xiang, Mahloujifar & Mittal 2022 (PatchCleanser, USENIX Security)"


class PatchSizeError(InputError, ValueError):
    """A patch or mask set that cannot be built for these images (named in one line)."""


def patch_pixels(patch: float | int | Sequence[int], height: int, width: int) -> tuple[int, int]:
    """The patch as ``(rows, cols)`` pixels: an integer side, an ``(h, w)`` pair, or a fraction of the image
    area in (0, 1), whose square side is ``round(sqrt(fraction * H * W))`` (the convention of
    :func:`robust.evaluation.physical.patch_side`, so a sticker and its certificate have one size)."""
    if isinstance(patch, (tuple, list)):
        if len(patch) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in patch):
            raise PatchSizeError(f"a rectangular patch is two integer sides (rows, cols) in pixels, got {patch!r}")
        side = (int(patch[0]), int(patch[1]))
    elif isinstance(patch, bool) or not isinstance(patch, (int, float)) or not math.isfinite(patch) or patch <= 0:
        raise PatchSizeError(f"patch must be a fraction of the image area in (0, 1) or a side in pixels >= 1, "
                             f"got {patch!r}")
    elif isinstance(patch, float) and patch < 1:
        s = max(1, round(math.sqrt(patch * height * width)))
        side = (s, s)
    elif float(patch).is_integer():
        side = (int(patch), int(patch))
    else:
        raise PatchSizeError(f"patch {patch!r} is neither a fraction of the image area in (0, 1) nor a whole "
                             "number of pixels")
    if min(side) < 1:
        raise PatchSizeError(f"patch sides must be >= 1 pixel, got {side[0]}x{side[1]}")
    if side[0] > height or side[1] > width:
        raise PatchSizeError(f"a {side[0]}x{side[1]} px patch is larger than the {height}x{width} images")
    return side


def axis_positions(n: int, p: int, k: int) -> tuple[int, int, list[int]]:
    """``(stride, mask side, mask starts)`` along one axis of ``n`` pixels for a patch side ``p`` and ``k``
    positions (the paper's formulas; see the module docstring)."""
    stride = math.ceil((n - p + 1) / k)
    size = min(p + stride - 1, n)
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return stride, size, starts


@dataclass(frozen=True)
class MaskSet:
    """An R-covering mask set on ``image_size`` ``(H, W)`` for a ``patch`` ``(h, w)`` in pixels.

    ``masks_per_axis`` is the requested ``k``; ``rows``/``cols`` are the mask starts actually used (at most
    ``k`` each), ``mask_size`` and ``stride`` are ``(rows, cols)`` in pixels."""

    image_size: tuple[int, int]
    patch: tuple[int, int]
    masks_per_axis: int
    mask_size: tuple[int, int]
    stride: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every mask, rows outer, in the order of :meth:`keep`."""
        return [(r, c) for r in self.rows for c in self.cols]

    def keep(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool ``(K, H, W)``: True where mask ``i`` leaves the pixel visible."""
        h, w = self.image_size
        mh, mw = self.mask_size
        keep = torch.ones(len(self), h, w, dtype=torch.bool, device=device)
        for i, (top, left) in enumerate(self.windows):
            keep[i, top:top + mh, left:left + mw] = False
        return keep

    def covering(self, top: int, left: int) -> int | None:
        """The index of the first mask hiding the whole patch at ``(top, left)``, else None."""
        ph, pw = self.patch
        mh, mw = self.mask_size
        for i, (r, c) in enumerate(self.windows):
            if r <= top and top + ph <= r + mh and c <= left and left + pw <= c + mw:
                return i
        return None

    def describe(self) -> dict[str, Any]:
        h, w = self.image_size
        return {"image_size": list(self.image_size), "patch_px": list(self.patch),
                "patch_area_fraction": self.patch[0] * self.patch[1] / (h * w),
                "masks_per_axis": self.masks_per_axis, "positions": [len(self.rows), len(self.cols)],
                "masks": len(self), "pairs": len(self) * (len(self) + 1) // 2, "mask_size_px": list(self.mask_size),
                "mask_area_fraction": self.mask_size[0] * self.mask_size[1] / (h * w),
                "stride_px": list(self.stride), "rows": list(self.rows), "cols": list(self.cols)}


def mask_set(image_size: Sequence[int], patch: float | int | Sequence[int], masks_per_axis: int = 6) -> MaskSet:
    """The R-covering mask set for ``patch`` (see :func:`patch_pixels`) on ``(H, W)`` images with
    ``masks_per_axis`` positions per axis (6 in the paper: 36 masks)."""
    if len(image_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_size):
        raise PatchSizeError(f"image_size must be (height, width) in pixels, got {tuple(image_size)!r}")
    if isinstance(masks_per_axis, bool) or not isinstance(masks_per_axis, int) or masks_per_axis < 1:
        raise PatchSizeError(f"masks_per_axis must be an integer >= 1, got {masks_per_axis!r}")
    h, w = int(image_size[0]), int(image_size[1])
    ph, pw = patch_pixels(patch, h, w)
    sh, mh, rows = axis_positions(h, ph, masks_per_axis)
    sw, mw, cols = axis_positions(w, pw, masks_per_axis)
    if mh == h and mw == w:
        raise PatchSizeError(f"a {ph}x{pw} px patch with {masks_per_axis} mask position(s) per axis needs "
                             f"{mh}x{mw} px masks, which hide the whole {h}x{w} image: use a smaller patch or "
                             "more masks")
    return MaskSet((h, w), (ph, pw), masks_per_axis, (mh, mw), (sh, sw), tuple(rows), tuple(cols))


def apply_keep(x: torch.Tensor, keep: torch.Tensor, fill: float) -> torch.Tensor:
    """``x`` (N, C, H, W) with the pixels where ``keep`` (N, H, W) is False set to ``fill``."""
    return torch.where(keep[:, None], x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def _check_fill(fill: Any) -> float:
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0.0 <= float(fill) <= 1.0:
        raise PatchSizeError(f"fill is the value of masked pixels in [0, 1], got {fill!r}")
    return float(fill)


def _check_batch(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PatchSizeError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _predict_views(model: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor, jobs: torch.Tensor, fill: float,
                   batch_size: int) -> torch.Tensor:
    """Predicted labels of ``x[img] ⊙ keep[i] ⊙ keep[j]`` for each row ``(img, i, j)`` of ``jobs``."""
    device = model_device(model)
    out = torch.empty(len(jobs), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(jobs), batch_size):
            job = jobs[start:start + batch_size]
            xs = x[job[:, 0]].to(device)
            visible = keep[job[:, 1].to(keep.device)] & keep[job[:, 2].to(keep.device)]
            out[start:start + len(job)] = model(apply_keep(xs, visible.to(device), fill)).argmax(1).cpu()
    return out


def pair_predictions(model: torch.nn.Module, x: torch.Tensor, masks: MaskSet, fill: float = 0.5,
                     batch_size: int = 512, labels: torch.Tensor | None = None, progress: bool = False
                     ) -> torch.Tensor:
    """The two-mask predictions ``P[n, i, j] = argmax F(x_n ⊙ m_i ⊙ m_j)`` as int32 (N, K, K), -1 where
    not evaluated. The diagonal (the first round) is always there, and the rows of every first-round
    disagreer (what :func:`decide` reads). With ``labels``, images whose first round is all correct get
    every pair (what :func:`is_certified` reads; a missing pair never certifies); without them, every image
    gets every pair. Images go in blocks, so the work list stays small on a whole test set."""
    fill, batch_size = _check_fill(fill), _check_batch(batch_size)
    n, k = len(x), len(masks)
    keep = masks.keep()
    table = torch.full((n, k, k), -1, dtype=torch.int32)
    diag = torch.arange(k)
    upper = torch.triu_indices(k, k, offset=1).T  # (i < j)
    block = max(1, 4 * batch_size // k)
    with tqdm(total=n, desc="PatchCleanser", unit="img", disable=not progress, leave=False) as bar:
        for lo in range(0, n, block):
            idx = torch.arange(lo, min(n, lo + block))
            first_jobs = torch.stack([idx.repeat_interleave(k), diag.repeat(len(idx)), diag.repeat(len(idx))], 1)
            first = _predict_views(model, x, keep, first_jobs, fill, batch_size).view(len(idx), k)
            table[idx[:, None], diag, diag] = first.to(torch.int32)
            full = (first == labels[idx, None]).all(1) if labels is not None else torch.ones(len(idx), dtype=torch.bool)
            done = idx[full]
            jobs = [torch.cat([done.repeat_interleave(len(upper))[:, None], upper.repeat(len(done), 1)], 1)]
            majority = _majority(first)
            for r in (~full & (first != majority[:, None]).any(1)).nonzero().flatten().tolist():
                rows = (first[r] != majority[r]).nonzero().flatten()  # this image's disagreers
                pairs = torch.stack([rows.repeat_interleave(k), diag.repeat(len(rows))], 1)
                pairs = pairs[pairs[:, 0] != pairs[:, 1]].sort(1).values.unique(dim=0)
                jobs.append(torch.cat([torch.full((len(pairs), 1), int(idx[r])), pairs], 1))
            second = torch.cat(jobs)
            if len(second):
                pred = _predict_views(model, x, keep, second, fill, batch_size).to(torch.int32)
                table[second[:, 0], second[:, 1], second[:, 2]] = pred
                table[second[:, 0], second[:, 2], second[:, 1]] = pred
            bar.update(len(idx))
    return table


def _majority(first: torch.Tensor) -> torch.Tensor:
    """The most frequent label of each row (ties: the smallest class id)."""
    classes = int(first.max()) + 1 if first.numel() else 1
    counts = torch.zeros(len(first), classes, dtype=torch.long).scatter_add_(
        1, first.long(), torch.ones_like(first, dtype=torch.long))
    return counts.argmax(1)


def decide(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 on a pair table of :func:`pair_predictions`: ``(prediction, case)`` per image, case 1
    (first round agreed), 2 (a disagreer's second round agreed) or 3 (majority)."""
    first = table.diagonal(dim1=1, dim2=2).long()
    majority = _majority(first)
    pred, case = majority.clone(), torch.ones(len(first), dtype=torch.long)
    for img in (first != majority[:, None]).any(1).nonzero().flatten().tolist():
        case[img] = 3
        for i in (first[img] != majority[img]).nonzero().flatten().tolist():
            row = table[img, i]
            if bool((row < 0).any()):
                raise ValueError(f"the pair table lacks the second round of image {img}, mask {i}")
            if bool((row == first[img, i]).all()):
                pred[img], case[img] = first[img, i], 2
                break
    return pred, case


def double_masking(model: torch.nn.Module, x: torch.Tensor, masks: MaskSet, fill: float = 0.5,
                   batch_size: int = 512, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCleanser's prediction (Algorithm 1) on images ``x`` (N, C, H, W) in [0, 1]: ``(labels, cases)``.
    Evaluates the first round and the disagreers' second rounds only; the model runs in eval mode."""
    check_images(x)
    _check_shape(x, masks)
    with eval_mode(model):
        return decide(pair_predictions(model, x.detach().cpu(), masks, fill, batch_size, labels=_nolabels(x),
                                       progress=progress))


def _nolabels(x: torch.Tensor) -> torch.Tensor:
    return torch.full((len(x),), -1, dtype=torch.long)  # no first round is "all correct": disagreers only


def is_certified(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Theorem 1: bool per image, True iff every two-mask prediction (the diagonal included) is its label."""
    return (table == labels[:, None, None].to(table.dtype)).flatten(1).all(1)


def _check_shape(x: torch.Tensor, masks: MaskSet) -> None:
    if tuple(x.shape[2:]) != tuple(masks.image_size):
        raise PatchSizeError(f"the mask set is built for {masks.image_size[0]}x{masks.image_size[1]} images, got "
                             f"{x.shape[2]}x{x.shape[3]}")


# ------------------------------------------------------------------------------------ the attack check


def _locations(extent: int, side: int, stride: int) -> list[int]:
    return sorted(set(range(0, extent - side + 1, stride)) | {extent - side})


def attack_double_masking(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, masks: MaskSet,
                          fill: float = 0.5, steps: int = ATTACK_DEFAULTS["steps"],
                          step_size: float = ATTACK_DEFAULTS["step_size"], stride: int | None = None,
                          views: str = ATTACK_DEFAULTS["views"], seed: int = ATTACK_DEFAULTS["seed"],
                          batch_size: int = 512, progress: bool = False) -> dict[str, Any]:
    """An adaptive patch attack on double masking, at the certified patch size, at every position of a grid
    (``stride`` px, default ``max(1, side // 2)``, last row and column included; 1 = every position).

    At each position the patch pixels start uniform at random (one seeded draw per example) and take
    ``steps`` signed-gradient steps of ``step_size`` on the mean cross-entropy of the masked views
    (``views="one"``: the first round's K one-mask images; ``"two"``: all K (K + 1) / 2 two-mask images,
    which the second round reads), clipped to [0, 1]; double masking then predicts the patched image.
    Positions are visited in order and an example stops at its first break. Returns ``broken`` (bool per
    example: some position made double masking wrong, or it was wrong clean), ``location`` (the breaking
    [top, left] or None), ``positions``, ``settings`` and ``seconds``.
    """
    fill, batch_size = _check_fill(fill), _check_batch(batch_size)
    check_images(x, y, nonempty=True)
    _check_shape(x, masks)
    if views not in ("one", "two"):
        raise PatchSizeError(f"views must be 'one' or 'two', got {views!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise PatchSizeError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not math.isfinite(step_size) \
            or step_size <= 0:
        raise PatchSizeError(f"step_size (pixel units) must be a finite number > 0, got {step_size!r}")
    ph, pw = masks.patch
    h, w = masks.image_size
    stride = max(1, min(ph, pw) // 2) if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise PatchSizeError(f"stride is in pixels and must be an integer >= 1, got {stride!r}")
    grid = [(t, left) for t in _locations(h, ph, stride) for left in _locations(w, pw, stride)]
    device = model_device(model)
    keep = masks.keep(device)
    pairs = torch.triu_indices(len(masks), len(masks)) if views == "two" else torch.arange(len(masks)).repeat(2, 1)
    view_keep = keep[pairs[0]] & keep[pairs[1]]
    chunk = max(1, batch_size // len(view_keep))
    x, y = x.detach().cpu(), y.cpu()
    start = time.perf_counter()
    with eval_mode(model):
        pred, _ = decide(pair_predictions(model, x, masks, fill, batch_size, labels=_nolabels(x)))
    broken = pred != y
    location: list[list[int] | None] = [None] * len(x)
    init = torch.rand(x.shape, generator=torch.Generator().manual_seed(int(seed)))
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)

    def run(jobs: list[tuple[int, int]]) -> None:
        loc = torch.tensor([grid[j] for j, _ in jobs])
        ex = torch.tensor([i for _, i in jobs])
        top, left = loc[:, :1, None], loc[:, 1:, None]
        region = ((rows >= top) & (rows < top + ph) & (cols >= left) & (cols < left + pw))[:, None].to(device)
        xb, yb = x[ex].to(device), y[ex].to(device)
        patch = init[ex].to(device)
        visible = view_keep.repeat_interleave(len(jobs), 0)
        for _ in range(steps):
            patch.requires_grad_(True)
            xp = torch.where(region, patch, xb)
            loss = F.cross_entropy(model(apply_keep(xp.repeat(len(view_keep), 1, 1, 1), visible, fill)),
                                   yb.repeat(len(view_keep)))
            (grad,) = torch.autograd.grad(loss, patch)
            patch = (patch.detach() + step_size * grad.sign()).clamp(0.0, 1.0)
        patched = torch.where(region, patch.detach(), xb).cpu()
        with torch.no_grad():
            out, _ = decide(pair_predictions(model, patched, masks, fill, batch_size, labels=_nolabels(patched)))
        for k in (out != y[ex]).nonzero().flatten().tolist():
            i = int(ex[k])
            if not broken[i]:
                broken[i] = True
                location[i] = [int(v) for v in loc[k]]

    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        pending: list[tuple[int, int]] = []
        for j in tqdm(range(len(grid)), desc="patch attack on double masking", disable=not progress, leave=False):
            pending += [(j, i) for i in (~broken).nonzero().flatten().tolist()]
            while len(pending) >= chunk or (j == len(grid) - 1 and pending):
                run(pending[:chunk])
                pending = [(jj, i) for jj, i in pending[chunk:] if not broken[i]]
    settings = {"steps": steps, "step_size": float(step_size), "stride": stride, "views": views, "seed": int(seed),
                "positions": len(grid), "init": "uniform", "loss": f"mean cross-entropy over the {views}-mask views"}
    return {"broken": broken, "location": location, "positions": len(grid), "settings": settings,
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------- report


def _per_class(y: torch.Tensor, correct: torch.Tensor, certified: torch.Tensor,
               class_names: Sequence[str] | None) -> list[dict[str, Any]]:
    rows = []
    for c in sorted(set(y.tolist())):
        sel = y == c
        n = int(sel.sum())
        rows.append({"class": c, "name": class_names[c] if class_names and c < len(class_names) else None, "n": n,
                     "clean": accuracy_record(int(correct[sel].sum()), n),
                     "certified": accuracy_record(int(certified[sel].sum()), n)})
    return rows


def patchcleanser_report(
    model: torch.nn.Module,
    data: Any,
    patch: float | int | Sequence[int],
    masks_per_axis: int = 6,
    fill: float = 0.5,
    n_examples: int | None = None,
    batch_size: int = 512,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
    safety: Sequence[int] = (),
    attack_examples: int = 0,
    attack_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Certify ``data`` with PatchCleanser against a ``patch`` (:func:`patch_pixels`) anywhere in the image
    and summarise it as a certification report: ``clean`` (double masking's accuracy), ``base_clean`` (the
    model alone), ``certified`` (Theorem 1), each with a 95% Clopper-Pearson interval, the ``mask_set``,
    the ``cases`` of Algorithm 1, ``per_class`` (with ``class_names``; ``safety`` lists the classes the
    report leads with) and ``per_example`` rows. With ``attack_examples``, the first ones are attacked with
    :func:`attack_double_masking` (``attack_options``) and no certified example may break."""
    for name, value in (("attack_examples", attack_examples), ("masks_per_axis", masks_per_axis)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PatchSizeError(f"{name} must be an integer >= 0, got {value!r}")
    fill, batch_size = _check_fill(fill), _check_batch(batch_size)
    unknown = set(attack_options or {}) - (set(ATTACK_DEFAULTS) - {"seed"})
    if unknown:
        raise PatchSizeError(f"unknown patch-attack option(s) {sorted(unknown)}; use {sorted(ATTACK_DEFAULTS)}")
    x, y = collect(data, n_examples)
    masks = mask_set(tuple(x.shape[2:]), patch, masks_per_axis)
    check_finite_weights(model, "certify")
    start = time.perf_counter()
    with eval_mode(model):
        classes = num_classes(model, x)
        base = batched_logits(model, x, batch_size).argmax(1)
        table = pair_predictions(model, x, masks, fill, batch_size, labels=y, progress=progress)
    pred, case = decide(table)
    certified = is_certified(table, y)
    correct = pred == y
    total = len(y)
    seconds = time.perf_counter() - start
    evaluated = int((table >= 0).sum()) - int((table >= 0).diagonal(dim1=1, dim2=2).sum())
    described = masks.describe()
    report: dict[str, Any] = {
        "kind": "certification", "method": "patchcleanser",
        "threat": {"kind": "patch", "side_px": list(masks.patch), "area_fraction": described["patch_area_fraction"],
                   "location": "anywhere", "requested": list(patch) if isinstance(patch, (tuple, list)) else patch},
        "mask_set": described,
        "settings": {"fill": fill, "batch_size": batch_size, "masks_per_axis": masks_per_axis,
                     "tie_break": "smallest class id", "reference": PAPER},
        "n_examples": total,
        "clean": accuracy_record(int(correct.sum()), total),
        "base_clean": accuracy_record(int((base == y).sum()), total),
        "certified": accuracy_record(int(certified.sum()), total),
        "cases": {CASES[c]: int((case == c).sum()) for c in CASES},
        "forward_passes": total * len(masks) + evaluated // 2,
        "per_class": _per_class(y, correct, certified, class_names),
        "safety": [int(c) for c in safety],
        "per_example": [{"idx": i, "label": int(lab), "predict": int(p), "base_predict": int(b), "certified": bool(c),
                         "case": CASES[int(k)]}
                        for i, (lab, p, b, c, k) in enumerate(zip(y.tolist(), pred.tolist(), base.tolist(),
                                                                  certified.tolist(), case.tolist()))],
        "empirical": None,
    }
    from robust.certify.verify import consistency  # loads torchattacks: not at import (MaskedTraining imports this)

    if attack_examples:
        m = min(attack_examples, total)
        options = {k: v for k, v in (attack_options or {}).items()}
        result = attack_double_masking(model, x[:m], y[:m], masks, fill, batch_size=batch_size, seed=seed,
                                       progress=progress, **options)
        robust = ~result["broken"]
        violations = [i for i in range(m) if bool(certified[i]) and bool(result["broken"][i])]
        report["empirical"] = {"n_examples": m, "attack": "adaptive patch on double masking",
                               "settings": result["settings"], "seconds": result["seconds"],
                               "robust": accuracy_record(int(robust.sum()), m),
                               "certified": accuracy_record(int(certified[:m].sum()), m),
                               "clean": accuracy_record(int(correct[:m].sum()), m),
                               "broken_at": {str(i): loc for i, loc in enumerate(result["location"]) if loc}}
        report["consistency"] = consistency(report["empirical"]["clean"], report["empirical"]["robust"],
                                            report["empirical"]["certified"], violations=violations,
                                            what=f"double masking on the first {m} examples")
    else:
        report["consistency"] = consistency(report["clean"], None, report["certified"], what="double masking")
    report["seconds"] = time.perf_counter() - start
    report["seconds_per_example"] = seconds / max(total, 1)
    report["protocol"] = {"n_examples": total, "seed": seed, "batch_size": batch_size,
                          "num_classes": classes,
                          **describe_run(model, checkpoint)}
    return report
