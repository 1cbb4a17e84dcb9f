"""Physical and spatial threat models: an adversarial patch and worst-case rotations/translations.

Adversarial patch (Brown et al. 2017, "Adversarial Patch"; Eykholt et al. 2018, "Robust
Physical-World Attacks on Deep Learning Visual Classification"): a square sticker covering a
``fraction`` of the image *area* is pasted over the image and its pixels, and only those, are
optimised by signed-gradient ascent on the cross-entropy with no bound other than the image box
[0, 1]. The sticker sits at a chosen position or at the worst position of a grid.

Spatial transformations (Engstrom et al. 2019, "Exploring the Landscape of Spatial Robustness"):
exhaustive grid search over rotations (degrees) and integer translations (pixels), the attack
the paper finds strongest. Images are resampled bilinearly with zero padding, so the borders
revealed by a rotation or shift are black, as in the paper.

Both attacks take images (N, C, H, W) in [0, 1] and integer labels (N,), put the model in eval
mode for the attack and restore every module's previous mode afterwards, and draw randomness
under ``torch.random.fork_rng`` with a fixed seed, so the caller's random stream is untouched.
The clean image is always a candidate: an example misclassified clean is not attacked, its
worst case is the clean image and it counts as not correct.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.base.batching import check_images
from robust.base.runtime import eval_mode

PATCH_DEFAULTS: dict[str, Any] = {
    "fraction": 0.05, "location": "worst", "steps": 50, "step_size": 0.1, "stride": None, "seed": 0,
}
SPATIAL_DEFAULTS: dict[str, Any] = {
    "max_rotation": 30.0, "max_translation": 3, "rotations": 31, "translations": 7,
}
LOCATIONS: tuple[str, ...] = ("worst", "center", "random")


@dataclass
class ThreatResult:
    """Outcome of a threat model on a batch.

    ``correct`` (bool, N): still classified correctly under the worst case found (an example
    misclassified clean is not correct); ``adv_pred`` (long, N): prediction on ``x_adv``, the
    worst-case inputs in [0, 1]; ``details``: per-example lists (e.g. patch location, angle,
    shift, loss) and ``"protocol"``, the JSON-serialisable description of the threat.
    """

    correct: torch.Tensor
    adv_pred: torch.Tensor
    x_adv: torch.Tensor
    details: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _attack_context(model: nn.Module, x: torch.Tensor, seed: int) -> Iterator[None]:
    devices = [x.device] if x.device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _track(
    state: dict[str, torch.Tensor], idx: torch.Tensor, x_new: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor
) -> torch.Tensor:
    """Fold one candidate per example of ``idx`` into ``state``: the first fooling candidate wins,
    else the highest loss. Returns the mask (over ``idx``) of examples whose worst case changed."""
    prev = state["fooled"][idx]
    better = ~prev & (fooled | (loss > state["loss"][idx]))
    sel = idx[better]
    state["x"][sel] = x_new[better]
    state["loss"][sel] = loss[better]
    state["fooled"][sel] = fooled[better]
    return better


def _init_state(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_is_candidate: bool) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    loss = F.cross_entropy(logits, y, reduction="none").float()
    best = loss if clean_is_candidate else torch.where(correct, torch.full_like(loss, -math.inf), loss)
    return {"x": x.clone(), "loss": best, "fooled": ~correct, "clean_correct": correct, "clean_loss": loss}


def _finish(model: nn.Module, y: torch.Tensor, state: dict[str, torch.Tensor], details: dict[str, Any]) -> ThreatResult:
    with torch.no_grad():
        adv_pred = model(state["x"]).argmax(1)
    loss = torch.where(torch.isinf(state["loss"]), state["clean_loss"], state["loss"])
    details = {**details, "loss": loss.tolist(), "clean_correct": state["clean_correct"].tolist()}
    return ThreatResult(correct=adv_pred == y, adv_pred=adv_pred, x_adv=state["x"], details=details)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"patch fraction is a fraction of the image area and must lie in (0, 1), got {fraction}")


def patch_side(fraction: float, height: int, width: int) -> int:
    """Side in pixels of a square patch covering ``fraction`` of an ``height x width`` image's area:
    ``round(sqrt(fraction * H * W))``, at least 1 and at most ``min(H, W)``."""
    _check_fraction(fraction)
    return max(1, min(round(math.sqrt(float(fraction) * height * width)), height, width))


def _grid_positions(extent: int, side: int, stride: int) -> list[int]:
    return sorted(set(range(0, extent - side + 1, stride)) | {extent - side})


def _resolve_location(
    location: Any, side: int, height: int, width: int, stride: int | None
) -> tuple[str | list[int], int | None]:
    if isinstance(location, str):
        if location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS} or a (top, left) tuple, got {location!r}")
        if location != "worst":
            return location, None
        if stride is None:
            stride = max(1, side // 2)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride is in pixels and must be an integer >= 1, got {stride!r}")
        return location, stride
    if (not isinstance(location, (tuple, list)) or len(location) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in location)):
        raise ValueError(f"location must be one of {LOCATIONS} or a (top, left) tuple of ints, got {location!r}")
    top, left = location
    if not (0 <= top <= height - side and 0 <= left <= width - side):
        raise ValueError(f"a {side}x{side} patch at (top, left) = {tuple(location)} does not fit inside the "
                         f"{height}x{width} image: top must be in [0, {height - side}], left in [0, {width - side}]")
    return [top, left], None


def describe_patch(
    image_size: tuple[int, int] | None = None,
    fraction: float = PATCH_DEFAULTS["fraction"],
    location: Any = PATCH_DEFAULTS["location"],
    steps: int = PATCH_DEFAULTS["steps"],
    step_size: float = PATCH_DEFAULTS["step_size"],
    stride: int | None = PATCH_DEFAULTS["stride"],
    seed: int = PATCH_DEFAULTS["seed"],
) -> dict[str, Any]:
    """JSON-serialisable description of the patch threat; ``side_px`` and the resolved stride need
    ``image_size`` = (H, W). Fraction is of the image area, side and stride in pixels."""
    side = stride_px = None
    loc: Any = list(location) if isinstance(location, (tuple, list)) else location
    if image_size is not None:
        h, w = image_size
        side = patch_side(fraction, h, w)
        loc, stride_px = _resolve_location(location, side, h, w, stride)
    else:
        _check_fraction(fraction)
        if location == "worst":
            stride_px = stride
    return {
        "kind": "patch", "fraction": float(fraction), "side_px": side,
        "area_fraction": side * side / (image_size[0] * image_size[1]) if side else None,
        "location": loc, "stride_px": stride_px, "steps": int(steps), "step_size": float(step_size),
        "norm": "linf-unbounded", "init": "uniform", "seed": int(seed),
        "reference": "Brown et al. 2017 (Adversarial Patch); Eykholt et al. 2018 (RP2)",
    }


def _paste(x: torch.Tensor, patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    side = patch.shape[-1]
    ar = torch.arange(side, device=x.device)
    n = torch.arange(x.shape[0], device=x.device)[:, None, None]
    rows = (top[:, None] + ar)[:, :, None]
    cols = (left[:, None] + ar)[:, None, :]
    out = x.clone()
    out[n, :, rows, cols] = patch.permute(0, 2, 3, 1).to(x.dtype)
    return out


def _mask(top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    r = torch.arange(height, device=top.device)
    c = torch.arange(width, device=top.device)
    rows = (r >= top[:, None]) & (r < top[:, None] + side)
    cols = (c >= left[:, None]) & (c < left[:, None] + side)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _optimise_patch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, x0: torch.Tensor,
    steps: int, step_size: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Signed-gradient ascent on the patch pixels; an example stops at its first misclassifying
    iterate, else keeps its highest-loss iterate. Returns (x_best, loss_best, fooled)."""
    state = {"x": x0.clone(), "loss": torch.full((len(x),), -math.inf, device=x.device),
             "fooled": torch.zeros(len(x), dtype=torch.bool, device=x.device)}
    live = torch.arange(len(x), device=x.device)
    cur = x0
    for t in range(steps + 1):
        cur = cur.detach().requires_grad_(t < steps)
        logits = model(cur)
        loss = F.cross_entropy(logits, y[live], reduction="none")
        wrong = logits.argmax(1) != y[live]
        _track(state, live, cur.detach(), loss.detach().float(), wrong)
        keep = ~wrong
        if t == steps or not bool(keep.any()):
            break
        grad = torch.autograd.grad(loss.sum(), cur, allow_unused=True)[0] if loss.requires_grad else None
        if grad is None:
            grad = torch.zeros_like(cur)
        stepped = (cur.detach() + step_size * grad.sign()).clamp(0.0, 1.0)
        cur = torch.where(mask[live], stepped, x[live])[keep]
        live = live[keep]
    return state["x"], state["loss"], state["fooled"]


def patch_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fraction: float = PATCH_DEFAULTS["fraction"],
    location: str | tuple[int, int] = PATCH_DEFAULTS["location"],
    steps: int = PATCH_DEFAULTS["steps"],
    step_size: float = PATCH_DEFAULTS["step_size"],
    stride: int | None = PATCH_DEFAULTS["stride"],
    seed: int = PATCH_DEFAULTS["seed"],
) -> ThreatResult:
    """Adversarial patch (Brown et al. 2017; Eykholt et al. 2018) of side
    ``round(sqrt(fraction * H * W))`` pixels, ``fraction`` being a fraction of the image area.

    The patch pixels start uniform at random (one draw per example from a generator seeded with
    ``seed``, the same at every position, so ``"worst"`` repeats every fixed-position run) and take
    ``steps`` signed-gradient steps of ``step_size`` (pixel units in [0, 1]) on the cross-entropy,
    clipped to [0, 1]: PGD with an unbounded L-inf budget. Per example the first misclassifying
    iterate is kept, else the highest-loss one. ``location``: ``"worst"`` tries every top-left position of a grid with
    ``stride`` pixels (default ``max(1, side // 2)``, last row and column included) and keeps per
    example the first position that fools the model, else the highest loss, attacking at each
    position only the examples not yet fooled; ``"center"``; ``"random"`` (one seeded position per
    example); or a ``(top, left)`` tuple in pixels. Batches never exceed the caller's batch size:
    positions are batched together as examples get fooled.

    ``details``: ``location`` ([top, left] per example, None where misclassified clean), ``loss``,
    ``clean_correct``, ``side_px`` and ``protocol`` (:func:`describe_patch`).
    """
    check_images(x, y, nonempty=True)
    n, c, h, w = x.shape
    side = patch_side(fraction, h, w)
    loc, stride_px = _resolve_location(location, side, h, w, stride)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not float(step_size) > 0:
        raise ValueError(f"step_size (pixel units in [0, 1]) must be > 0, got {step_size}")
    protocol = describe_patch((h, w), fraction, location, steps, step_size, stride, seed)
    gen = torch.Generator().manual_seed(int(seed))
    with _attack_context(model, x, seed), torch.inference_mode(False), torch.enable_grad():
        x, y = x.detach().clone(), y.clone()
        dev = x.device

        def full(v: int) -> torch.Tensor:
            return torch.full((n,), v, dtype=torch.long, device=dev)

        init = torch.rand((n, c, side, side), generator=gen).to(dev)
        if loc == "worst":
            rounds = [(full(top), full(left)) for top in _grid_positions(h, side, stride_px)
                      for left in _grid_positions(w, side, stride_px)]
        elif loc == "center":
            rounds = [(full((h - side) // 2), full((w - side) // 2))]
        elif loc == "random":
            rounds = [(torch.randint(0, h - side + 1, (n,), generator=gen).to(dev),
                       torch.randint(0, w - side + 1, (n,), generator=gen).to(dev))]
        else:
            rounds = [(full(loc[0]), full(loc[1]))]

        state = _init_state(model, x, y, clean_is_candidate=False)
        where = torch.full((n, 2), -1, dtype=torch.long, device=dev)
        active = state["clean_correct"].nonzero().flatten()
        r = 0
        while r < len(rounds) and active.numel():
            chunk = rounds[r:r + max(1, n // active.numel())]
            k, a = len(chunk), active.numel()
            tops = torch.cat([t[active] for t, _ in chunk])
            lefts = torch.cat([left[active] for _, left in chunk])
            xb, yb = x[active].repeat(k, 1, 1, 1), y[active].repeat(k)
            x0 = _paste(xb, init[active].repeat(k, 1, 1, 1), tops, lefts)
            bx, bl, bf = _optimise_patch(model, xb, yb, _mask(tops, lefts, side, h, w), x0, steps, float(step_size))
            for j in range(k):
                s = slice(j * a, (j + 1) * a)
                better = _track(state, active, bx[s], bl[s], bf[s])
                where[active[better]] = torch.stack([tops[s], lefts[s]], 1)[better]
            active = active[~state["fooled"][active]]
            r += k
        locations = [None if top < 0 else [top, left] for top, left in where.tolist()]
        return _finish(model, y, state, {"location": locations, "side_px": side, "protocol": protocol})


def _grid_values(limit: float, count: int) -> list[float]:
    return [0.0] if count == 1 else torch.linspace(-limit, limit, count, dtype=torch.float64).tolist()


def _spatial_grid(max_rotation: float, max_translation: float, rotations: int, translations: int
                  ) -> list[tuple[float, int, int]]:
    angles = _grid_values(float(max_rotation), rotations)
    shifts = [int(round(v)) for v in _grid_values(float(max_translation), translations)]
    grid = [(a, dx, dy) for a in angles for dx in dict.fromkeys(shifts) for dy in dict.fromkeys(shifts)]
    return sorted(grid, key=lambda g: (abs(g[0]), abs(g[1]) + abs(g[2])))


def _check_spatial(max_rotation: float, max_translation: float, rotations: int, translations: int) -> None:
    if not 0.0 <= float(max_rotation) <= 180.0:
        raise ValueError(f"max_rotation is in degrees and must lie in [0, 180], got {max_rotation}")
    if not float(max_translation) >= 0.0:
        raise ValueError(f"max_translation is in pixels and must be >= 0, got {max_translation}")
    for name, v in (("rotations", rotations), ("translations", translations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} is a number of grid points and must be an integer >= 1, got {v!r}")


def describe_spatial(
    max_rotation: float = SPATIAL_DEFAULTS["max_rotation"],
    max_translation: float = SPATIAL_DEFAULTS["max_translation"],
    rotations: int = SPATIAL_DEFAULTS["rotations"],
    translations: int = SPATIAL_DEFAULTS["translations"],
) -> dict[str, Any]:
    """JSON-serialisable description of the spatial threat: angles in degrees, shifts in pixels."""
    _check_spatial(max_rotation, max_translation, rotations, translations)
    grid = _spatial_grid(max_rotation, max_translation, rotations, translations)
    return {
        "kind": "spatial", "max_rotation_deg": float(max_rotation), "max_translation_px": float(max_translation),
        "angles_deg": sorted({g[0] for g in grid}), "translations_px": sorted({g[1] for g in grid}),
        "grid_points": len(grid), "search": "exhaustive grid, worst case per example",
        "transform": "rotate about the image centre, then translate (dx right, dy down)",
        "interpolation": "bilinear", "padding": "zeros",
        "reference": "Engstrom et al. 2019 (Exploring the Landscape of Spatial Robustness)",
    }


def _theta(points: list[tuple[float, int, int]], height: int, width: int, device: torch.device) -> torch.Tensor:
    """``affine_grid`` matrices (normalised coordinates, align_corners=False) that rotate by the
    angle (degrees, counter-clockwise as displayed) about the centre and then shift by (dx, dy) px."""
    g = torch.tensor(points, dtype=torch.float64)
    rad = torch.deg2rad(g[:, 0])
    cos, sin = torch.cos(rad), torch.sin(rad)
    tx, ty = 2 * g[:, 1] / width, 2 * g[:, 2] / height
    m = torch.stack([torch.stack([cos, -sin * height / width], 1), torch.stack([sin * width / height, cos], 1)], 1)
    t = -(m @ torch.stack([tx, ty], 1)[:, :, None])
    return torch.cat([m, t], 2).to(device)


def spatial_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_rotation: float = SPATIAL_DEFAULTS["max_rotation"],
    max_translation: float = SPATIAL_DEFAULTS["max_translation"],
    rotations: int = SPATIAL_DEFAULTS["rotations"],
    translations: int = SPATIAL_DEFAULTS["translations"],
) -> ThreatResult:
    """Worst case over a grid of rotations and translations (Engstrom et al. 2019).

    Angles (degrees) are ``linspace(-max_rotation, max_rotation, rotations)``, shifts (pixels, each
    of dx and dy) ``linspace(-max_translation, max_translation, translations)`` rounded to integers;
    a grid of one point is 0. Every combination is applied with ``affine_grid``/``grid_sample``
    (bilinear, zero padding: the revealed borders are black, as in the paper). Grid points are
    visited from the smallest transformation up; per example the worst case is the first that
    misclassifies, else the one with the highest loss (the untransformed image included).

    ``details``: ``angle_deg``, ``translation_px`` ([dx, dy]), ``loss``, ``clean_correct`` per
    example and ``protocol`` (:func:`describe_spatial`).
    """
    check_images(x, y, nonempty=True)
    _check_spatial(max_rotation, max_translation, rotations, translations)
    n, c, h, w = x.shape
    grid = [g for g in _spatial_grid(max_rotation, max_translation, rotations, translations) if any(g)]
    protocol = describe_spatial(max_rotation, max_translation, rotations, translations)
    with _attack_context(model, x, 0), torch.no_grad():
        x, y = x.clone(), y.clone()
        state = _init_state(model, x, y, clean_is_candidate=True)
        chosen = torch.full((n,), -1, dtype=torch.long, device=x.device)
        active = state["clean_correct"].nonzero().flatten()
        r = 0
        while r < len(grid) and active.numel():
            k, a = min(max(1, n // active.numel()), len(grid) - r), active.numel()
            theta = _theta(grid[r:r + k], h, w, x.device).to(x.dtype).repeat_interleave(a, 0)
            xb = x[active].repeat(k, 1, 1, 1)
            sampling = F.affine_grid(theta, list(xb.shape), align_corners=False)
            xt = F.grid_sample(xb, sampling, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)
            logits = model(xt)
            loss = F.cross_entropy(logits, y[active].repeat(k), reduction="none").float()
            wrong = logits.argmax(1) != y[active].repeat(k)
            for j in range(k):
                s = slice(j * a, (j + 1) * a)
                better = _track(state, active, xt[s], loss[s], wrong[s])
                chosen[active[better]] = r + j
            active = active[~state["fooled"][active]]
            r += k
        points = [grid[i] if i >= 0 else (0.0, 0, 0) for i in chosen.tolist()]
        details = {"angle_deg": [p[0] for p in points], "translation_px": [[p[1], p[2]] for p in points],
                   "protocol": protocol}
        return _finish(model, y, state, details)
