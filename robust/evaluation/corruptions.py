"""Common corruptions (ImageNet-C / CIFAR-10-C) as a threat model, batched on tensors.

The 15 corruptions of D. Hendrycks & T. Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019, at severities 1..5, as implemented by the
``imagecorruptions`` package 1.1.2 (Michaelis et al. 2019) with the ImageNet-C constants, and by
``make_cifar_c.py`` (github.com/hendrycks/robustness) with the CIFAR-10-C constants; both Apache
License 2.0. ``corruptions_reference`` is the faithful per-image NumPy port (it lists the library
replacements and the few deviations); this module computes the same images for whole batches and
is tested against it at fixed seeds.

Protocol of ``corrupt``:
- Images are ``(N, C, H, W)`` floats in [0, 1], ``C`` = 1 or 3, ``H, W >= 8``. They are rounded to
  8 bits first (the benchmark corrupts 8-bit images) and the result is truncated to 8 bits, as the
  reference's ``np.uint8`` cast does; returned as ``k / 255`` in the input's dtype and device.
- Constants: CIFAR-10-C when both sides are at most 64 px, ImageNet-C otherwise.
- Grayscale images are stacked to RGB as imagecorruptions does, corrupted as RGB (same random
  draws) and the first channel is returned. The three channels stay equal except for the noises
  (drawn per channel, so one channel has the per-pixel noise of the definition), frost (the texture
  is coloured; its red channel is used) and JPEG (chroma rounding).
- Randomness: a ``numpy.random.RandomState(seed)`` private to the call makes the reference's draws
  in the reference's order, image 0 first; ``corrupt(x, ...)[i]`` is the reference applied to
  ``x[0], ..., x[i]`` in turn with one ``RandomState(seed)``. (A ``RandomState`` rather than a
  ``Generator``: it is the legacy ``np.random`` stream the reference and imagecorruptions use.)
- Per-pixel work runs in torch on the input's device (noise, blurs by convolution or shifts, zoom
  and elastic resampling, fog, snow, brightness, contrast, pixelate, the frost blend); the random
  draws, glass blur's sequential pixel swaps, the frost texture crops and JPEG run in NumPy/PIL.
  CPU and CUDA give the same images (checked on an H200 for all 75 conditions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from io import BytesIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import Tensor, nn
from tqdm.auto import tqdm

from robust.base.batching import check_images
from robust.base.runtime import eval_mode, model_device
from robust.base.stats import accuracy_record
from robust.evaluation import corruptions_reference as ref

CORRUPTIONS: tuple[str, ...] = ref.NAMES
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIDE = 8


def check_corruption(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Corruption ``name`` at ``severity`` (1..5) of images ``x`` (N, C, H, W) in [0, 1].

    Deterministic given ``seed``; see the module docstring for the protocol.
    """
    check_corruption(name, severity)
    check_images(x, channels=(1, 3), min_side=MIN_SIDE)
    return corrupt_with(x, name, severity, [np.random.RandomState(seed)] * len(x))


def corrupt_with(x: Tensor, name: str, severity: int, rngs: Sequence[np.random.RandomState]) -> Tensor:
    """``corrupt`` with image ``i`` drawing from ``rngs[i]`` (the same object may repeat)."""
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    u = torch.round(x.detach().to(torch.float64) * 255).permute(0, 2, 3, 1)
    u = u.expand(-1, -1, -1, 3).contiguous() if c == 1 else u.contiguous()
    out = _FUNCTIONS[name](u, ref.preset_for(h, w), severity, rngs)
    out = torch.floor(out.to(torch.float64).clamp(0, 255))[..., :c]
    return _div(out.permute(0, 3, 1, 2), 255).to(x.dtype).contiguous()


# ---------------------------------------------------------------- shared pieces

def _stack(arrays: Iterable[np.ndarray], device) -> Tensor:
    return torch.from_numpy(np.stack(list(arrays))).to(device)


def _div(a: Tensor, b: float) -> Tensor:
    """``a / b`` correctly rounded on every device, as NumPy's quotient: CUDA turns a division by a
    Python scalar into a product with its rounded reciprocal, one ulp off at times."""
    return torch.div(a, torch.as_tensor(b, dtype=a.dtype, device=a.device))


def _to_numpy(u: Tensor) -> np.ndarray:
    return u.to("cpu", torch.uint8).numpy()


def _mirror(i: Tensor, n: int) -> Tensor:
    """BORDER_REFLECT_101 / SciPy 'mirror' (edge not repeated), any number of reflections."""
    if n == 1:
        return torch.zeros_like(i)
    i = torch.remainder(i, 2 * (n - 1))
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def _symmetric(i: Tensor, n: int) -> Tensor:
    """SciPy 'reflect' (edge repeated), any number of reflections."""
    i = torch.remainder(i, 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _linear_axis(n_in: int, n_out: int):
    """Taps, weights and validity of ``scipy.ndimage.zoom(order=1)`` along one axis.

    SciPy maps output ``k`` to ``k * (n_in - 1) / (n_out - 1)``, weights the taps ``1 - t`` and
    ``1 - (1 - t)``, and (mode 'constant') returns 0 where rounding puts ``k`` past ``n_in - 1``.
    """
    zoom = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    cc = np.arange(n_out) * zoom
    start = np.floor(cc)
    w0 = 1.0 - (cc - start)
    i0 = np.minimum(start.astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), w0, 1.0 - w0, cc <= n_in - 1


def _zoom_linear(t: Tensor, out_h: int, out_w: int) -> Tensor:
    """``scipy.ndimage.zoom(t[i], (zh, zw, 1), order=1)`` for float64 ``t`` (N, h, w, C)."""
    dev = t.device
    y0, y1, wy0, wy1, vy = (torch.from_numpy(a).to(dev) for a in _linear_axis(t.shape[1], out_h))
    x0, x1, wx0, wx1, vx = (torch.from_numpy(a).to(dev) for a in _linear_axis(t.shape[2], out_w))
    wy0, wy1 = wy0[:, None, None], wy1[:, None, None]
    wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    r0, r1 = t[:, y0], t[:, y1]
    out = r0[:, :, x0] * wy0 * wx0
    out = out + r0[:, :, x1] * wy0 * wx1
    out = out + r1[:, :, x0] * wy1 * wx0
    out = out + r1[:, :, x1] * wy1 * wx1
    return torch.where((vy[:, None] & vx[None, :])[None, :, :, None], out, 0.0)


def _clipped_zoom(t: Tensor, zoom_factor: float) -> Tensor:
    h, w = t.shape[1:3]
    ch0 = int(np.ceil(h / float(zoom_factor)))
    top0 = (h - ch0) // 2
    ch1 = int(np.ceil(w / float(zoom_factor)))
    top1 = (w - ch1) // 2
    crop = t[:, top0:top0 + ch0, top1:top1 + ch1].to(torch.float64)
    out = _zoom_linear(crop, int(round(ch0 * zoom_factor)), int(round(ch1 * zoom_factor)))
    return out.to(t.dtype)


def _motion_blur(t: Tensor, radius: int, sigma: float, angles: Sequence[float]) -> Tensor:
    """imagecorruptions' ``_motion_blur`` of each ``t[i]`` (float64, N x h x w [x C]) at ``angles[i]``."""
    n, h, w = t.shape[:3]
    width = radius * 2 + 1
    kernel = ref.motion_kernel(radius, sigma)
    shifts = np.zeros((n, width, 2), dtype=np.int64)
    weights = np.zeros((n, width))
    for j, angle in enumerate(angles):
        point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
        hypot = math.hypot(point[0], point[1])
        for i in range(width):
            dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
            dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
            if abs(dy) >= h or abs(dx) >= w:
                break
            shifts[j, i] = dy, dx
            weights[j, i] = kernel[i]
    dev = t.device
    shifts_t, weights_t = torch.from_numpy(shifts).to(dev), torch.from_numpy(weights).to(dev)
    batch = torch.arange(n, device=dev)[:, None, None]
    rows, cols = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
    blurred = torch.zeros_like(t)
    for i in range(width):
        r = (rows - shifts_t[:, i, 0, None]).clamp(0, h - 1)
        c = (cols - shifts_t[:, i, 1, None]).clamp(0, w - 1)
        weight = weights_t[:, i].view(n, *([1] * (t.dim() - 1)))
        blurred = blurred + weight * t[batch, r[:, :, None], c[:, None, :]]
    return blurred


def _conv_mirror(x: Tensor, kernel: Tensor) -> Tensor:
    """``cv2.filter2D`` (correlation, BORDER_REFLECT_101) of each channel of NCHW float64 ``x``."""
    n, c, h, w = x.shape
    nonzero = torch.nonzero(kernel)
    r0 = kernel.shape[0] // 2
    r = int((nonzero - r0).abs().max()) if len(nonzero) else 0
    kernel = kernel[r0 - r:r0 + r + 1, r0 - r:r0 + r + 1]
    rows = _mirror(torch.arange(-r, h + r, device=x.device), h)
    cols = _mirror(torch.arange(-r, w + r, device=x.device), w)
    padded = x[:, :, rows][:, :, :, cols].reshape(1, n * c, h + 2 * r, w + 2 * r)
    weight = kernel[None, None].expand(n * c, 1, 2 * r + 1, 2 * r + 1)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def _fma32(a: Tensor, b: float, c: Tensor) -> Tensor:
    return (a.to(torch.float64) * float(np.float32(b)) + c.to(torch.float64)).to(torch.float32)


def _rgb2gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(-1)
    return _fma32(b, 0.114, _fma32(g, 0.587, r * float(np.float32(0.299))))


# ---------------------------------------------------------------- the 15 corruptions
# Each maps u (N, H, W, 3) float64 holding 0..255 integers to a float tensor on the 0..255 scale.

def _gaussian_noise(u, preset, severity, rngs):
    c = ref.constant("gaussian_noise", preset, severity)
    noise = _stack((r.normal(size=u.shape[1:], scale=c) for r in rngs), u.device)
    return (_div(u, 255) + noise).clamp(0, 1) * 255


def _shot_noise(u, preset, severity, rngs):
    c = ref.constant("shot_noise", preset, severity)
    x = _to_numpy(u) / 255.
    counts = _stack((r.poisson(xi * c) for r, xi in zip(rngs, x)), u.device)
    return _div(counts.to(torch.float64), float(c)).clamp(0, 1) * 255


def _impulse_noise(u, preset, severity, rngs):
    c = ref.constant("impulse_noise", preset, severity)
    shape = u.shape[1:]
    draws = [(r.choice([True, False], size=shape, p=[c, 1 - c]),
              r.choice([True, False], size=shape, p=[0.5, 0.5])) for r in rngs]
    flipped = _stack((d[0] for d in draws), u.device)
    salted = _stack((d[1] for d in draws), u.device)
    x = torch.where(flipped & salted, 1.0, _div(u, 255))
    return torch.where(flipped & ~salted, 0.0, x).clamp(0, 1) * 255


def _defocus_blur(u, preset, severity, rngs):
    radius, alias_blur = ref.constant("defocus_blur", preset, severity)
    kernel = torch.from_numpy(ref.disk(radius, alias_blur).astype(np.float64)).to(u.device)
    out = _conv_mirror(_div(u, 255).permute(0, 3, 1, 2), kernel).permute(0, 2, 3, 1)
    return out.clamp(0, 1) * 255


def _glass_blur(u, preset, severity, rngs):
    """NumPy: the swaps are sequential, each copying ``x[h', w']`` onto ``x[h, w]`` (see the reference)."""
    sigma, delta, iterations = ref.constant("glass_blur", preset, severity)
    smooth = (0, sigma, sigma, 0)
    x = np.uint8(ndimage.gaussian_filter(_to_numpy(u) / 255., smooth, mode="nearest", truncate=4.0) * 255)
    n, h, w = x.shape[:3]
    positions = [(hh, ww) for hh in range(h - delta, delta, -1) for ww in range(w - delta, delta, -1)]
    offsets = np.stack([r.randint(-delta, delta, size=(iterations * len(positions), 2)) for r in rngs])
    batch = np.arange(n)
    k = 0
    for _ in range(iterations):
        for hh, ww in positions:
            x[batch, hh, ww] = x[batch, hh + offsets[:, k, 1], ww + offsets[:, k, 0]]
            k += 1
    out = ndimage.gaussian_filter(x / 255., smooth, mode="nearest", truncate=4.0)
    return torch.from_numpy(np.clip(out, 0, 1) * 255).to(u.device)


def _motion(u, preset, severity, rngs):
    radius, sigma = ref.constant("motion_blur", preset, severity)
    angles = [r.uniform(-45, 45) for r in rngs]
    return _motion_blur(u, radius, sigma, angles).clamp(0, 255)


def _zoom_blur(u, preset, severity, rngs):
    factors = ref.zoom_factors(preset, severity)
    h, w = u.shape[1:3]
    x = _div(u, 255).to(torch.float32)
    out = torch.zeros_like(x)
    for zoom_factor in factors:
        out = out + _clipped_zoom(x, zoom_factor)[:, :h, :w]
    return _div(x + out, len(factors) + 1).clamp(0, 1) * 255


def _snow(u, preset, severity, rngs):
    loc, scale, zoom, threshold, radius, sigma, blend = ref.constant("snow", preset, severity)
    h, w = u.shape[1:3]
    draws = [(r.normal(size=(h, w), loc=loc, scale=scale), r.uniform(-135, -45)) for r in rngs]
    layer = _clipped_zoom(_stack((d[0] for d in draws), u.device)[..., None], zoom)
    layer = torch.where(layer < threshold, 0.0, layer).clamp(0, 1)[..., 0]
    layer = _motion_blur(layer, radius, sigma, [d[1] for d in draws])
    layer = _div(torch.round(layer * 255), 255)[:, :h, :w, None]
    x = _div(u.to(torch.float32), 255)
    x = blend * x + (1 - blend) * torch.maximum(x, _rgb2gray(x)[..., None] * 1.5 + 0.5)
    return (x.to(torch.float64) + layer + torch.flip(layer, dims=(1, 2))).clamp(0, 1) * 255


def _frost(u, preset, severity, rngs):
    a, b = ref.constant("frost", preset, severity)
    layers = [ref.frost_layer(r.randint(5), u.shape[1:3], preset, r) for r in rngs]
    return (a * u + b * _stack(layers, u.device).to(torch.float64)).clamp(0, 255)


def _plasma_schedule(mapsize: int, decay: float) -> list[tuple[int, float]]:
    """(side, wibble) of the three uniform draws per level of ``ref.plasma_fractal``."""
    out, stepsize, wibble = [], mapsize, 100
    while stepsize >= 2:
        out += [(mapsize // stepsize, wibble)] * 3
        stepsize //= 2
        wibble /= decay
    return out


def _plasma(draws: Sequence[Tensor], mapsize: int, decay: float, n: int, device) -> Tensor:
    """``ref.plasma_fractal`` for ``n`` maps at once from the pre-drawn uniforms."""
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64, device=device)
    step, wibble, k = mapsize, 100, 0
    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + torch.roll(corner, -1, 1)
        square = square + torch.roll(square, -1, 2)
        m[:, half::step, half::step] = square / 4 + wibble * draws[k]
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        lt = (dr + torch.roll(dr, 1, 1)) + (ul + torch.roll(ul, -1, 2))
        m[:, 0::step, half::step] = lt / 4 + wibble * draws[k + 1]
        tt = (dr + torch.roll(dr, 1, 2)) + (ul + torch.roll(ul, -1, 1))
        m[:, half::step, 0::step] = tt / 4 + wibble * draws[k + 2]
        step, wibble, k = step // 2, wibble / decay, k + 3
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def _fog(u, preset, severity, rngs):
    strength, decay = ref.constant("fog", preset, severity)
    n, h, w = u.shape[:3]
    mapsize = ref.next_power_of_2(max(h, w, 3))
    schedule = _plasma_schedule(mapsize, decay)
    per_image = [[r.uniform(-wb, wb, (side, side)) for side, wb in schedule] for r in rngs]
    draws = [_stack((d[k] for d in per_image), u.device) for k in range(len(schedule))]
    plasma = _plasma(draws, mapsize, decay, n, u.device)
    x = _div(u, 255)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + strength * plasma[:, :h, :w, None]
    return (x * max_val / (max_val + strength)).clamp(0, 1) * 255


def _rgb2hsv(x: Tensor) -> Tensor:
    """scikit-image 0.17 ``rgb2hsv`` (later channel wins ties for the hue)."""
    r, g, b = x.unbind(-1)
    v = x.amax(-1)
    delta = v - x.amin(-1)
    s = torch.where(delta == 0, 0.0, delta / v)
    h = torch.where(b == v, 4. + (r - g) / delta, torch.where(g == v, 2. + (b - r) / delta, (g - b) / delta))
    h = torch.fmod(_div(h, 6.), 1.)
    h = torch.where(h < 0, h + 1., h)
    h = torch.where(delta == 0, 0.0, h)
    out = torch.stack([h, s, v], -1)
    return torch.where(torch.isnan(out), 0.0, out)


def _hsv2rgb(hsv: Tensor) -> Tensor:
    """scikit-image 0.17 ``hsv2rgb``."""
    h, s, v = hsv.unbind(-1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    options = torch.stack([torch.stack(o, -1) for o in
                           ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], -2)
    index = (hi.to(torch.uint8) % 6).long()[..., None, None].expand(*hi.shape, 1, 3)
    return options.gather(-2, index)[..., 0, :]


def _brightness(u, preset, severity, rngs):
    c = ref.constant("brightness", preset, severity)
    hsv = _rgb2hsv(_div(u, 255))
    hsv = torch.cat([hsv[..., :2], (hsv[..., 2:] + c).clamp(0, 1)], -1)
    return _hsv2rgb(hsv).clamp(0, 1) * 255


def _contrast(u, preset, severity, rngs):
    """Channel means summed pixel by pixel in order, as NumPy does (cumsum is sequential on CPU)."""
    c = ref.constant("contrast", preset, severity)
    n, h, w = u.shape[:3]
    x = _div(u, 255)
    means = _div(torch.cumsum(x.reshape(n, h * w, 3), dim=1)[:, -1].reshape(n, 1, 1, 3), h * w)
    return ((x - means) * c + means).clamp(0, 1) * 255


def _resample(img: Tensor, dy: np.ndarray, dx: np.ndarray) -> Tensor:
    """``map_coordinates(order=1, mode='reflect')`` at ``(y + dy, x + dx)`` per channel; float32 in/out."""
    n, h, w = img.shape[:3]
    dev = img.device
    cy = torch.arange(h, device=dev)[None, :, None] + torch.from_numpy(dy).to(dev).to(torch.float64)
    cx = torch.arange(w, device=dev)[None, None, :] + torch.from_numpy(dx).to(dev).to(torch.float64)
    fy, fx = torch.floor(cy), torch.floor(cx)
    wy0, wx0 = (1.0 - (cy - fy))[..., None], (1.0 - (cx - fx))[..., None]
    wy1, wx1 = 1.0 - wy0, 1.0 - wx0
    fy, fx = fy.long(), fx.long()
    y0, y1, x0, x1 = _symmetric(fy, h), _symmetric(fy + 1, h), _symmetric(fx, w), _symmetric(fx + 1, w)
    v = img.to(torch.float64)
    batch = torch.arange(n, device=dev)[:, None, None]
    out = v[batch, y0, x0] * wy0 * wx0
    out = out + v[batch, y0, x1] * wy0 * wx1
    out = out + v[batch, y1, x0] * wy1 * wx0
    out = out + v[batch, y1, x1] * wy1 * wx1
    return out.to(torch.float32)


def _warp(img: Tensor, grids: Sequence[tuple[np.ndarray, ...]]) -> Tensor:
    """``cv2.warpAffine`` bilinear sampling (float32, BORDER_REFLECT_101) on per-image grids."""
    n, h, w = img.shape[:3]
    dev = img.device
    sy, sx, ay, ax = (torch.from_numpy(np.stack([g[k] for g in grids])).to(dev) for k in range(4))
    fy, fx = (ay.to(torch.float32) / 32)[..., None], (ax.to(torch.float32) / 32)[..., None]
    y0, y1, x0, x1 = _mirror(sy, h), _mirror(sy + 1, h), _mirror(sx, w), _mirror(sx + 1, w)
    batch = torch.arange(n, device=dev)[:, None, None]
    return (img[batch, y0, x0] * ((1 - fy) * (1 - fx)) + img[batch, y0, x1] * ((1 - fy) * fx)
            + img[batch, y1, x0] * (fy * (1 - fx)) + img[batch, y1, x1] * (fy * fx))


def _elastic_transform(u, preset, severity, rngs):
    n, h, w = u.shape[:3]
    img = _div(u.to(torch.float32), 255)
    if preset == ref.CIFAR:
        alpha, sigma, affine = (h * f for f in ref.constant("elastic_transform", preset, severity))
        pts1 = ref.affine_points((h, w))
        grids, fields = [], []
        for r in rngs:
            pts2 = pts1 + r.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
            grids.append(ref.warp_affine_grid(ref._get_affine_transform(pts1, pts2), h, w))
            fields.append((r.uniform(-1, 1, size=(h, w)), r.uniform(-1, 1, size=(h, w))))
        img = _warp(img, grids)
        sigma = (0, sigma, sigma)
    else:
        alpha = ref.constant("elastic_transform", preset, severity)
        sigma = (0,) + tuple(np.array((h, w)) * 0.01)
        max_d = h * 0.005
        fields = [(r.uniform(-max_d, max_d, size=(h, w)), r.uniform(-max_d, max_d, size=(h, w))) for r in rngs]
    dx, dy = (
        (ndimage.gaussian_filter(np.stack([f[k] for f in fields]), sigma, mode="reflect", truncate=3)
         * alpha).astype(np.float32)
        for k in (0, 1))
    return _resample(img, dy, dx).clamp(0, 1) * 255


def _pil_box_weights(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's BOX resampling matrix (n_out, n_in) in its 8-bit fixed point (22 fractional bits)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    out = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        ws = [1.0 if -0.5 < (x + xmin - center + 0.5) * (1.0 / filterscale) <= 0.5 else 0.0 for x in range(xmax)]
        total = sum(ws)
        for x, wgt in enumerate(ws):
            k = wgt / total if total != 0.0 else wgt
            out[xx, xmin + x] = int(0.5 + k * (1 << 22)) if k >= 0 else int(-0.5 + k * (1 << 22))
    return out


def _pil_box(u: Tensor, out_h: int, out_w: int) -> Tensor:
    """``Image.resize(..., BOX)`` of 8-bit values: horizontal pass, then vertical, each rounded."""
    if out_w != u.shape[2]:
        k = torch.from_numpy(_pil_box_weights(u.shape[2], out_w)).to(u.device)
        u = torch.floor((torch.einsum("nhwc,ow->nhoc", u, k) + (1 << 21)) / (1 << 22)).clamp(0, 255)
    if out_h != u.shape[1]:
        k = torch.from_numpy(_pil_box_weights(u.shape[1], out_h)).to(u.device)
        u = torch.floor((torch.einsum("nhwc,oh->nowc", u, k) + (1 << 21)) / (1 << 22)).clamp(0, 255)
    return u


def _pil_nearest_index(n_in: int, n_out: int) -> list[int]:
    """Source indices of Pillow's NEAREST resize (its incremental affine scan)."""
    step = n_in / n_out
    pos, out = step * 0.5, []
    for _ in range(n_out):
        out.append(int(pos) if pos >= 0 else -1)
        pos += step
    return out


def _pixelate(u, preset, severity, rngs):
    c = ref.constant("pixelate", preset, severity)
    h, w = u.shape[1:3]
    small = _pil_box(u, int(h * c), int(w * c))
    if preset == ref.CIFAR:
        return _pil_box(small, h, w)
    rows = torch.tensor(_pil_nearest_index(small.shape[1], h), device=u.device)
    cols = torch.tensor(_pil_nearest_index(small.shape[2], w), device=u.device)
    return small[:, rows][:, :, cols]


def _jpeg(u, preset, severity, rngs):
    quality = ref.constant("jpeg_compression", preset, severity)
    out = []
    for img in _to_numpy(u):
        buffer = BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out.append(np.asarray(decoded.convert("RGB")))
    return _stack(out, u.device).to(torch.float64)


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion,
    "zoom_blur": _zoom_blur, "snow": _snow, "frost": _frost, "fog": _fog,
    "brightness": _brightness, "contrast": _contrast, "elastic_transform": _elastic_transform,
    "pixelate": _pixelate, "jpeg_compression": _jpeg,
}


# ---------------------------------------------------------------- evaluation

def _batches(data, batch_size: int):
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
    else:
        for batch in data:
            yield batch[0], batch[1]


def accuracy_under(model: nn.Module, data, conditions: Sequence[tuple[str, int]],
                   transform: Callable[[Tensor, str, int, int], Tensor], batch_size: int, progress: bool,
                   desc: str) -> tuple[int, int, tuple[int, ...] | None, dict[tuple[str, int], int]]:
    """``(clean correct, n, image shape, {(name, severity): correct})`` of ``model`` on ``data`` (``(x, y)``
    tensors or a loader) and on ``transform(x, name, severity, start)`` of every batch, where ``start`` is the
    index of the batch's first example (so that per-example draws do not depend on ``batch_size``). The model
    runs in eval mode under ``torch.no_grad()`` on its own device and is put back in its former mode."""
    device = model_device(model)
    correct: dict[tuple[str, int], int] = {}
    clean = n = 0
    shape = None
    with eval_mode(model), torch.no_grad():
        for x, y in _batches(data, batch_size):
            check_images(x, channels=(1, 3), min_side=MIN_SIDE)
            shape = tuple(x.shape[1:])
            clean += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            n += len(x)
        bar = tqdm(total=len(conditions), desc=desc, disable=not progress)
        for name, s in conditions:
            hits, i = 0, 0
            for x, y in _batches(data, batch_size):
                hits += int((model(transform(x, name, s, i).to(device)).argmax(1) == y.to(device)).sum())
                i += len(x)
            correct[name, s] = hits
            bar.set_postfix_str(f"{name} {s}: {hits / max(n, 1):.3f}")
            bar.update()
        bar.close()
    return clean, n, shape, correct


def evaluate_corruptions(
    model: nn.Module,
    data,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Clean and corrupted accuracy of ``model`` on ``data`` (``(x, y)`` tensors or a loader of them).

    Example ``i`` (in the order ``data`` yields them) under corruption ``name`` at severity ``s``
    draws from ``RandomState([seed, CORRUPTIONS.index(name), s, i])``, so the result does not depend
    on ``batch_size`` nor on which other corruptions are evaluated. The model runs in eval mode under
    ``torch.no_grad()`` on its own device and is put back in its former mode. Returns a
    JSON-serialisable dict; accuracies are ``stats.accuracy_record``s, ``mean_corruption_accuracy``
    and each ``per_corruption[name]["mean"]`` are plain means over the conditions.
    """
    corruptions, severities = list(corruptions), [int(s) for s in severities]
    if not corruptions or not severities:
        raise ValueError("need at least one corruption and one severity")
    if len(set(corruptions)) < len(corruptions) or len(set(severities)) < len(severities):
        raise ValueError(f"repeated corruption or severity in {corruptions} x {severities}")
    for name in corruptions:
        for s in severities:
            check_corruption(name, s)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    start = time.perf_counter()

    def corrupted(x: Tensor, name: str, s: int, first: int) -> Tensor:
        k = CORRUPTIONS.index(name)
        return corrupt_with(x.to(model_device(model)), name, s,
                            [np.random.RandomState([seed, k, s, first + j]) for j in range(len(x))])

    clean, n, shape, correct = accuracy_under(model, data, [(c, s) for c in corruptions for s in severities],
                                              corrupted, batch_size, progress, "corruptions")
    per_corruption = {
        name: {"mean": float(np.mean([correct[name, s] / n for s in severities])) if n else 0.0,
               "per_severity": {str(s): accuracy_record(correct[name, s], n) for s in severities}}
        for name in corruptions}
    h, w = shape[1:] if shape else (0, 0)
    return {
        "threat": {"kind": "corruptions", "severities": severities, "corruptions": corruptions},
        "n_examples": n,
        "clean": accuracy_record(clean, n),
        "mean_corruption_accuracy": float(np.mean([v["mean"] for v in per_corruption.values()])),
        "per_corruption": per_corruption,
        "protocol": {
            "seed": seed,
            "constants": ref.preset_for(h, w),
            "image_size": [h, w],
            "channels": shape[0] if shape else 0,
            "rng": "numpy RandomState([seed, corruption index, severity, example index])",
            "quantization": "inputs rounded to 8 bits, outputs truncated to 8 bits",
            "reference": "Hendrycks & Dietterich 2019 (CIFAR-10-C constants); imagecorruptions 1.1.2",
        },
        "seconds": time.perf_counter() - start,
    }
