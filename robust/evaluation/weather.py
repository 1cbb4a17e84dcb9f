"""Driving weather and light as a threat model: rain, snow, fog, sun flare, shadow and night, 5 severities each.

The effects are albumentations 2.0.8's (A. Buslaev et al., "Albumentations: Fast and Flexible Image
Augmentations", Information 11(2):125, 2020; MIT licence), most of them after the Automold road-weather
library (U. Saxena, 2018): ``RandomRain``; ``RandomSnow`` (bleach method: dark pixels lightened, the
Automold snow cover) with falling flakes drawn by ``RandomRain`` as short white strokes; ``RandomFog``;
``RandomSunFlare`` (physics-based method: a blurred sun disc, screen-blended); ``RandomShadow``; and
for night ``RandomGamma`` + ``RandomBrightnessContrast`` (exposure) + ``ISONoise`` + ``GaussNoise``
(sensor noise). Why this library: it is the one well-kept library with all six (kornia is torch-native
but has no fog and no sun flare), it works on 8-bit images with OpenCV, and 2.0.8 is the last release
under the MIT licence (its successor albumentationsx is under another licence). Not used:
``RandomSnow(method="texture")``, which in 2.0.8 adds its texture to hue and saturation as well as
value and wraps past 255 (black patches), and ``RandomSunFlare(method="overlay")``, whose 1-8 px rings
vanish on small images. The severity tables below are ours, not a published benchmark's: severity 1
is a light shower, 5 a storm; severity 5 changes an image more than 1 (tested), and
``robust.reports.evaluation.plot_weather_grid`` shows them. This group is reported apart from the 15
ImageNet-C corruptions (``robust.evaluation.corruptions``), whose documented mean it leaves unchanged.

Protocol of ``weather``:
- Images are ``(N, C, H, W)`` floats in [0, 1], ``C`` = 1 or 3, ``H, W >= 8``; they are rounded to 8 bits
  (the library works on 8-bit images) and the result is rounded to 8 bits, returned as ``k / 255`` in the
  input's dtype and device.
- Scale: the library draws in pixel units (1 px rain lines, 15 px flare blur, blur kernels of 3 px and
  more, drop counts proportional to the height). Every effect but night is therefore rendered on the image
  enlarged by an integer factor ``k`` (pixel replication) so that its short side is at least
  ``WORK_SIDE`` = 128 px, with every length in the tables a fraction of that side, and averaged back over
  each ``k x k`` block (a camera pixel integrates the light that falls on it); a pixel the effect leaves
  alone comes back exactly. A 32x32 GTSRB sign is drawn at 128x128, an 8x8 digit at 128x128. Night is per
  pixel and runs at the native size, so its sensor noise has the stated per-pixel standard deviation.
- Grayscale images are stacked to RGB, corrupted as RGB and returned as luminance
  (0.299 R + 0.587 G + 0.114 B); night's Gaussian noise is then the same in the three channels.
- Randomness: image ``i`` of the data set (``start + j`` for row ``j`` of ``x``) under weather ``name`` at
  ``severity`` draws from ``numpy.random.SeedSequence([seed, WEATHER.index(name), severity, i])``, one child
  seed per library transform; results depend neither on the batch size nor on the other images.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robust.base.batching import check_images
from robust.base.errors import InputError
from robust.base.stats import accuracy_record
from robust.evaluation.corruptions import accuracy_under

__all__ = ["WEATHER", "SEVERITIES", "WORK_SIDE", "WeatherError", "check_weather", "weather", "weather_settings",
           "image_seeds", "evaluate_weather"]

WEATHER: tuple[str, ...] = ("rain", "snow", "fog", "flare", "shadow", "night")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
WORK_SIDE = 128  # px, short side of the image the effects are drawn on
MIN_SIDE = 8


class WeatherError(InputError, ValueError):
    """A bad weather name, severity or seed."""


def check_weather(name: str, severity: int) -> None:
    if name not in WEATHER:
        raise WeatherError(f"unknown weather {name!r}; valid: {', '.join(WEATHER)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise WeatherError(f"weather severity must be an integer in 1..5, got {severity!r}")


def _check_seed(seed: Any, field: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WeatherError(f"{field} must be a non-negative integer, got {seed!r}")
    return int(seed)


# ------------------------------------------------------------------------------------ severity tables
# Lengths are fractions of the working image's short side (>= WORK_SIDE px); a tuple of 5 is indexed by severity - 1.
# ISONoise's default ranges (color_shift 0.01-0.05, intensity 0.1-0.5) are spread over the 5 severities; RandomFog's
# fog_coef starts at 0.5 within its default (0.3, 1) (its particle count grows as 1 / fog_coef), with alpha_coef
# around its default 0.08. Night's exposure is the factor of RandomBrightnessContrast's contrast term (alpha),
# its noise_std a fraction of full scale per pixel.

_RAIN = {
    "rain_type": ("drizzle", "default", "heavy", "heavy", "torrential"),  # drops: H/4, H/3, H, H, 2H
    "drop_length": (0.06, 0.08, 0.10, 0.12, 0.14),
    "drop_width": (1 / 128, 1 / 128, 1 / 128, 2 / 128, 2 / 128),
    "blur": 2 / 128,
    "slant": 0.04,  # horizontal offset of a drop's end, +- this fraction
    "brightness_coefficient": (0.95, 0.9, 0.85, 0.8, 0.7),
}
_SNOW = {"snow_point": (0.1, 0.2, 0.3, 0.4, 0.5), "brightness_coeff": (1.3, 1.5, 1.7, 1.9, 2.1),
         "flakes": ("drizzle", "default", "heavy", "heavy", "torrential"),  # flakes: H/4, H/3, H, H, 2H
         "flake_length": 1 / 128, "flake_drift": 1 / 128,
         "flake_width": (2 / 128, 2 / 128, 3 / 128, 3 / 128, 3 / 128), "flake_blur": 2 / 128}
_FOG = {"fog_coef": (0.5, 0.6, 0.7, 0.85, 1.0), "alpha_coef": (0.04, 0.06, 0.08, 0.09, 0.1)}
_FLARE = {"src_radius": (0.15, 0.2, 0.25, 0.3, 0.35), "src_level": (0.55, 0.7, 0.8, 0.9, 1.0),
          "circles": ((6, 10),) * 5, "roi": (0.0, 0.0, 1.0, 1.0)}
_SHADOW = {"intensity": (0.25, 0.4, 0.55, 0.7, 0.85), "shadows": ((1, 1), (1, 1), (1, 2), (2, 2), (2, 3)),
           "vertices": 5, "roi": (0.0, 0.0, 1.0, 1.0)}
_NIGHT = {"gamma": (1.1, 1.2, 1.3, 1.4, 1.5), "exposure": (0.8, 0.65, 0.5, 0.4, 0.3),
          "iso_intensity": (0.1, 0.2, 0.3, 0.4, 0.5), "iso_color_shift": (0.01, 0.02, 0.03, 0.04, 0.05),
          "noise_std": (0.02, 0.03, 0.04, 0.05, 0.06)}


def weather_settings(name: str, severity: int) -> dict[str, Any]:
    """The severity table's row for ``name`` at ``severity`` (fractions of the working side), for the protocol."""
    check_weather(name, severity)
    k = severity - 1
    table = {"rain": _RAIN, "snow": _SNOW, "fog": _FOG, "flare": _FLARE, "shadow": _SHADOW, "night": _NIGHT}[name]
    return {key: (v[k] if isinstance(v, tuple) and len(v) == 5 else v) for key, v in table.items()}


@dataclass(frozen=True)
class _Plan:
    transforms: tuple[Any, ...]
    factor: int  # the working image is the input enlarged k times


def _px(fraction: float, side: int) -> int:
    return max(1, round(fraction * side))


def _albumentations():
    """The library, imported without its update check (which asks the package index on import)."""
    if "albumentations" not in sys.modules and "NO_ALBUMENTATIONS_UPDATE" not in os.environ:
        os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
        try:
            import albumentations
        finally:
            del os.environ["NO_ALBUMENTATIONS_UPDATE"]
        return albumentations
    import albumentations

    return albumentations


def _plan(name: str, severity: int, h: int, w: int, channels: int) -> _Plan:
    A = _albumentations()

    s = weather_settings(name, severity)
    if name == "night":
        return _Plan((
            A.RandomGamma(gamma_limit=(100 * s["gamma"],) * 2, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(s["exposure"] - 1,) * 2, p=1.0),
            A.ISONoise(color_shift=(s["iso_color_shift"],) * 2, intensity=(s["iso_intensity"],) * 2, p=1.0),
            A.GaussNoise(std_range=(s["noise_std"],) * 2, per_channel=channels == 3, p=1.0),
        ), 1)
    factor = max(1, -(-WORK_SIDE // min(h, w)))
    side = min(h, w) * factor
    if name == "rain":
        slant = min(45.0, s["slant"] * side)
        t = A.RandomRain(slant_range=(-slant, slant), drop_length=_px(s["drop_length"], side),
                         drop_width=_px(s["drop_width"], side), blur_value=_px(s["blur"], side),
                         brightness_coefficient=s["brightness_coefficient"], rain_type=s["rain_type"], p=1.0)
    elif name == "snow":
        drift = s["flake_drift"] * side
        return _Plan((
            A.RandomSnow(snow_point_range=(s["snow_point"],) * 2, brightness_coeff=s["brightness_coeff"],
                         method="bleach", p=1.0),
            A.RandomRain(slant_range=(-drift, drift), drop_length=_px(s["flake_length"], side),
                         drop_width=_px(s["flake_width"], side), drop_color=(255, 255, 255),
                         blur_value=_px(s["flake_blur"], side), brightness_coefficient=1.0, rain_type=s["flakes"],
                         p=1.0)), factor)
    elif name == "fog":
        t = A.RandomFog(fog_coef_range=(s["fog_coef"],) * 2, alpha_coef=s["alpha_coef"], p=1.0)
    elif name == "flare":
        t = A.RandomSunFlare(flare_roi=s["roi"], src_radius=_px(s["src_radius"], side),
                             src_color=(round(255 * s["src_level"]),) * 3, num_flare_circles_range=s["circles"],
                             method="physics_based", p=1.0)
    else:
        t = A.RandomShadow(shadow_roi=s["roi"], num_shadows_limit=s["shadows"], shadow_dimension=s["vertices"],
                           shadow_intensity_range=(s["intensity"],) * 2, p=1.0)
    return _Plan((t,), factor)


def _apply(plan: _Plan, img: np.ndarray, seeds: np.ndarray, gray: bool) -> np.ndarray:
    """One uint8 (H, W, 3) image through the plan; float64 (H, W, C) on the 0..255 scale."""
    k = plan.factor
    if k > 1:
        img = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
    for t, s in zip(plan.transforms, seeds):
        t.set_random_seed(int(s))
        img = t(image=img)["image"]
    out = img.astype(np.float64)
    if k > 1:
        h, w = out.shape[0] // k, out.shape[1] // k
        out = out.reshape(h, k, w, k, 3).mean(axis=(1, 3))
    if gray:
        out = (out @ np.array([0.299, 0.587, 0.114]))[..., None]
    return out


def image_seeds(seed: int, name: str, severity: int, index: int, count: int) -> np.ndarray:
    """``count`` seeds for the library transforms of image ``index`` (see the module docstring)."""
    return np.random.SeedSequence([seed, WEATHER.index(name), severity, index]).generate_state(count)


def weather(x: Tensor, name: str, severity: int, seed: int = 0, start: int = 0) -> Tensor:
    """Weather ``name`` at ``severity`` (1..5) on images ``x`` (N, C, H, W) in [0, 1]; row ``j`` is image
    ``start + j`` of the data set for its random draws (see the module docstring)."""
    check_weather(name, severity)
    seed, start = _check_seed(seed), _check_seed(start, "start")
    check_images(x, channels=(1, 3), min_side=MIN_SIDE)
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    plan = _plan(name, severity, h, w, c)
    u = torch.round(x.detach().to("cpu", torch.float64).clamp(0, 1) * 255).to(torch.uint8)
    u = u.permute(0, 2, 3, 1).numpy()
    if c == 1:
        u = np.repeat(u, 3, axis=3)
    out = np.stack([_apply(plan, np.ascontiguousarray(u[j]),
                           image_seeds(seed, name, severity, start + j, len(plan.transforms)), c == 1)
                    for j in range(n)])
    out = np.clip(np.round(out), 0, 255) / 255
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype).contiguous()


# ---------------------------------------------------------------------------------------- evaluation

def evaluate_weather(
    model: nn.Module,
    data,
    names: Sequence[str] = WEATHER,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Clean and weather accuracy of ``model`` on ``data`` (``(x, y)`` tensors or a loader of them).

    The structure of :func:`robust.evaluation.corruptions.evaluate_corruptions`'s report, under its own
    keys: ``per_weather[name]`` holds ``per_severity`` accuracy records (95% Clopper-Pearson intervals) and
    their plain ``mean``; ``mean_weather_accuracy`` is the mean over the weathers. Example ``i`` (in the order
    ``data`` yields them) draws as in :func:`weather` with ``start = i``, so the result does not depend on
    ``batch_size``. The model runs in eval mode under ``torch.no_grad()`` and is put back in its former mode.
    """
    names, severities = list(names), list(severities)
    if not names or not severities:
        raise WeatherError("need at least one weather and one severity")
    if len(set(names)) < len(names) or len(set(map(str, severities))) < len(severities):
        raise WeatherError(f"repeated weather or severity in {names} x {severities}")
    for name in names:
        for s in severities:
            check_weather(name, s)
    severities = [int(s) for s in severities]
    seed = _check_seed(seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise WeatherError(f"batch_size must be a positive integer, got {batch_size!r}")
    begin = time.perf_counter()
    clean, n, shape, correct = accuracy_under(
        model, data, [(w, s) for w in names for s in severities],
        lambda x, name, s, first: weather(x, name, s, seed=seed, start=first), batch_size, progress, "weather")
    per_weather = {
        name: {"mean": float(np.mean([correct[name, s] / n for s in severities])) if n else 0.0,
               "per_severity": {str(s): accuracy_record(correct[name, s], n) for s in severities}}
        for name in names}
    h, w = shape[1:] if shape else (0, 0)
    return {
        "threat": {"kind": "weather", "severities": severities, "weather": names},
        "n_examples": n,
        "clean": accuracy_record(clean, n),
        "mean_weather_accuracy": float(np.mean([v["mean"] for v in per_weather.values()])),
        "per_weather": per_weather,
        "protocol": {
            "seed": seed,
            "image_size": [h, w],
            "channels": shape[0] if shape else 0,
            "library": f"albumentations {_albumentations().__version__}",
            "work_side": WORK_SIDE,
            "settings": {name: {str(s): weather_settings(name, s) for s in severities} for name in names},
            "rng": "numpy SeedSequence([seed, weather index, severity, example index]), one child per transform",
            "quantization": "inputs and outputs rounded to 8 bits",
        },
        "seconds": time.perf_counter() - begin,
    }
