"""Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is
constant within the L2 ball of radius ``sigma * Phi^-1(pA)`` around ``x`` (Theorem 1).
:class:`Smooth` implements the paper's Monte Carlo ``PREDICT`` and ``CERTIFY`` (Algorithms 1
and 2). Noise is added in [0, 1] pixel space without clamping, and radii are L2 distances in
those pixel units.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn
from tqdm.auto import tqdm

from robust.base import distributed
from robust.base.runtime import autocast, check_precision, eval_mode, fold_batchnorm, model_device
from robust.base.safe_load import check_finite_weights
from robust.base.state import Journal, fingerprint, model_fingerprint
from robust.base.stats import accuracy_record
from robust.base.threat import parse_radius

ABSTAIN = -1
ROW_FIELDS = ("idx", "label", "predict", "count", "radius", "correct", "time")
"""A row of the resume state: the example's index and label, CERTIFY's class (-1: abstain), how many
of the ``n`` samples voted for the guessed class, the radius that count gives, whether it is right, seconds."""
RECHECKED_ROWS = 2
"""Rows of a resumed state that are certified again and compared before the state is trusted."""


class NonFiniteLogitsError(ValueError):
    """The base model returned NaN or infinite logits on noisy inputs: its votes would be meaningless."""


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion, at confidence ``1 - alpha``.

    Equals the lower end of the exact two-sided interval at confidence ``1 - 2 * alpha``
    (``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]`` in the reference code).
    """
    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: all ``n`` samples agree, ``pA_lower = alpha ** (1 / n)``."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def radius_from_count(count: int, n: int, alpha: float, sigma: float) -> float | None:
    """The radius CERTIFY gives when ``count`` of ``n`` samples vote for the guessed class, or ``None``
    when that count abstains (``pA_lower < 0.5``)."""
    p_lower = lower_confidence_bound(count, n, alpha)
    return None if p_lower < 0.5 else float(sigma * norm.ppf(p_lower))


def check_certifiable(sigma: float, n: int, alpha: float) -> float:
    """The largest certifiable radius of these settings; a ``ValueError`` when it is not a finite
    number > 0 (``n`` too small for ``alpha``: every example would abstain; ``sigma`` overflowing)."""
    top = max_certifiable_radius(sigma, n, alpha)
    if not top > 0:
        need = math.floor(math.log(alpha) / math.log(0.5)) + 1
        raise ValueError(f"n = {n} samples cannot certify anything at alpha = {alpha}: even when all agree the "
                         f"lower confidence bound stays below 1/2 (every example abstains); use n >= {need}")
    if not math.isfinite(top):
        raise ValueError(f"sigma = {sigma!r} is too large: the largest certifiable radius overflows")
    return top


def _count(value: Any, field: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {value!r}")
    return float(value)


class Smooth:
    """A Gaussian-smoothed classifier around a base classifier ``model`` (returns logits).

    Args:
        model: base classifier on (N, C, H, W) images in [0, 1].
        num_classes: number of logits ``model`` returns (>= 2).
        sigma: noise standard deviation in pixel units (> 0).
        generator: a ``torch.Generator`` on the model's device for the noise.
        seed: seeds a private generator instead; with either, the global RNG is untouched.
            ``certify_dataset`` derives a per-example seed from ``seed`` so runs are resumable.
        precision: ``"bf16"`` (autocast) or ``"32"`` for the noisy forward passes; default bf16 on
            CUDA, float32 on CPU. Only the argmax of each pass is used, and the certificate is a
            statement about the classifier that was run, so bf16 keeps it sound.
        fast: count with an inference copy of ``model``: BatchNorm folded into the convolutions and
            NHWC (``channels_last``) memory order; default on CUDA. The copy is taken when the
            first count runs, so train the model before certifying, not in between.
        compile: also run the counting network through ``torch.compile`` (fuses the pointwise
            operations between convolutions; pays a compilation on the first count).
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        sigma: float,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        precision: str | None = None,
        fast: bool | None = None,
        compile: bool = False,
    ) -> None:
        self.num_classes = _count(num_classes, "num_classes", minimum=2)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if generator is not None and seed is not None:
            raise ValueError("give generator or seed, not both")
        self.model = model
        self.sigma = float(sigma)
        self.device = model_device(model)
        self.seed = None if seed is None else _count(seed, "seed", minimum=0)
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.generator = generator
        cuda = self.device.type == "cuda"
        self.precision = check_precision(precision if precision is not None else ("bf16" if cuda else "32"))
        self.fast = cuda if fast is None else bool(fast)
        self.compile = bool(compile)
        self._counting_model: nn.Module | None = None

    def _counter(self) -> nn.Module:
        """The network the noisy passes run through (``model``, or its folded NHWC copy)."""
        if not self.fast and not self.compile:
            return self.model
        if self._counting_model is None:
            model = fold_batchnorm(self.model).to(memory_format=torch.channels_last) if self.fast else self.model
            self._counting_model = torch.compile(model) if self.compile else model
        return self._counting_model

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 1000,
                generator: torch.Generator | None = None) -> int:
        """PREDICT (Algorithm 1): the top class of ``n`` noisy samples, or ``-1`` (abstain) when a
        two-sided binomial test of the top two counts cannot reject a tie at level ``alpha``.
        A non-abstaining answer differs from ``g(x)`` with probability at most ``alpha``."""
        n, alpha = _count(n, "n"), _alpha(alpha)
        counts = self._counts(self._image(x), n, _count(batch_size, "batch_size"), generator)
        top2 = torch.topk(counts, 2)
        count1, count2 = int(top2.values[0]), int(top2.values[1])
        if binomtest(count1, count1 + count2, p=0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, generator: torch.Generator | None = None) -> tuple[int, float]:
        """CERTIFY (Algorithm 2): guess the top class from ``n0`` samples, lower-bound its
        probability from ``n`` fresh samples, return ``(class, L2 radius in pixel units)``.

        With probability at least ``1 - alpha`` a non-abstaining answer is correct: ``g`` predicts
        that class everywhere within the radius. Abstains with ``(-1, 0.0)`` when ``pA_lower < 0.5``.
        """
        predict, _, radius = self._certify(x, n0, n, alpha, batch_size, generator)
        return predict, radius

    def _certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                 generator: torch.Generator | None) -> tuple[int, int, float]:
        """CERTIFY's ``(class, count of the guessed class among the n samples, radius)``."""
        n0, n, alpha = _count(n0, "n0"), _count(n, "n"), _alpha(alpha)
        batch_size = _count(batch_size, "batch_size")
        image = self._image(x)
        c_hat = int(self._counts(image, n0, batch_size, generator).argmax())
        n_a = int(self._counts(image, n, batch_size, generator)[c_hat])
        radius = radius_from_count(n_a, n, alpha, self.sigma)
        if radius is None:
            return ABSTAIN, n_a, 0.0
        return c_hat, n_a, radius

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}")
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 3:
            raise ValueError(f"x must be one image (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
            raise ValueError("x must hold pixel values in [0, 1]")
        return x.to(self.device)

    def _counts(self, x: torch.Tensor, num: int, batch_size: int,
                generator: torch.Generator | None) -> torch.Tensor:
        generator = self.generator if generator is None else generator
        model = self._counter()
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        ones = torch.ones(min(batch_size, num), dtype=torch.long, device=self.device)
        buffer = torch.empty((min(batch_size, num), *x.shape), device=self.device, dtype=x.dtype)
        if self.fast and buffer.dim() == 4:
            buffer = buffer.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), eval_mode(model):
            for start in range(0, num, batch_size):
                size = min(batch_size, num - start)
                # fresh N(0, sigma^2) noise for every sample, drawn into one reused buffer, plus x
                noisy = buffer[:size].normal_(0.0, self.sigma, generator=generator).add_(x)
                with autocast(self.device, self.precision):
                    logits = model(noisy)
                if logits.dim() != 2 or logits.shape[1] != self.num_classes:
                    raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, "
                                     f"expected (batch, num_classes={self.num_classes})")
                finite &= torch.isfinite(logits).all()  # checked once at the end: no host sync per batch
                # index_add_ rather than bincount: CUDA bincount syncs with the host on every batch
                counts.index_add_(0, logits.argmax(1), ones[:size])
        if not bool(finite):
            check_finite_weights(self.model, "certify")
            raise NonFiniteLogitsError(f"the base model returned NaN or infinite logits on noisy inputs (sigma = "
                                       f"{self.sigma:g}, precision {self.precision}): its votes mean nothing; "
                                       "use a smaller sigma" + (" or float32" if self.precision != "32" else ""))
        return counts.cpu()


def _example_generator(smooth: Smooth, idx: int) -> torch.Generator | None:
    if smooth.seed is None:
        return None
    seed = int(np.random.SeedSequence([smooth.seed, idx]).generate_state(2, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=smooth.device).manual_seed(seed)


def certify_dataset(
    smooth: Smooth,
    x: torch.Tensor,
    y: torch.Tensor,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    radii: Sequence[float] = (0, 0.25, 0.5, 0.75, 1.0),
    progress: bool = True,
    state_path: str | os.PathLike | None = None,
    callback: Callable[[dict], Any] | None = None,
) -> dict:
    """CERTIFY every image of ``x`` (N, C, H, W) against labels ``y`` (N,).

    Returns ``rows`` (``idx label predict radius correct time``, as the reference ``certify.py``; the
    resume state keeps each row's vote ``count`` too),
    ``certified_accuracy`` (radius -> accuracy record: ``predict == label`` and ``radius >= r``),
    ``acr`` (average certified radius, 0 for wrong or abstained examples), ``abstention_rate``,
    ``seconds_per_example``, ``max_certifiable_radius`` and ``warnings``. Radii are L2, pixel units.

    No radius above ``sigma * Phi^-1(alpha ** (1 / n))`` can ever be certified (about
    ``3.2 * sigma`` at ``n = 10_000, alpha = 0.001``); asking for one warns.

    ``state_path``: a resume journal (:class:`robust.base.state.Journal`); each finished round of
    rows is appended, and a restarted call skips the rows already there. With ``Smooth(seed=...)``
    the noise of each example depends only on the seed and its index, so a resumed run equals an
    uninterrupted one. A state written for another model, other settings or data is refused, and
    so is one whose rows are not what CERTIFY can return (a radius above the largest certifiable
    one, a class or count out of range, a radius its count does not give) or whose sampled rows
    (:data:`RECHECKED_ROWS`, certified again with the same noise) do not re-compute.
    ``callback(row)`` runs after each row.
    Under torchrun example ``i`` is certified on rank ``i % world_size``, every rank gets every
    row and rank 0 alone reads and writes the state file.
    """
    n0, n, alpha = _count(n0, "n0"), _count(n, "n"), _alpha(alpha)
    batch_size = _count(batch_size, "batch_size")
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"x must be (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    radii = [parse_radius(r, "radius", "L2 radius in pixel units") for r in radii]
    top = check_certifiable(smooth.sigma, n, alpha)
    _check_labels(y, smooth.num_classes)
    check_finite_weights(smooth.model, "certify")
    settings = {"n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size, "sigma": smooth.sigma,
                "precision": smooth.precision, "num_classes": smooth.num_classes, "seed": smooth.seed,
                "data": fingerprint(x, y.to(torch.int64)), "model": model_fingerprint(smooth.model),
                "device": smooth.device.type, "fast": smooth.fast}
    journal = None if state_path is None else Journal(state_path, "smoothing certification", settings,
                                                      "model, data, device or settings")

    def resume() -> dict[int, dict]:
        stored = journal.load()
        _check_rows(journal, stored, y, n, alpha, smooth.sigma, smooth.num_classes, top)
        _recheck_rows(journal, stored, smooth, x, n0, n, alpha, batch_size)
        return stored

    rows = {} if journal is None else distributed.run_on_main(resume)

    def compute(idx: int) -> dict:
        label = int(y[idx])
        start = time.perf_counter()
        predict, count, radius = smooth._certify(x[idx], n0, n, alpha, batch_size, _example_generator(smooth, idx))
        return {"idx": idx, "label": label, "predict": predict, "count": count, "radius": radius,
                "correct": int(predict == label), "time": time.perf_counter() - start}

    bar = tqdm(total=len(x) - len(rows), desc="certify", unit="img", disable=not (progress and distributed.is_main()),
               leave=False)

    def finished(new: dict[int, dict]) -> None:
        rows.update(new)
        if journal is not None and distributed.is_main():
            journal.append(new)
        bar.update(len(new))
        if callback is not None:
            for row in new.values():
                callback(_public(row))

    distributed.map_batches(len(x), compute, skip=rows, on_round=finished)
    bar.close()
    return _summarise([_public(rows[i]) for i in range(len(x))], radii, top)


def _public(row: dict) -> dict:
    """A row as reports show it (the vote count stays in the resume state, where it vouches for the radius)."""
    return {k: v for k, v in row.items() if k != "count"}


def _check_labels(y: torch.Tensor, classes: int) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1} (the model's classes), got {int(y.min())}.."
                         f"{int(y.max())}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_rows(journal: Journal, rows: dict, y: torch.Tensor, n: int, alpha: float, sigma: float, classes: int,
                top: float) -> None:
    """Refuse stored rows that CERTIFY cannot have returned for these settings and labels."""
    for key, row in rows.items():
        if not isinstance(row, dict) or set(row) != set(ROW_FIELDS):
            raise journal.invalid(f"row {key!r} is not a certification row (fields {', '.join(ROW_FIELDS)})")
        idx, predict, count, radius = row["idx"], row["predict"], row["count"], row["radius"]
        if not (_is_int(key) and _is_int(idx) and key == idx and 0 <= idx < len(y)):
            raise journal.invalid(f"row {key!r} names example {idx!r}, not one of 0..{len(y) - 1}")
        if not all(_is_int(row[k]) for k in ("label", "predict", "count", "correct")) or \
                not all(_is_number(row[k]) for k in ("radius", "time")):
            raise journal.invalid(f"row {idx} holds a value of the wrong type ({str(row)[:200]})")
        if row["label"] != int(y[idx]):
            raise journal.invalid(f"row {idx} has label {row['label']}, the data's is {int(y[idx])}")
        if not -1 <= predict < classes:
            raise journal.invalid(f"row {idx} predicts class {predict}, outside -1..{classes - 1}")
        if not 0 <= count <= n:
            raise journal.invalid(f"row {idx} counts {count} votes, outside 0..n = {n}")
        if radius < 0 or radius > top * (1 + 1e-9):
            raise journal.invalid(f"row {idx} has radius {radius!r}, outside 0..{top:.6g}, the largest certifiable "
                                  f"radius (sigma * Phi^-1(alpha ** (1 / n)))")
        expected = radius_from_count(count, n, alpha, sigma)
        if (expected is None) != (predict == ABSTAIN) or not math.isclose(radius, expected or 0.0, rel_tol=1e-9,
                                                                          abs_tol=1e-12):
            raise journal.invalid(f"row {idx} has radius {radius!r} and class {predict}, but {count} of {n} votes "
                                  + ("abstain" if expected is None else f"give radius {expected!r}"))
        if row["correct"] != int(predict == row["label"]) or row["time"] < 0:
            raise journal.invalid(f"row {idx} marks correct = {row['correct']} for class {predict} and label "
                                  f"{row['label']}" + (f", time {row['time']}" if row["time"] < 0 else ""))


def _recheck_rows(journal: Journal, rows: dict, smooth: Smooth, x: torch.Tensor, n0: int, n: int, alpha: float,
                  batch_size: int) -> None:
    """Certify a few stored rows again (the one with the largest certified radius, and one at random) with
    their own noise and compare: only ``Smooth(seed=...)`` makes that noise reproducible."""
    if smooth.seed is None or not rows:
        return
    best = max(rows.values(), key=lambda r: (r["correct"], r["radius"], -r["idx"]))["idx"]
    picked = [best, random.SystemRandom().choice(sorted(rows))][:RECHECKED_ROWS]
    slack = 0 if smooth.device.type == "cpu" else max(1, n // 1000)  # CUDA kernels may flip a borderline vote
    for idx in dict.fromkeys(picked):
        row = rows[idx]
        predict, count, _ = smooth._certify(x[idx], n0, n, alpha, batch_size, _example_generator(smooth, idx))
        if predict != row["predict"] or abs(count - row["count"]) > slack:
            raise journal.invalid(f"row {idx} does not re-compute: it says class {row['predict']} with "
                                  f"{row['count']}/{n} votes, certifying it again gives class {predict} with "
                                  f"{count}/{n}")


def _summarise(rows: list[dict], radii: list[float], max_radius: float) -> dict:
    total = len(rows)
    notes = []
    too_far = [r for r in radii if r > max_radius]
    if too_far:
        notes.append(f"radii {too_far} exceed the maximum certifiable radius {max_radius:.4f} "
                     "(sigma * Phi^-1(alpha ** (1 / n))): their certified accuracy is 0 by construction")
        warnings.warn(notes[-1], stacklevel=3)
    return {
        "rows": rows,
        "certified_accuracy": {
            r: accuracy_record(sum(row["correct"] and row["radius"] >= r for row in rows), total) for r in radii
        },
        "acr": sum(row["radius"] for row in rows if row["correct"]) / total if total else 0.0,
        "abstention_rate": sum(row["predict"] == ABSTAIN for row in rows) / total if total else 0.0,
        "seconds_per_example": sum(row["time"] for row in rows) / total if total else 0.0,
        "max_certifiable_radius": max_radius,
        "warnings": notes,
    }


def attack_smoothed(
    smooth: Smooth,
    x: torch.Tensor,
    y: torch.Tensor,
    radius: float,
    steps: int = 20,
    samples: int = 16,
    n: int = 1_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
) -> torch.Tensor:
    """Attack the smoothed classifier itself within L2 ``radius``; its ``predict`` at each result.

    SmoothAdv's attack (Salman et al. 2019, "Provably Robust Deep Learning via Adversarially
    Trained Smoothed Classifiers", Sec. 3): L2 PGD (``steps`` steps of ``2 * radius / steps``,
    projected onto the ball and [0, 1]) ascending the cross-entropy of the *soft* smoothed
    classifier, estimated with ``samples`` fresh noise draws per step; then
    :meth:`Smooth.predict` with ``n`` samples at the perturbed point. Returns (N,) predictions
    (``-1`` where PREDICT abstains). A correct certificate with radius >= ``radius`` makes a wrong
    non-abstaining answer here a rare event (probability at most about 2 * alpha).
    """
    steps, samples = _count(steps, "steps"), _count(samples, "samples")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"x must be (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    radius = min(float(radius), math.sqrt(x[0].numel()))  # the diameter of [0, 1]^d: a larger ball adds nothing
    device = smooth.device
    generator = torch.Generator(device=device).manual_seed(seed)
    per_chunk = max(1, batch_size // samples)
    predictions = []
    with eval_mode(smooth.model):
        for first in range(0, len(x), per_chunk):
            xb, yb = x[first:first + per_chunk].to(device), y[first:first + per_chunk].to(device).long()
            delta = torch.zeros_like(xb)
            step = 2.0 * radius / steps
            for _ in range(steps if radius > 0 else 0):
                delta.requires_grad_(True)
                noise = torch.randn((len(xb), samples, *xb.shape[1:]), generator=generator, device=device)
                noisy = ((xb + delta)[:, None] + smooth.sigma * noise).flatten(0, 1)
                probs = torch.softmax(smooth.model(noisy), 1).view(len(xb), samples, -1).mean(1)
                loss = -torch.log(probs.gather(1, yb[:, None]).clamp_min(1e-12)).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (xb.dim() - 1)))
                    delta = delta + step * grad / norms
                    scale = (radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                    delta = delta * scale.view(-1, *([1] * (xb.dim() - 1)))
                    delta = (xb + delta).clamp(0, 1) - xb
            x_adv = (xb + delta).detach()
            predictions += [smooth.predict(x_adv[i], n, alpha, batch_size, generator) for i in range(len(xb))]
    return torch.tensor(predictions, dtype=torch.long)
