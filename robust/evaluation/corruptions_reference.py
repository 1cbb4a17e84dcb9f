"""Per-image NumPy reference of the 15 common corruptions: the ground truth of ``corruptions.py``.

A port of ``imagecorruptions`` 1.1.2 (``corruptions.py``; E. Michaelis et al., "Benchmarking
Robustness in Object Detection: Autonomous Driving when Winter is Coming", 2019), itself adapted
from D. Hendrycks & T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019 (github.com/hendrycks/robustness), whose
``ImageNet-C/create_c/make_cifar_c.py`` gives the CIFAR-10-C constants. Both are under the Apache
License 2.0; this port keeps their algorithms, constants and the order of their random draws.

Conventions, as in imagecorruptions: a function takes one ``H x W x 3`` uint8 RGB image and
returns a float array on the 0..255 scale, which ``corrupt`` casts with ``np.uint8`` (truncation).
Randomness comes from the caller's ``np.random.RandomState`` in the order the originals draw from
the global ``np.random``: ``RandomState(s)`` here reproduces ``np.random.seed(s)`` there.

Constant sets: ``"ImageNet-C"`` (imagecorruptions) and ``"CIFAR-10-C"`` (make_cifar_c.py, tuned for
32 x 32). ``preset_for`` picks CIFAR-10-C when both sides are at most 64 px. With the CIFAR-10-C
constants the algorithm stays imagecorruptions' (its NumPy motion blur, which re-implements the
ImageMagick blur that make_cifar_c.py calls through Wand; its corner trim after zooming; its fog map
of the next power of two above the larger side) except where the CIFAR-10-C function differs in
substance: ``pixelate`` upsamples with BOX instead of NEAREST, ``frost`` crops the texture scaled
by 0.2, and ``elastic_transform`` applies make_cifar_c.py's random affine warp before the elastic
field, with its ``IMSIZE = 32`` replaced by the image height.

Library replacements (scikit-image, OpenCV and Wand are not dependencies), each equal to the
original up to floating-point rounding unless stated:
- ``skimage.filters.gaussian`` -> ``scipy.ndimage.gaussian_filter`` with the same sigma (0 on the
  channel axis for ``multichannel=True``), ``mode`` and ``truncate``.
- ``skimage.util.random_noise(mode='s&p')`` -> ``_salt_and_pepper`` (scikit-image 0.17, which draws
  with ``np.random.choice``; from 0.19 on it uses a fresh ``default_rng`` that no seed reaches).
- ``skimage.color.rgb2hsv`` / ``hsv2rgb`` -> ``rgb2hsv`` / ``hsv2rgb`` (scikit-image 0.17).
- ``cv2.GaussianBlur`` (for the defocus disk) -> ``_cv2_gaussian_blur`` (OpenCV's bit-exact kernel,
  float32 separable pass with fused multiply-adds, BORDER_REFLECT_101).
- ``cv2.filter2D`` -> ``scipy.ndimage.correlate(mode='mirror')`` (BORDER_REFLECT_101).
- ``cv2.cvtColor(RGB2GRAY)`` on float32 -> ``_cv2_rgb2gray`` (0.299, 0.587, 0.114, float32 FMA).
- ``cv2.getAffineTransform`` / ``warpAffine`` (bilinear, BORDER_REFLECT_101) ->
  ``_get_affine_transform`` / ``_warp_affine``, including OpenCV's 1/32-pixel fixed-point grid.
- ``cv2.resize(INTER_CUBIC)`` on uint8 -> ``resize_cubic`` (OpenCV's fixed-point arithmetic).
- ``cv2.imread`` of the frost textures -> the PNGs in ``assets/frost`` (see its README).
- Wand's ``motion_blur`` (CIFAR-10-C) -> imagecorruptions' ``_motion_blur``, as said above.

Validation (outside the test suite, in a NumPy 1.19 / SciPy 1.5.4 / scikit-image 0.17.2 / OpenCV
4.5.1 environment): with OpenCV's IPP disabled this port reproduced imagecorruptions 1.1.2 bit for
bit on 224 x 224 and 32 x 32 images for all 75 corruption-severity pairs (frost given the full-size
textures), and make_cifar_c.py's CIFAR-10-C functions on 32 x 32 images for the 13 corruptions that
do not need Wand. With IPP on (the default of the opencv-python wheels) ``cv2.resize`` and
``cvtColor`` round differently: frost's texture then differs by one level on 2-5% of pixels.
Today's libraries differ from that environment in two places, kept here: SciPy >= 1.6 resolves
``map_coordinates(mode='reflect')`` differently within a pixel outside the image (elastic
transform's border pixels), and current Pillow wheels decode and encode JPEG with libjpeg-turbo
instead of IJG libjpeg 9. ``tests/data/corruptions_golden.json`` holds that environment's outputs.

Frost: the textures are shipped at the 0.2 scale CIFAR-10-C crops from. For ImageNet-C sizes the
crop geometry and the random draws are imagecorruptions' (texture rescaled to cover 1.1 x the
image, random crop), but the pixels are resampled from the 0.2-scale texture, so the ice is
blurrier than imagecorruptions'; pass ``textures`` (the five full-size RGB textures) to get
imagecorruptions' exact pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

IMAGENET = "ImageNet-C"
CIFAR = "CIFAR-10-C"
SMALL_MAX_SIDE = 64

NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)

CONSTANTS = {
    "gaussian_noise": {IMAGENET: (.08, .12, 0.18, 0.26, 0.38), CIFAR: (0.04, 0.06, .08, .09, .10)},
    "shot_noise": {IMAGENET: (60, 25, 12, 5, 3), CIFAR: (500, 250, 100, 75, 50)},
    "impulse_noise": {IMAGENET: (.03, .06, .09, 0.17, 0.27), CIFAR: (.01, .02, .03, .05, .07)},
    "defocus_blur": {  # (radius, alias_blur)
        IMAGENET: ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        CIFAR: ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    },
    "glass_blur": {  # (sigma, max_delta, iterations)
        IMAGENET: ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        CIFAR: ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    },
    "motion_blur": {  # (radius, sigma)
        IMAGENET: ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        CIFAR: ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    },
    "zoom_blur": {  # np.arange(start, stop, step) of zoom factors
        IMAGENET: ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        CIFAR: ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    },
    "snow": {  # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
        IMAGENET: ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                   (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                   (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        CIFAR: ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    },
    "frost": {  # (image weight, frost weight)
        IMAGENET: ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        CIFAR: ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    },
    "fog": {  # (strength, wibble decay)
        IMAGENET: ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)),
        CIFAR: ((.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    },
    "brightness": {IMAGENET: (.1, .2, .3, .4, .5), CIFAR: (.05, .1, .15, .2, .3)},
    "contrast": {IMAGENET: (0.4, .3, .2, .1, .05), CIFAR: (.75, .5, .4, .3, 0.15)},
    "elastic_transform": {
        IMAGENET: (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),  # alpha
        # (alpha, sigma, affine) as fractions of IMSIZE
        CIFAR: ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    },
    "pixelate": {IMAGENET: (0.6, 0.5, 0.4, 0.3, 0.25), CIFAR: (0.95, 0.9, 0.85, 0.75, 0.65)},
    "jpeg_compression": {IMAGENET: (25, 18, 15, 10, 7), CIFAR: (80, 65, 58, 50, 40)},
}

FROST_DIR = Path(__file__).resolve().parent / "assets" / "frost"
FROST_FULL_SHAPES = ((600, 900), (315, 560), (315, 560), (350, 527), (495, 660))
FROST_SCALE = 0.2
FROST_FILES = tuple(f"frost{i}.png" for i in range(1, 6))


def preset_for(height: int, width: int) -> str:
    """CIFAR-10-C constants when both sides are at most ``SMALL_MAX_SIDE`` px, else ImageNet-C."""
    return CIFAR if max(height, width) <= SMALL_MAX_SIDE else IMAGENET


def constant(name: str, preset: str, severity: int):
    return CONSTANTS[name][preset][severity - 1]


def zoom_factors(preset: str, severity: int) -> np.ndarray:
    return np.arange(*constant("zoom_blur", preset, severity))


# ---------------------------------------------------------------- library replacements

def fma32(a, b, c):
    """float32 ``a * b + c`` with one rounding, as OpenCV's AVX2 kernels compute it (the float64
    product of two float32 is exact; the sum is rounded twice, which has not shown a difference)."""
    return (np.asarray(a, np.float64) * np.float64(b) + np.asarray(c, np.float64)).astype(np.float32)


def _sk_gaussian(image, sigma, mode="nearest", truncate=4.0, multichannel=False):
    image = np.asarray(image, dtype=np.float64)
    if multichannel:
        sigma = (sigma,) * (image.ndim - 1) + (0,)
    return ndimage.gaussian_filter(image, sigma, mode=mode, truncate=truncate)


def _salt_and_pepper(image, amount, rng, salt_vs_pepper=0.5):
    low_clip = -1. if image.min() < 0 else 0.
    out = image.copy()
    flipped = rng.choice([True, False], size=image.shape, p=[amount, 1 - amount])
    salted = rng.choice([True, False], size=image.shape, p=[salt_vs_pepper, 1 - salt_vs_pepper])
    out[flipped & salted] = 1
    out[flipped & ~salted] = low_clip
    return np.clip(out, low_clip, 1.0)


def rgb2hsv(arr):
    """scikit-image 0.17 ``rgb2hsv`` for float images in [0, 1]."""
    out = np.empty_like(arr)
    out_v = arr.max(-1)
    delta = np.ptp(arr, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_s = delta / out_v
        out_s[delta == 0.] = 0.
        idx = arr[..., 0] == out_v
        out[idx, 0] = (arr[idx, 1] - arr[idx, 2]) / delta[idx]
        idx = arr[..., 1] == out_v
        out[idx, 0] = 2. + (arr[idx, 2] - arr[idx, 0]) / delta[idx]
        idx = arr[..., 2] == out_v
        out[idx, 0] = 4. + (arr[idx, 0] - arr[idx, 1]) / delta[idx]
        out_h = (out[..., 0] / 6.) % 1.
        out_h[delta == 0.] = 0.
    out[..., 0] = out_h
    out[..., 1] = out_s
    out[..., 2] = out_v
    out[np.isnan(out)] = 0
    return out


def hsv2rgb(arr):
    """scikit-image 0.17 ``hsv2rgb``."""
    hi = np.floor(arr[..., 0] * 6)
    f = arr[..., 0] * 6 - hi
    p = arr[..., 2] * (1 - arr[..., 1])
    q = arr[..., 2] * (1 - f * arr[..., 1])
    t = arr[..., 2] * (1 - (1 - f) * arr[..., 1])
    v = arr[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    return np.choose(hi, np.stack([np.stack((v, t, p), axis=-1), np.stack((q, v, p), axis=-1),
                                   np.stack((p, v, t), axis=-1), np.stack((p, q, v), axis=-1),
                                   np.stack((t, p, v), axis=-1), np.stack((v, p, q), axis=-1)]))


def _cv2_gaussian_kernel(n, sigma):
    """OpenCV's ``getGaussianKernelBitExact`` (odd ``n``, ``sigma > 0``) rounded to float32."""
    scale2x = -0.125 / (sigma * sigma)
    values = [math.exp(float(x * x) * scale2x) for x in range(1 - n, 0, 2)]
    total = 0.0
    for v in values:
        total += v
    mul = 1.0 / (total * 2 + 1.0)
    side = [v * mul for v in values]
    return np.array(side + [mul] + side[::-1], dtype=np.float32)


def _cv2_symmetric_pass(img, k, axis):
    """One pass of OpenCV's symmetric small-kernel filter in float32, BORDER_REFLECT_101."""
    r = len(k) // 2
    n = img.shape[axis]
    idx = np.abs(np.arange(-r, n + r))
    idx = np.where(idx >= n, 2 * (n - 1) - idx, idx)
    pad = np.take(img, idx, axis=axis)

    def tap(j):
        return np.take(pad, np.arange(r + j, r + j + n), axis=axis)

    out = tap(0) * k[r]
    for j in range(1, r + 1):
        out = fma32(tap(-j) + tap(j), k[r + j], out)
    return out


def _cv2_gaussian_blur(img, ksize, sigma):
    k = _cv2_gaussian_kernel(ksize, sigma)
    return _cv2_symmetric_pass(_cv2_symmetric_pass(img, k, axis=1), k, axis=0)


def _cv2_rgb2gray(x):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return fma32(b, np.float32(0.114), fma32(g, np.float32(0.587), r * np.float32(0.299)))


def _get_affine_transform(src, dst):
    """``cv2.getAffineTransform``: the 2 x 3 float64 map of three float32 points onto three others."""
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[2 * i, :3] = a[2 * i + 1, 3:] = (src[i, 0], src[i, 1], 1)
        b[2 * i], b[2 * i + 1] = dst[i, 0], dst[i, 1]
    return np.linalg.solve(a, b).reshape(2, 3)


def _invert_affine(m):
    """The inversion ``cv2.warpAffine`` applies to a forward map (flat ``[m00 .. m12]``)."""
    m = [float(v) for v in np.asarray(m, dtype=np.float64).ravel()]
    d = m[0] * m[4] - m[1] * m[3]
    d = 1. / d if d != 0 else 0
    a11, a22 = m[4] * d, m[0] * d
    m[0], m[1], m[3], m[4] = a11, m[1] * -d, m[3] * -d, a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    return m


def warp_affine_grid(m, height, width):
    """Source taps and 1/32-px fractions of ``cv2.warpAffine(INTER_LINEAR)`` for forward map ``m``.

    Returns integer arrays ``(sy, sx, ay, ax)`` of shape (height, width): the top-left source
    pixel and the fractional offsets in 1/32 px (OpenCV's INTER_BITS = 5, AB_BITS = 10).
    """
    m = _invert_affine(m)
    xs, ys = np.arange(width), np.arange(height)
    adelta = np.rint(m[0] * xs * 1024).astype(np.int64)
    bdelta = np.rint(m[3] * xs * 1024).astype(np.int64)
    x0 = np.rint((m[1] * ys + m[2]) * 1024).astype(np.int64) + 16
    y0 = np.rint((m[4] * ys + m[5]) * 1024).astype(np.int64) + 16
    gx = (x0[:, None] + adelta[None, :]) >> 5
    gy = (y0[:, None] + bdelta[None, :]) >> 5
    return gy >> 5, gx >> 5, gy & 31, gx & 31


def reflect101(i, n):
    """OpenCV BORDER_REFLECT_101 / SciPy 'mirror' index map, any number of reflections."""
    if n == 1:
        return np.zeros_like(i)
    i = np.mod(i, 2 * (n - 1))
    return np.where(i >= n, 2 * (n - 1) - i, i)


def _warp_affine(img, m):
    h, w = img.shape[:2]
    sy, sx, ay, ax = warp_affine_grid(m, h, w)
    fy = (ay / np.float32(32)).astype(np.float32)[..., None]
    fx = (ax / np.float32(32)).astype(np.float32)[..., None]
    one = np.float32(1)
    y0, y1, x0, x1 = reflect101(sy, h), reflect101(sy + 1, h), reflect101(sx, w), reflect101(sx + 1, w)
    return (img[y0, x0] * ((one - fy) * (one - fx)) + img[y0, x1] * ((one - fy) * fx)
            + img[y1, x0] * (fy * (one - fx)) + img[y1, x1] * (fy * fx))


def _cubic_taps(in_size, out_size, idx):
    """Source taps and fixed-point weights (x 2048) of OpenCV's INTER_CUBIC along one axis."""
    scale = 1. / (out_size / in_size)
    f = ((idx + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    x = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    a, one = np.float32(-0.75), np.float32(1)
    c0 = ((a * (x + one) - np.float32(5) * a) * (x + one) + np.float32(8) * a) * (x + one) - np.float32(4) * a
    c1 = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + one
    c2 = ((a + np.float32(2)) * (one - x) - (a + np.float32(3))) * (one - x) * (one - x) + one
    c3 = one - c0 - c1 - c2
    weights = np.rint(np.stack([c0, c1, c2, c3], -1) * np.float32(2048)).astype(np.int64)
    taps = np.clip(s[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return taps, weights


def resize_cubic(img, out_h, out_w, top=0, left=0, height=None, width=None):
    """``cv2.resize(img, (out_w, out_h), interpolation=INTER_CUBIC)`` of a uint8 H x W x C image.

    Only the window ``[top:top + height, left:left + width]`` of the output is computed (every
    output pixel depends only on its own taps, so this equals cropping the full resize).
    """
    height = out_h - top if height is None else height
    width = out_w - left if width is None else width
    ty, wy = _cubic_taps(img.shape[0], out_h, np.arange(top, top + height))
    tx, wx = _cubic_taps(img.shape[1], out_w, np.arange(left, left + width))
    src = img.astype(np.int64)
    rows = np.unique(ty)
    lookup = np.searchsorted(rows, ty)
    horizontal = (src[rows][:, tx] * wx[None, :, :, None]).sum(2)
    taps = horizontal[lookup]
    fixed = np.clip(((taps * wy[:, :, None, None]).sum(1) + (1 << 21)) >> 22, 0, 255)
    # OpenCV's SIMD vertical pass (all but the row's last elements) works in float32
    b = wy.astype(np.float32) * np.float32(1 / (2048 * 2048))
    f = taps.astype(np.float32)
    acc = f[:, 3] * b[:, 3, None, None]
    for k in (2, 1, 0):
        acc = f[:, k] * b[:, k, None, None] + acc
    floating = np.clip(np.rint(acc), 0, 255)
    channels = img.shape[2]
    total = out_w * channels
    simd_end = (total - 8) // 8 * 8 + 8 if total >= 8 else 0
    element = (np.arange(left, left + width)[:, None] * channels + np.arange(channels))[None]
    return np.where(element < simd_end, floating, fixed).astype(np.uint8)


# ---------------------------------------------------------------- corruption helpers

def disk(radius, alias_blur=0.1, dtype=np.float32):
    if radius <= 8:
        L = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        L = np.arange(-radius, radius + 1)
        ksize = 5
    X, Y = np.meshgrid(L, L)
    aliased_disk = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=dtype)
    aliased_disk /= np.sum(aliased_disk)
    return _cv2_gaussian_blur(aliased_disk, ksize, alias_blur)


def plasma_fractal(mapsize, wibbledecay, rng):
    """Diamond-square height map in [0, 1], ``mapsize`` a power of two (imagecorruptions)."""
    assert (mapsize & (mapsize - 1) == 0)
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay

    maparray -= maparray.min()
    return maparray / maparray.max()


def next_power_of_2(x):
    return 1 if x == 0 else 2 ** (x - 1).bit_length()


def clipped_zoom(img, zoom_factor):
    """Crop the centre ``1 / zoom_factor`` of an H x W x C array and zoom it (SciPy, order 1)."""
    ch0 = int(np.ceil(img.shape[0] / float(zoom_factor)))
    top0 = (img.shape[0] - ch0) // 2
    ch1 = int(np.ceil(img.shape[1] / float(zoom_factor)))
    top1 = (img.shape[1] - ch1) // 2
    return ndimage.zoom(img[top0:top0 + ch0, top1:top1 + ch1], (zoom_factor, zoom_factor, 1), order=1)


def motion_kernel(radius, sigma):
    width = radius * 2 + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * (sigma ** 2))) / (np.sqrt(2 * np.pi) * sigma)
    return k / np.sum(k)


def _shift(image, dx, dy):
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1:dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx:dx + 1]
    else:
        shifted = image
    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1:dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy:dy + 1, :]
    return shifted


def _motion_blur(x, radius, sigma, angle):
    """imagecorruptions' NumPy version of ImageMagick's MotionBlurImage (edge-replicated shifts)."""
    width = radius * 2 + 1
    kernel = motion_kernel(radius, sigma)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if np.abs(dy) >= x.shape[0] or np.abs(dx) >= x.shape[1]:
            break
        blurred = blurred + kernel[i] * _shift(x, dx, dy)
    return blurred


@lru_cache(maxsize=None)
def frost_texture(index: int) -> np.ndarray:
    """The shipped 0.2-scale RGB frost texture ``index`` (0..4), read-only uint8 H x W x 3."""
    with Image.open(FROST_DIR / FROST_FILES[index]) as im:
        arr = np.asarray(im.convert("RGB"))
    arr.setflags(write=False)
    return arr


def frost_cover_shape(frost_shape, x_shape):
    """imagecorruptions' rescaled texture size (height, width): covers 1.1 x the image."""
    fh, fw = frost_shape[:2]
    h, w = x_shape[:2]
    if fh >= h and fw >= w:
        scaling_factor = 1
    elif fh < h and fw >= w:
        scaling_factor = h / fh
    elif fh >= h and fw < w:
        scaling_factor = w / fw
    else:
        scaling_factor = np.maximum(h / fh, w / fw)
    scaling_factor *= 1.1
    return int(np.ceil(fh * scaling_factor)), int(np.ceil(fw * scaling_factor))


def frost_layer(idx, x_shape, preset, rng, textures=None):
    """The H x W x 3 uint8 frost crop: draws the crop offsets from ``rng`` after ``idx``."""
    h, w = x_shape[:2]
    if preset == CIFAR:
        if textures is None:
            tex = frost_texture(idx)
        else:
            full = textures[idx]
            th, tw = int(np.rint(full.shape[0] * FROST_SCALE)), int(np.rint(full.shape[1] * FROST_SCALE))
            tex = full[2::5, 2::5][:th, :tw]
        if tex.shape[0] > h and tex.shape[1] > w:
            x_start, y_start = rng.randint(0, tex.shape[0] - h), rng.randint(0, tex.shape[1] - w)
            return tex[x_start:x_start + h, y_start:y_start + w]
        full_shape = tex.shape
    else:
        tex = frost_texture(idx) if textures is None else textures[idx]
        full_shape = FROST_FULL_SHAPES[idx] if textures is None else tex.shape
    nh, nw = frost_cover_shape(full_shape, x_shape)
    x_start, y_start = rng.randint(0, nh - h), rng.randint(0, nw - w)
    return resize_cubic(tex, nh, nw, x_start, y_start, h, w)


# ---------------------------------------------------------------- the 15 corruptions

def gaussian_noise(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("gaussian_noise", preset, severity)
    x = np.array(x) / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("shot_noise", preset, severity)
    x = np.array(x) / 255.
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("impulse_noise", preset, severity)
    x = _salt_and_pepper(np.array(x) / 255., amount=c, rng=rng)
    return np.clip(x, 0, 1) * 255


def defocus_blur(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("defocus_blur", preset, severity)
    x = np.array(x) / 255.
    kernel = disk(radius=c[0], alias_blur=c[1]).astype(np.float64)
    channels = np.stack([ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)], axis=2)
    return np.clip(channels, 0, 1) * 255


def glass_blur(x, severity=1, rng=None, preset=IMAGENET):
    """The "swap" assigns NumPy views, so for colour pixels it copies ``x[h', w']`` onto ``x[h, w]``
    and leaves ``x[h', w']`` as it was, as in the original code; kept as is."""
    c = constant("glass_blur", preset, severity)
    x = np.uint8(_sk_gaussian(np.array(x) / 255., sigma=c[0], multichannel=True) * 255)
    x_shape = np.array(x).shape
    for i in range(c[2]):
        for h in range(x_shape[0] - c[1], c[1], -1):
            for w in range(x_shape[1] - c[1], c[1], -1):
                dx, dy = rng.randint(-c[1], c[1], size=(2,))
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return np.clip(_sk_gaussian(x / 255., sigma=c[0], multichannel=True), 0, 1) * 255


def motion_blur(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("motion_blur", preset, severity)
    x = np.array(x)
    angle = rng.uniform(-45, 45)
    x = _motion_blur(x, radius=c[0], sigma=c[1], angle=angle)
    return np.clip(x, 0, 255)


def zoom_blur(x, severity=1, rng=None, preset=IMAGENET):
    c = zoom_factors(preset, severity)
    x = (np.array(x) / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += clipped_zoom(x, zoom_factor)[:x.shape[0], :x.shape[1], :]
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("snow", preset, severity)
    x = np.array(x, dtype=np.float32) / 255.
    snow_layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    snow_layer = clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0
    snow_layer = np.clip(snow_layer.squeeze(), 0, 1)
    snow_layer = _motion_blur(snow_layer, radius=c[4], sigma=c[5], angle=rng.uniform(-135, -45))
    snow_layer = np.round(snow_layer * 255).astype(np.uint8) / 255.
    snow_layer = snow_layer[..., np.newaxis]
    snow_layer = snow_layer[:x.shape[0], :x.shape[1], :]
    gray = _cv2_rgb2gray(x).reshape(x.shape[0], x.shape[1], 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255


def frost(x, severity=1, rng=None, preset=IMAGENET, textures=None):
    """``textures``: optional five full-size RGB uint8 textures (imagecorruptions' files)."""
    c = constant("frost", preset, severity)
    idx = rng.randint(5)
    layer = frost_layer(idx, np.shape(x), preset, rng, textures)
    return np.clip(c[0] * np.array(x) + c[1] * layer, 0, 255)


def fog(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("fog", preset, severity)
    shape = np.array(x).shape
    map_size = next_power_of_2(int(np.max(shape)))
    x = np.array(x) / 255.
    max_val = x.max()
    x += c[0] * plasma_fractal(map_size, c[1], rng)[:shape[0], :shape[1]][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("brightness", preset, severity)
    x = rgb2hsv(np.array(x) / 255.)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(hsv2rgb(x), 0, 1) * 255


def contrast(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("contrast", preset, severity)
    x = np.array(x) / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _elastic_resample(image, dx, dy):
    shape = image.shape
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return np.clip(ndimage.map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


def affine_points(shape):
    """make_cifar_c.py's three anchor points (float32, as (x, y) pairs in OpenCV's reading)."""
    center_square = np.float32(shape[:2]) // 2
    square_size = min(shape[:2]) // 3
    return np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])


def elastic_transform(image, severity=1, rng=None, preset=IMAGENET):
    image = np.array(image, dtype=np.float32) / 255.
    shape = image.shape
    if preset == CIFAR:
        imsize = shape[0]
        c = tuple(imsize * f for f in constant("elastic_transform", preset, severity))
        pts1 = affine_points(shape)
        pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
        image = _warp_affine(image, _get_affine_transform(pts1, pts2))
        dx = (_sk_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3)
              * c[0]).astype(np.float32)
        dy = (_sk_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3)
              * c[0]).astype(np.float32)
        return _elastic_resample(image, dx, dy)
    sigma = np.array(shape[:2]) * 0.01
    alpha = constant("elastic_transform", preset, severity)
    max_dx = shape[0] * 0.005
    max_dy = shape[0] * 0.005
    dx = (_sk_gaussian(rng.uniform(-max_dx, max_dx, size=shape[:2]), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    dy = (_sk_gaussian(rng.uniform(-max_dy, max_dy, size=shape[:2]), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    return _elastic_resample(image, dx, dy)


_BOX = getattr(Image, "Resampling", Image).BOX
_NEAREST = getattr(Image, "Resampling", Image).NEAREST


def pixelate(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("pixelate", preset, severity)
    h, w = np.shape(x)[:2]
    img = Image.fromarray(np.asarray(x, dtype=np.uint8))
    img = img.resize((int(w * c), int(h * c)), _BOX)
    img = img.resize((w, h), _BOX if preset == CIFAR else _NEAREST)
    return np.asarray(img, dtype=np.float64)


def jpeg_compression(x, severity=1, rng=None, preset=IMAGENET):
    c = constant("jpeg_compression", preset, severity)
    output = BytesIO()
    Image.fromarray(np.asarray(x, dtype=np.uint8)).save(output, "JPEG", quality=c)
    output.seek(0)
    with Image.open(output) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


FUNCTIONS = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur,
    snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)}


def corrupt(image, corruption_name, severity, rng, preset=None, **kwargs):
    """imagecorruptions' ``corrupt``: uint8 H x W (x 1 or 3) in, uint8 H x W x 3 out.

    Grayscale images are stacked to three channels first, as imagecorruptions does. ``preset``
    defaults to ``preset_for(H, W)`` (imagecorruptions itself always uses ``"ImageNet-C"``).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected H x W, H x W x 1 or H x W x 3, got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if preset is None:
        preset = preset_for(*image.shape[:2])
    return np.uint8(FUNCTIONS[corruption_name](image, severity, rng, preset, **kwargs))
