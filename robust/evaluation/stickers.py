"""Universal physical stickers and patches, measured over whole tracks as a car sees a sign.

RP2 sticker (Eykholt et al. 2018, "Robust Physical-World Attacks on Deep Learning Visual Classification"):
one sticker for every image of a class, confined to a mask on the sign (:func:`sticker_masks`), optimised
with Adam under expectation over transformations (EOT, Athalye et al. 2018, "Synthesizing Robust
Adversarial Examples"). The sticker is opaque: it *replaces* the pixels under its mask,
``x' = (1 - M) x + M s`` (a printed sticker has one colour per pixel whatever photo it is stuck on), and
the stickered image is then viewed through one random :class:`EOT` draw (rotation, scale, shift,
perspective, brightness, blur), so the mask and the sticker move with the sign, differentiably.
Optional terms: the non-printability score over a printable palette and total variation (both from
Sharif et al. 2016, "Accessorize to a Crime").

Universal patch (Brown et al. 2017, "Adversarial Patch"): one square patch pasted at a random location,
rotation and scale (:class:`Placement`) on training images of every class, untargeted or toward a
target class.

Defaults chosen here (the papers leave the 32x32 setting open): 500 Adam steps at lr 0.1 in pixel
units ([0, 1]), 32 images per step each with its own EOT draw, uniform random initialisation. The
untargeted loss is ``-log(1 - p_y)`` (bounded, so frames already fooled stop pulling); the targeted loss
is the cross-entropy to the target (RP2).

Track-level evaluation (:func:`evaluate_on_tracks`): every frame of every held-out track gets one seeded
EOT draw; the frame is seen twice through that same draw, without and with the sticker. Convention: a
frame counts only if the model reads its clean view right (and, when targeted, its label is not the
target); it is fooled when the stickered view is misread (untargeted) or read as the target
(targeted). A track counts when at least one of its frames counts; it is fooled at level k when at
least k of its counted frames are fooled (``"any"`` = 1, ``"half"`` = ceil(m / 2), ``"all"`` = m, for
m counted frames). Optimisation and evaluation tracks must be disjoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robust.base.batching import check_images
from robust.base.errors import InputError
from robust.base.runtime import eval_mode, model_device
from robust.base.stats import accuracy_record, clopper_pearson
from robust.evaluation.physical import patch_side

__all__ = ["EOT", "Placement", "Sticker", "Patch", "MASKS", "LEVELS", "PRINTABLE_PALETTE", "STICKER_DEFAULTS",
           "UNIVERSAL_PATCH_DEFAULTS", "CONVENTION", "sticker_masks", "mask_area", "apply_sticker", "place_patch",
           "non_printability", "total_variation", "optimise_sticker", "optimise_patch", "evaluate_on_tracks",
           "aggregate_tracks", "success_record", "sticker_examples"]

MASKS: tuple[str, ...] = ("bars", "square")
LEVELS: tuple[str, ...] = ("any", "half", "all")
EOT_UNIFORMS, PLACEMENT_UNIFORMS = 14, 4  # uniform numbers per draw
SIGN_FRACTION = 0.7  # GTSRB 32x32 crops keep a margin: the sign fills roughly the central 70% of each side
BAR_WIDTH = 0.8  # each bar spans 80% of the sign's width, like RP2's two rectangles above and below "STOP"
STICKER_DEFAULTS: dict[str, Any] = {"mask": "bars", "area": 0.1, "steps": 500, "lr": 0.1, "batch_size": 32,
                                    "printability": 0.0, "smoothness": 0.0, "seed": 0}
UNIVERSAL_PATCH_DEFAULTS: dict[str, Any] = {"fraction": 0.1, "steps": 500, "lr": 0.1, "batch_size": 32,
                                            "printability": 0.0, "smoothness": 0.0, "seed": 0}
# Black, white, mid grey and the primary and secondary colours at print-like saturation (sRGB in [0, 1]): an
# illustrative palette; Sharif et al. photographed 30 colours their printer produced: use measured ones.
PRINTABLE_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (0.8, 0.1, 0.1), (0.1, 0.55, 0.2), (0.1, 0.2, 0.65),
    (0.95, 0.85, 0.1), (0.95, 0.5, 0.1), (0.1, 0.65, 0.8), (0.75, 0.15, 0.6))
CONVENTION = ("each frame gets one seeded EOT draw, seen without and with the sticker; a frame counts only if its "
              "clean view is read right (and its label is not the target); it is fooled when the stickered view is "
              "misread (untargeted) or read as the target (targeted); a track counts when one of its frames counts "
              "and is fooled at level k when at least k of its counted frames are fooled (any = 1, half = ceil(m/2), "
              "all = m of m counted frames)")


# ---------------------------------------------------------------------------------------------- masks


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 4 for v in (h, w)):
        raise InputError(f"mask size must be an int or (height, width) of ints >= 4, got {size!r}")
    return h, w


def sticker_masks(name: str, size: int | Sequence[int], area: float = STICKER_DEFAULTS["area"],
                  sign_fraction: float = SIGN_FRACTION) -> torch.Tensor:
    """A sticker mask (1, H, W) of zeros and ones covering about ``area`` of the *image* area, inside the
    sign (the central ``sign_fraction`` of each side). ``"bars"``: two horizontal bars, each ``BAR_WIDTH`` of
    the sign wide, centred at 1/4 and 3/4 of the sign's height (RP2's graffiti-like rectangles);
    ``"square"``: one centred square of side ``round(sqrt(area * H * W))``. Pixel rounding makes the
    realised area (:func:`mask_area`) differ from ``area`` by at most one row of the bars or one side of the
    square; an area that does not fit inside the sign is refused."""
    h, w = _size(size)
    if not 0.0 < float(area) < 1.0:
        raise InputError(f"sticker area is a fraction of the image area and must lie in (0, 1), got {area}")
    if not 0.0 < float(sign_fraction) <= 1.0:
        raise InputError(f"sign_fraction is a fraction of the image side in (0, 1], got {sign_fraction}")
    sign_h, sign_w = sign_fraction * h, sign_fraction * w
    mask = torch.zeros(1, h, w)
    if name == "bars":
        bw = max(1, round(BAR_WIDTH * sign_w))
        bh = max(1, round(area * h * w / (2 * bw)))
        if bh > sign_h / 2:
            raise InputError(f"sticker area {area} does not fit two bars inside the sign (at most "
                             f"{2 * bw * math.floor(sign_h / 2) / (h * w):.3f} of a {h}x{w} image)")
        left = round((w - bw) / 2)
        for centre in (h / 2 - sign_h / 4, h / 2 + sign_h / 4):
            top = round(centre - bh / 2)
            mask[:, top:top + bh, left:left + bw] = 1.0
    elif name == "square":
        side = patch_side(area, h, w)
        if side > min(sign_h, sign_w):
            raise InputError(f"sticker area {area} gives a {side}x{side} square larger than the sign "
                             f"({sign_fraction} of the {h}x{w} image)")
        top, left = round((h - side) / 2), round((w - side) / 2)
        mask[:, top:top + side, left:left + side] = 1.0
    else:
        raise InputError(f"unknown sticker mask {name!r}; choose one of {', '.join(MASKS)} or pass a mask tensor")
    return mask


def mask_area(mask: torch.Tensor) -> float:
    """The fraction of the image area a mask covers (its mean over H x W)."""
    return float(mask.float().reshape(-1, *mask.shape[-2:])[0].mean())


def _check_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.shape[-2:] != (h, w) or mask.ndim not in (2, 3) or \
            (mask.ndim == 3 and mask.shape[0] != 1):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"mask must be a (1, {h}, {w}) or ({h}, {w}) tensor matching the images, got {shape}")
    mask = mask.float().reshape(1, h, w)
    if float(mask.min()) < 0 or float(mask.max()) > 1 or not bool(mask.any()):
        raise InputError("mask must hold values in [0, 1] with at least one pixel set")
    return mask


def apply_sticker(x: torch.Tensor, sticker: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An opaque sticker: ``(1 - mask) * x + mask * sticker``; pixels outside the mask are unchanged exactly."""
    mask = mask.to(x.device, x.dtype)
    return x * (1 - mask) + sticker.to(x.device, x.dtype) * mask


# ------------------------------------------------------------------------------------------------ EOT


def _check_range(name: str, value: tuple[float, float], low: float) -> None:
    if len(value) != 2 or not low <= float(value[0]) <= float(value[1]) or not math.isfinite(float(value[1])):
        raise InputError(f"EOT {name} must be a (low, high) range with {low} <= low <= high, got {value!r}")


def _homographies(u: torch.Tensor, h: int, w: int, eot: EOT) -> torch.Tensor:
    """(n, 3, 3) maps from output to input normalised coordinates (``grid_sample``'s, align_corners=False) from
    uniform draws ``u`` (n, 12): the input corners go to ``scale * R(angle) corner + shift + jitter`` (pixels)."""
    n = len(u)
    angle = torch.deg2rad((2 * u[:, 0] - 1) * eot.rotation)
    scale = eot.scale[0] + u[:, 1] * (eot.scale[1] - eot.scale[0])
    half = torch.tensor([w / 2, h / 2], dtype=u.dtype)
    shift = (2 * u[:, 2:4] - 1) * eot.translation * 2 * half
    jitter = (2 * u[:, 4:12].reshape(n, 4, 2) - 1) * eot.perspective * half
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=u.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    dst = scale[:, None, None] * (src * half) @ rot.transpose(1, 2) + shift[:, None] + jitter
    dst = dst / half
    a = torch.zeros(n, 8, 8, dtype=u.dtype)
    b = torch.zeros(n, 8, dtype=u.dtype)
    for i in range(4):  # solve H dst_i ~ src_i with H[2, 2] = 1
        x, y = dst[:, i, 0], dst[:, i, 1]
        sx, sy = src[i]
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        a[:, 2 * i] = torch.stack([x, y, one, zero, zero, zero, -x * sx, -y * sx], -1)
        a[:, 2 * i + 1] = torch.stack([zero, zero, zero, x, y, one, -x * sy, -y * sy], -1)
        b[:, 2 * i], b[:, 2 * i + 1] = sx, sy
    hom = torch.linalg.solve(a, b)
    return torch.cat([hom, torch.ones(n, 1, dtype=u.dtype)], 1).reshape(n, 3, 3)


def _warp(x: torch.Tensor, hom: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    ys = (2 * torch.arange(h, device=x.device, dtype=torch.float64) + 1) / h - 1
    xs = (2 * torch.arange(w, device=x.device, dtype=torch.float64) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, h * w, 3)
    mapped = points @ hom.to(x.device, torch.float64).transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:]).reshape(n, h, w, 2).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-image separable Gaussian blur (replicate padding); sigma in pixels, one per image."""
    n, c, h, w = x.shape
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-k[None] ** 2 / (2 * s ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, K)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


@dataclass(frozen=True)
class EOT:
    """Expectation over transformations: the random view of a sign (Athalye et al. 2018; Eykholt et al. 2018).

    Each draw rotates by an angle uniform in ``[-rotation, rotation]`` degrees, zooms by a factor uniform in
    ``scale`` about the centre, shifts by up to ``translation`` of the side on each axis, moves each corner by
    up to ``perspective`` of the half-side on each axis (a perspective view; torchvision's distortion
    scale), multiplies the brightness by a gain uniform in ``brightness`` and blurs with a Gaussian of sigma
    uniform in ``[0, blur]`` pixels; border pixels are repeated where the view reveals the outside. All of it
    is differentiable and the same for any number of channels, so a mask goes through the same view.
    """

    rotation: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translation: float = 0.05
    perspective: float = 0.15
    brightness: tuple[float, float] = (0.7, 1.3)
    blur: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "brightness", tuple(float(v) for v in self.brightness))
        if not 0.0 <= float(self.rotation) <= 180.0:
            raise InputError(f"EOT rotation is in degrees and must lie in [0, 180], got {self.rotation}")
        _check_range("scale", self.scale, 1e-3)
        _check_range("brightness", self.brightness, 0.0)
        for name in ("translation", "perspective"):
            if not 0.0 <= float(getattr(self, name)) <= 0.5:
                raise InputError(f"EOT {name} is a fraction of the image side in [0, 0.5], got {getattr(self, name)}")
        if not 0.0 <= float(self.blur) <= 10.0:
            raise InputError(f"EOT blur is a Gaussian sigma in pixels in [0, 10], got {self.blur}")

    @classmethod
    def identity(cls) -> EOT:
        """No transformation: every view is the image itself."""
        return cls(rotation=0.0, scale=(1.0, 1.0), translation=0.0, perspective=0.0, brightness=(1.0, 1.0), blur=0.0)

    @property
    def geometric(self) -> bool:
        return bool(self.rotation or self.scale != (1.0, 1.0) or self.translation or self.perspective)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "units": "rotation degrees; translation, perspective fractions of the side; "
                                          "scale, brightness factors; blur Gaussian sigma in pixels",
                "padding": "border", "interpolation": "bilinear"}

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` draws (on the CPU) from ``generator``: ``homography`` (n, 3, 3), ``brightness`` (n,), ``blur`` (n,).
        :data:`EOT_UNIFORMS` uniforms per draw, taken row by row, so draw i depends only on the seed and i."""
        return self.from_uniform(torch.rand((n, EOT_UNIFORMS), generator=generator, dtype=torch.float64), size)

    def from_uniform(self, u: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The draws of :meth:`sample` from uniforms ``u`` (n, :data:`EOT_UNIFORMS`) in [0, 1)."""
        h, w = size
        return {"homography": _homographies(u[:, :12], h, w, self),
                "brightness": (self.brightness[0] + u[:, 12] * (self.brightness[1] - self.brightness[0])).float(),
                "blur": (u[:, 13] * self.blur).float()}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The views of ``x`` (N, C, H, W) under ``params`` (N draws of :meth:`sample`), clipped to [0, 1]."""
        if len(params["brightness"]) != len(x):
            raise InputError(f"got {len(params['brightness'])} EOT draws for {len(x)} images")
        out = x
        if self.geometric:
            out = _warp(out, params["homography"])
        if self.brightness != (1.0, 1.0):
            out = out * params["brightness"].to(x.device, x.dtype)[:, None, None, None]
        if self.blur > 0:
            out = _blur(out, params["blur"], max(1, math.ceil(3 * self.blur)))
        return out.clamp(0.0, 1.0)


@dataclass(frozen=True)
class Placement:
    """Where a universal patch lands (Brown et al. 2017): rotated by an angle uniform in ``[-rotation,
    rotation]`` degrees, its side scaled by a factor uniform in ``scale``, centred uniformly where the scaled
    (unrotated) square lies inside the image."""

    rotation: float = 22.5
    scale: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if not 0.0 <= float(self.rotation) <= 180.0:
            raise InputError(f"patch rotation is in degrees and must lie in [0, 180], got {self.rotation}")
        _check_range("scale", self.scale, 1e-3)

    def sample(self, n: int, size: tuple[int, int], side: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``patch_theta`` (n, 2, 3): ``affine_grid`` maps from image to patch normalised coordinates."""
        return self.from_uniform(torch.rand((n, PLACEMENT_UNIFORMS), generator=generator, dtype=torch.float64),
                                 size, side)

    def from_uniform(self, u: torch.Tensor, size: tuple[int, int], side: int) -> dict[str, torch.Tensor]:
        """The draws of :meth:`sample` from uniforms ``u`` (n, :data:`PLACEMENT_UNIFORMS`) in [0, 1)."""
        h, w = size
        angle = torch.deg2rad((2 * u[:, 0] - 1) * self.rotation)
        half_side = (self.scale[0] + u[:, 1] * (self.scale[1] - self.scale[0])) * side / 2
        cx = (2 * u[:, 2] - 1) * (w / 2 - half_side).clamp_min(0)
        cy = (2 * u[:, 3] - 1) * (h / 2 - half_side).clamp_min(0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / half_side[:, None, None]
        lin = inv * torch.tensor([w / 2, h / 2], dtype=u.dtype)
        offset = -(inv @ torch.stack([cx, cy], -1)[:, :, None])
        return {"patch_theta": torch.cat([lin, offset], 2).float()}

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "units": "rotation degrees; scale a factor on the nominal side",
                "location": "uniform, scaled square inside the image"}


def place_patch(x: torch.Tensor, patch: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Paste ``patch`` (C, s, s) on each image of ``x`` through the affine maps ``theta`` (N, 2, 3), alpha-composited
    with the bilinearly resampled patch footprint, so the edges blend and gradients reach every patch pixel."""
    n, c, h, w = x.shape
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, c, h, w], align_corners=False)
    src = torch.cat([patch.to(x.device, x.dtype), torch.ones_like(patch[:1])], 0).expand(n, -1, -1, -1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = out[:, c:]
    return x * (1 - alpha) + out[:, :c]


# --------------------------------------------------------------------------------------------- losses


def non_printability(pixels: torch.Tensor, mask: torch.Tensor,
                     palette: Sequence[Sequence[float]] = PRINTABLE_PALETTE) -> torch.Tensor:
    """Non-printability score (Sharif et al. 2016): per pixel the product over the palette of the Euclidean
    colour distances, averaged over the mask's pixels. Zero exactly when every pixel is a palette colour.
    One-channel images use the palette's grey levels."""
    pal = torch.tensor(palette, dtype=pixels.dtype, device=pixels.device)
    if pixels.shape[0] == 1:
        pal = pal.mean(1, keepdim=True)
    elif pal.shape[1] != pixels.shape[0]:
        raise InputError(f"the palette has {pal.shape[1]} channels, the sticker {pixels.shape[0]}")
    flat = pixels.reshape(pixels.shape[0], -1).T  # (P, C)
    dist = ((flat[:, None, :] - pal[None]) ** 2).sum(-1).add(1e-12).sqrt().prod(1)
    weight = mask.reshape(-1).to(pixels)
    return (dist * weight).sum() / weight.sum().clamp_min(1)


def total_variation(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Total variation (Sharif et al. 2016): ``sqrt(dy^2 + dx^2)`` per pixel between neighbours both inside the
    mask, averaged over the mask's pixels; a smoothness penalty so a sticker survives printing and distance."""
    m = mask.reshape(1, *pixels.shape[-2:]).to(pixels)
    dy = (pixels[:, 1:, :-1] - pixels[:, :-1, :-1]) * m[:, 1:, :-1] * m[:, :-1, :-1]
    dx = (pixels[:, :-1, 1:] - pixels[:, :-1, :-1]) * m[:, :-1, 1:] * m[:, :-1, :-1]
    return (dy ** 2 + dx ** 2).sum(0).add(1e-12).sqrt().sum() / m.sum().clamp_min(1)


def _attack_loss(logits: torch.Tensor, y: torch.Tensor, target: int | None) -> torch.Tensor:
    """Per example: cross-entropy to ``target``, or ``-log(1 - p_y)`` untargeted (zero pull once fooled)."""
    if target is not None:
        return F.cross_entropy(logits, torch.full_like(y, target), reduction="none")
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return -(torch.logsumexp(others, 1) - torch.logsumexp(logits, 1))


def _fooled(pred: torch.Tensor, y: torch.Tensor, target: int | None) -> torch.Tensor:
    return pred == target if target is not None else pred != y


# ------------------------------------------------------------------------------------------- artefacts


def _slice(params: dict[str, torch.Tensor], s: slice) -> dict[str, torch.Tensor]:
    return {k: v[s] for k, v in params.items()}


@dataclass
class Sticker:
    """An optimised universal sticker. ``pixels`` (C, H, W) in [0, 1], zero outside ``mask`` (1, H, W); ``eot``
    the view it was optimised (and is evaluated) under; ``tracks`` the track ids it was optimised on (or
    None); ``history`` the loss and the batch success rate per step; ``protocol`` its JSON description."""

    pixels: torch.Tensor
    mask: torch.Tensor
    eot: EOT
    target: int | None = None
    tracks: tuple[int, ...] | None = None
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)
    protocol: dict[str, Any] = field(default_factory=dict)

    def paste(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return apply_sticker(x, self.pixels, self.mask)

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.eot.sample(n, size, generator)

    def views(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean view, stickered view)`` of ``x`` through the same draws ``params``."""
        return self.eot.apply(x, params), self.eot.apply(self.paste(x, params), params)


@dataclass
class Patch:
    """An optimised universal patch (Brown et al. 2017): ``pixels`` (C, s, s) in [0, 1], pasted by ``placement``
    and then viewed through ``eot`` (the identity unless given); other fields as :class:`Sticker`'s."""

    pixels: torch.Tensor
    placement: Placement
    eot: EOT
    target: int | None = None
    tracks: tuple[int, ...] | None = None
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)
    protocol: dict[str, Any] = field(default_factory=dict)

    def paste(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return place_patch(x, self.pixels, params["patch_theta"])

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        u = torch.rand((n, PLACEMENT_UNIFORMS + EOT_UNIFORMS), generator=generator, dtype=torch.float64)
        return {**self.placement.from_uniform(u[:, :PLACEMENT_UNIFORMS], size, self.pixels.shape[-1]),
                **self.eot.from_uniform(u[:, PLACEMENT_UNIFORMS:], size)}

    def views(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean view, patched view)`` of ``x`` through the same draws ``params``."""
        return self.eot.apply(x, params), self.eot.apply(self.paste(x, params), params)


# ------------------------------------------------------------------------------------------ optimisation


def _check_common(model: nn.Module, x: torch.Tensor, y: torch.Tensor | int, target: int | None, steps: int,
                  lr: float, batch_size: int, track: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    if isinstance(y, int) and not isinstance(y, bool):
        y = torch.full((len(x),), y, dtype=torch.long)
    check_images(x, y, nonempty=True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be an integer >= 0, got {steps!r}")
    if not float(lr) > 0:
        raise InputError(f"lr (pixel units in [0, 1]) must be > 0, got {lr}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if track is not None and (not isinstance(track, torch.Tensor) or track.shape != y.shape):
        raise InputError(f"track must be one id per image ({len(y)}), got "
                         f"{tuple(track.shape) if isinstance(track, torch.Tensor) else type(track).__name__}")
    with eval_mode(model), torch.no_grad():
        classes = int(model(x[:1].to(model_device(model))).shape[1])
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < classes):
        raise InputError(f"target must be a class index in 0..{classes - 1} or None, got {target!r}")
    return y.long(), classes


def _optimise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...], mask: torch.Tensor,
              compose: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
              sample: Callable[[int, torch.Generator], dict[str, torch.Tensor]], target: int | None, steps: int,
              lr: float, batch_size: int, printability: float, smoothness: float,
              palette: Sequence[Sequence[float]], seed: int, progress: bool, desc: str
              ) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Adam on the artefact's pixels (clipped to [0, 1] after each step); each step a random batch, each image
    with its own transformation draw. Model parameters get no gradient; the caller's RNG is untouched."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(int(seed))
    pixels = torch.rand(shape, generator=gen).to(device).requires_grad_(True)
    mask = mask.to(device)
    opt = torch.optim.Adam([pixels], lr=float(lr))
    history: dict[str, list[float]] = {"loss": [], "success": []}
    b = min(batch_size, len(x))
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            idx = torch.randperm(len(x), generator=gen)[:b]
            params = {k: v.to(device) for k, v in sample(b, gen).items()}
            yb = y[idx].to(device)
            logits = model(compose(x[idx].to(device), pixels, params))
            loss = _attack_loss(logits, yb, target).mean()
            if printability:
                loss = loss + printability * non_printability(pixels, mask, palette)
            if smoothness:
                loss = loss + smoothness * total_variation(pixels, mask)
            pixels.grad = torch.autograd.grad(loss, pixels)[0]
            opt.step()
            with torch.no_grad():
                pixels.clamp_(0.0, 1.0)
            history["loss"].append(float(loss.detach()))
            history["success"].append(float(_fooled(logits.argmax(1), yb, target).float().mean()))
    return pixels.detach() * mask, history


def _common_protocol(x: torch.Tensor, y: torch.Tensor, track: torch.Tensor | None, target: int | None, steps: int,
                     lr: float, batch_size: int, printability: float, smoothness: float,
                     palette: Sequence[Sequence[float]], seed: int) -> dict[str, Any]:
    return {"target": target, "steps": int(steps), "optimiser": "adam", "lr": float(lr),
            "lr_units": "pixels in [0, 1]", "batch_size": int(batch_size), "init": "uniform",
            "loss": "cross-entropy to target" if target is not None else "-log(1 - p_label)",
            "printability": float(printability), "smoothness": float(smoothness),
            "palette_colours": len(palette) if printability else None, "seed": int(seed),
            "optimised_on": {"images": len(x), "classes": sorted({int(v) for v in y.tolist()}),
                             "tracks": None if track is None else len(set(track.tolist()))}}


def optimise_sticker(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | int, mask: torch.Tensor | str = STICKER_DEFAULTS["mask"], *,
    area: float = STICKER_DEFAULTS["area"], target: int | None = None, steps: int = STICKER_DEFAULTS["steps"],
    lr: float = STICKER_DEFAULTS["lr"], batch_size: int = STICKER_DEFAULTS["batch_size"], eot: EOT | None = None,
    printability: float = STICKER_DEFAULTS["printability"], smoothness: float = STICKER_DEFAULTS["smoothness"],
    palette: Sequence[Sequence[float]] = PRINTABLE_PALETTE, track: torch.Tensor | None = None,
    seed: int = STICKER_DEFAULTS["seed"], progress: bool = False,
) -> Sticker:
    """A universal RP2 sticker (Eykholt et al. 2018) for the images ``x`` (N, C, H, W) in [0, 1] with labels ``y``
    (usually every training image of one class; an int gives all images that label).

    ``mask``: a (1, H, W) tensor or a name of :data:`MASKS` with ``area`` (a fraction of the image area). Adam
    runs ``steps`` steps at ``lr`` on the sticker's pixels, minimising the mean attack loss over ``batch_size``
    images per step, each viewed through its own ``eot`` draw (default :class:`EOT`), plus ``printability``
    times :func:`non_printability` and ``smoothness`` times :func:`total_variation`. ``target``: a class to
    reach (RP2's targeted attack, e.g. stop -> speed limit 30) or None (any wrong class). ``track``: the
    images' track ids, kept so :func:`evaluate_on_tracks` refuses to measure on them.
    """
    y, _ = _check_common(model, x, y, target, steps, lr, batch_size, track)
    h, w = x.shape[-2:]
    name = mask if isinstance(mask, str) else "custom"
    mask = sticker_masks(mask, (h, w), area) if isinstance(mask, str) else _check_mask(mask, h, w)
    eot = EOT() if eot is None else eot

    def compose(xb: torch.Tensor, pixels: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return eot.apply(apply_sticker(xb, pixels, mask), params)

    pixels, history = _optimise(
        model, x, y, (x.shape[1], h, w), mask, compose, lambda n, g: eot.sample(n, (h, w), g), target, steps, lr,
        batch_size, printability, smoothness, palette, seed, progress, "sticker")
    protocol = {"kind": "sticker", "mask": name, "area_fraction": mask_area(mask), "requested_area": float(area)
                if name != "custom" else None, "image_size": [h, w], "eot": eot.describe(),
                **_common_protocol(x, y, track, target, steps, lr, batch_size, printability, smoothness, palette, seed),
                "reference": "Eykholt et al. 2018 (RP2); Athalye et al. 2018 (EOT); Sharif et al. 2016 (NPS, TV)"}
    tracks = None if track is None else tuple(sorted({int(t) for t in track.tolist()}))
    return Sticker(pixels.cpu(), mask.cpu(), eot, target, tracks, history, protocol)


def optimise_patch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fraction: float = UNIVERSAL_PATCH_DEFAULTS["fraction"],
    target: int | None = None, steps: int = UNIVERSAL_PATCH_DEFAULTS["steps"],
    lr: float = UNIVERSAL_PATCH_DEFAULTS["lr"], batch_size: int = UNIVERSAL_PATCH_DEFAULTS["batch_size"],
    placement: Placement | None = None, eot: EOT | None = None,
    printability: float = UNIVERSAL_PATCH_DEFAULTS["printability"],
    smoothness: float = UNIVERSAL_PATCH_DEFAULTS["smoothness"], palette: Sequence[Sequence[float]] = PRINTABLE_PALETTE,
    track: torch.Tensor | None = None, seed: int = UNIVERSAL_PATCH_DEFAULTS["seed"], progress: bool = False,
) -> Patch:
    """A universal adversarial patch (Brown et al. 2017) over training images of every class.

    A square of side ``round(sqrt(fraction * H * W))`` pixels (``fraction`` of the image area at scale 1) lands
    on each image by one :class:`Placement` draw (random location, rotation, scale) and the result is viewed
    through ``eot`` (default: the identity, as in the paper); Adam as in :func:`optimise_sticker`.
    ``target``: Brown's targeted patch (e.g. toward speed limit 30) or None (away from each image's label).
    """
    y, _ = _check_common(model, x, y, target, steps, lr, batch_size, track)
    h, w = x.shape[-2:]
    side = patch_side(fraction, h, w)
    placement = Placement() if placement is None else placement
    eot = EOT.identity() if eot is None else eot
    artefact = Patch(torch.zeros(x.shape[1], side, side), placement, eot)

    def compose(xb: torch.Tensor, pixels: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return eot.apply(place_patch(xb, pixels, params["patch_theta"]), params)

    pixels, history = _optimise(
        model, x, y, (x.shape[1], side, side), torch.ones(1, side, side), compose,
        lambda n, g: artefact.sample(n, (h, w), g), target, steps, lr, batch_size, printability, smoothness,
        palette, seed, progress, "patch")
    protocol = {"kind": "universal_patch", "fraction": float(fraction), "side_px": side,
                "area_fraction": side * side / (h * w), "image_size": [h, w], "placement": placement.describe(),
                "eot": eot.describe(),
                **_common_protocol(x, y, track, target, steps, lr, batch_size, printability, smoothness, palette, seed),
                "reference": "Brown et al. 2017 (Adversarial Patch)"}
    tracks = None if track is None else tuple(sorted({int(t) for t in track.tolist()}))
    return Patch(pixels.cpu(), placement, eot, target, tracks, history, protocol)


# ------------------------------------------------------------------------------------------- evaluation


def success_record(successes: int, n: int) -> dict[str, Any]:
    """``{"rate", "successes", "n", "ci95"}``: an attack success rate with its 95% Clopper-Pearson interval."""
    return {"rate": successes / n if n else 0.0, "successes": int(successes), "n": int(n),
            "ci95": list(clopper_pearson(successes, n))}


def _needed(level: str | int | float, m: torch.Tensor) -> torch.Tensor:
    """Frames a track with ``m`` counted frames needs to reach ``level``."""
    if level == "any":
        return torch.ones_like(m)
    if level == "half":
        return (m + 1) // 2
    if level == "all":
        return m
    if isinstance(level, int):
        return torch.full_like(m, level)
    return torch.ceil(level * m.double()).long().clamp_min(1)


def _check_levels(levels: Sequence[str | int | float]) -> list[str | int | float]:
    for level in levels:
        ok = level in LEVELS if isinstance(level, str) else \
            (level >= 1 if isinstance(level, int) and not isinstance(level, bool) else
             isinstance(level, float) and 0.0 < level <= 1.0)
        if not ok:
            raise InputError(f"track level must be 'any', 'half', 'all', a frame count >= 1 or a fraction in (0, 1], "
                             f"got {level!r}")
    return list(levels)


def _label(level: str | int | float) -> str:
    return level if isinstance(level, str) else str(level) if isinstance(level, int) else f"{100 * level:g}%"


def aggregate_tracks(counted: torch.Tensor, fooled: torch.Tensor, track: torch.Tensor,
                     levels: Sequence[str | int | float] = LEVELS) -> dict[str, Any]:
    """Per-frame outcomes to per-image and per-track success rates (the convention of :data:`CONVENTION`).

    ``counted`` (bool, N): the frame counts (read right clean, label not the target); ``fooled`` (bool, N): the
    attacked frame is misread (only counted frames are used). A level is ``"any"`` (1 frame), ``"half"``
    (ceil(m / 2) of m counted frames), ``"all"`` (m), an int (that many frames) or a fraction in (0, 1]
    (ceil(f m), at least 1). Returns ``per_image`` and ``per_track`` (level label -> :func:`success_record` over
    the tracks that count), ``tracks`` and ``tracks_evaluated``.
    """
    counted, fooled, track = counted.bool().cpu(), fooled.bool().cpu(), track.long().cpu()
    if not counted.shape == fooled.shape == track.shape or counted.ndim != 1:
        raise InputError(f"counted, fooled and track must be 1-D and of one length, got {tuple(counted.shape)}, "
                         f"{tuple(fooled.shape)} and {tuple(track.shape)}")
    hit = counted & fooled
    ids, inverse = torch.unique(track, return_inverse=True)
    m = torch.bincount(inverse, weights=counted.double(), minlength=len(ids)).long()
    k = torch.bincount(inverse, weights=hit.double(), minlength=len(ids)).long()
    live = m > 0
    per_track = {_label(level): success_record(int(((k >= _needed(level, m)) & live).sum()), int(live.sum()))
                 for level in _check_levels(levels)}
    return {"per_image": success_record(int(hit.sum()), int(counted.sum())), "per_track": per_track,
            "tracks": len(ids), "tracks_evaluated": int(live.sum())}


def _clean_tracks(correct: torch.Tensor, track: torch.Tensor, levels: Sequence[str | int | float]) -> dict[str, Any]:
    ids, inverse = torch.unique(track.long().cpu(), return_inverse=True)
    m = torch.bincount(inverse, minlength=len(ids))
    k = torch.bincount(inverse, weights=correct.cpu().double(), minlength=len(ids)).long()
    return {_label(level): accuracy_record(int((k >= _needed(level, m)).sum()), len(ids)) for level in levels}


def _views(model: nn.Module, x: torch.Tensor, artefact: Sticker | Patch, seed: int, batch_size: int,
           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predictions on the clean and attacked views of every frame (one seeded draw per frame, all drawn up front
    so the outcome does not depend on ``batch_size``), and the first batch's views."""
    device = model_device(model)
    params = artefact.sample(len(x), tuple(x.shape[-2:]), torch.Generator().manual_seed(int(seed)))
    clean, adv, shown = [], [], None
    with eval_mode(model), torch.no_grad():
        for i in tqdm(range(0, len(x), batch_size), desc="tracks", disable=not progress, leave=False):
            s = slice(i, i + batch_size)
            xc, xa = artefact.views(x[s].to(device), {k: v.to(device) for k, v in _slice(params, s).items()})
            clean.append(model(xc).argmax(1).cpu())
            adv.append(model(xa).argmax(1).cpu())
            shown = shown or (xc.cpu(), xa.cpu())
    return torch.cat(clean), torch.cat(adv), shown[0], shown[1]


def evaluate_on_tracks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, track: torch.Tensor, artefact: Sticker | Patch, *,
    levels: Sequence[str | int | float] = LEVELS, seed: int = 0, batch_size: int = 256,
    optimisation_tracks: Sequence[int] | torch.Tensor | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Success of an optimised sticker or patch over held-out whole tracks (:data:`CONVENTION`).

    ``x`` (N, C, H, W) in [0, 1], ``y`` labels and ``track`` ids per frame; each frame gets one EOT (and
    placement) draw from ``seed``. ``optimisation_tracks`` (default: the artefact's ``tracks``) must not share
    an id with ``track``. Returns a JSON-ready dict: ``clean`` (accuracy of the clean views, per frame),
    ``clean_tracks`` (per level: tracks with at least that many of their frames read right clean),
    ``per_image`` and ``per_track`` (:func:`success_record` per level), ``tracks``, ``tracks_evaluated``,
    ``frames``, ``target``, ``seed``, ``threat`` (the artefact's protocol) and ``convention``.
    """
    check_images(x, y, nonempty=True)
    if not isinstance(track, torch.Tensor) or track.shape != y.shape:
        raise InputError(f"track must be one id per frame ({len(y)}), got "
                         f"{tuple(track.shape) if isinstance(track, torch.Tensor) else type(track).__name__}")
    levels = _check_levels(levels)
    used = artefact.tracks if optimisation_tracks is None else optimisation_tracks
    if used is not None:
        shared = sorted({int(t) for t in (used.tolist() if isinstance(used, torch.Tensor) else used)}
                        & set(track.tolist()))
        if shared:
            raise InputError(f"the evaluation tracks overlap the sticker's optimisation tracks: {len(shared)} shared "
                             f"track id(s), e.g. {shared[:5]}; evaluate on held-out tracks")
    pred_clean, pred_adv, _, _ = _views(model, x, artefact, seed, batch_size, progress)
    y = y.cpu().long()
    target = artefact.target
    correct = pred_clean == y
    counted = correct & (y != target) if target is not None else correct
    out = aggregate_tracks(counted, _fooled(pred_adv, y, target), track, levels)
    return {"kind": artefact.protocol.get("kind"), "threat": artefact.protocol, "target": target,
            "frames": len(x), "clean": accuracy_record(int(correct.sum()), len(x)),
            "clean_tracks": _clean_tracks(correct, track, levels), **out, "seed": int(seed),
            "convention": CONVENTION}


def sticker_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, artefact: Sticker | Patch, n: int = 6,
                     seed: int = 0) -> dict[str, Any]:
    """Tensors for a figure: the first ``n`` frames' clean and attacked views (same draws as
    :func:`evaluate_on_tracks` with ``seed``), labels, both predictions, the artefact's pixels and mask."""
    check_images(x, y, nonempty=True)
    n = max(1, min(int(n), len(x)))
    pred_clean, pred_adv, clean, adv = _views(model, x[:n], artefact, seed, n)
    mask = artefact.mask if isinstance(artefact, Sticker) else torch.ones(1, *artefact.pixels.shape[-2:])
    return {"clean": clean, "adv": adv, "y": y[:n].cpu(), "pred_clean": pred_clean, "pred_adv": pred_adv,
            "pixels": artefact.pixels, "mask": mask, "target": artefact.target, "kind": artefact.protocol.get("kind")}
