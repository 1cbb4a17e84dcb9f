"""Data in the one shape every measurement takes: ``(x, y)`` tensors of images in [0, 1] and integer
labels, checked once, and cut into fixed batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def check_images(x: torch.Tensor, y: torch.Tensor | None = None, channels: tuple[int, ...] | None = None,
                 min_side: int | None = None, nonempty: bool = False) -> None:
    """Raise a ``ValueError`` naming the problem unless ``x`` is a float (N, C, H, W) batch in [0, 1]
    (and ``y``, when given, one integer label per image). ``channels`` and ``min_side`` add the
    checks of a consumer that needs them (the corruptions need 1 or 3 channels and 8 px; an attack on a
    batch needs ``nonempty``)."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {x.ndim} dimensions {tuple(x.shape)}")
    if channels is not None and x.shape[1] not in channels:
        raise ValueError(f"images must have {' or '.join(map(str, channels))} channels, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if min_side is not None and min(x.shape[2:]) < min_side:
        raise ValueError(f"images must be at least {min_side}x{min_side} px, got {tuple(x.shape[2:])}")
    if not x.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {x.dtype}")
    if nonempty and x.shape[0] == 0:
        raise ValueError("images must hold at least one example, got N = 0")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError("images must lie in [0, 1] (normalisation belongs inside the model), got NaN or inf")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"images must lie in [0, 1] (normalisation belongs inside the model), "
                         f"got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    if y is None:
        return
    if (not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex()
            or y.dtype == torch.bool):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got shape {shape}"
                         + (f" and dtype {y.dtype}" if isinstance(y, torch.Tensor) else ""))
    if len(y) != len(x):
        raise ValueError(f"got {len(x)} images but {len(y)} labels")


def collect(data: Any, n_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` CPU tensors from a DataLoader (its first ``n_examples`` in its order) or an ``(x, y)``
    pair, checked with :func:`check_images`."""
    import torch

    if n_examples is not None and n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"labels must be a 1-D integer tensor of class indices, got {type(y).__name__}")
    elif isinstance(data, Iterable):
        xs, ys, have = [], [], 0
        for batch in data:
            bx, by = batch[0], batch[1]
            xs.append(bx)
            ys.append(by)
            have += len(bx)
            if n_examples is not None and have >= n_examples:
                break
        if not xs:
            raise ValueError("the data loader yielded no batches")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ValueError(f"data must be a DataLoader or an (images, labels) pair, got {type(data).__name__}")
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    check_images(x, y)
    return x.detach().cpu(), y.detach().cpu()  # batches move to the model's device one at a time


def n_batches(n: int, batch_size: int) -> int:
    """How many batches of ``batch_size`` cover ``n`` examples (the last one may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return (n + batch_size - 1) // batch_size


def batch_slice(b: int, n: int, batch_size: int) -> slice:
    """The examples of batch ``b`` when ``n`` examples are cut into fixed batches of ``batch_size``."""
    return slice(b * batch_size, min(n, (b + 1) * batch_size))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` in the fixed batches of :func:`batch_slice`, in order."""
    for b in range(n_batches(len(x), batch_size)):
        sl = batch_slice(b, len(x), batch_size)
        yield x[sl], y[sl]
