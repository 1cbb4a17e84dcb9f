"""Data-parallel ``robust evaluate`` and ``robust certify`` under ``torchrun``.

Work is cut into the fixed batches (or examples) a single process would use; batch ``b`` runs on
rank ``b % world_size`` and every rank receives every result, keyed by its index. Since seeds
derive from the batch or example index, a run gives the same numbers at any world size. A
process that ``torchrun`` did not start (``WORLD_SIZE`` unset or 1) never initialises
``torch.distributed`` and every function here acts as in a single process.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

TIMEOUT_ENV = "ROBUST_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600  # a collective waits at most this long for the other ranks (one batch's work)

T = TypeVar("T")

_LOCAL = contextvars.ContextVar("robust_distributed_local", default=False)


def _active() -> bool:
    return not _LOCAL.get() and dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block every function here acts as in a single process, process group or not: a
    rank measures its own data alone (each rank of a DDP test loop evaluates its own batch)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if _active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and logs."""
    return world()[0] == 0


def launched() -> bool:
    """Whether the environment asks for several processes (``WORLD_SIZE`` > 1, as torchrun sets it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def timeout() -> datetime.timedelta:
    """How long a collective waits for the other ranks: ``$ROBUST_DIST_TIMEOUT_S`` seconds (default 600)."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def init_from_env(device: torch.device | str) -> torch.device:
    """Join the process group torchrun's environment describes; return the device this rank uses.

    gloo on CPU; NCCL on CUDA, where rank ``LOCAL_RANK`` of a node uses ``cuda:LOCAL_RANK``
    whatever CUDA index ``device`` names. Without ``WORLD_SIZE`` > 1 nothing is initialised and
    ``device`` comes back unchanged.
    """
    device = torch.device(device)
    if not launched():
        return device
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: "
                         "start several processes with torchrun")
    backend = "gloo"
    if device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} CUDA device(s): "
                             "start at most one process per GPU (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    if not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend, timeout=timeout())
    return device


def cleanup() -> None:
    """Leave the process group (no-op without one); ranks may leave while rank 0 still writes."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def my_batches(n_batches: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The batch indices this rank computes: ``rank, rank + world_size, ...`` below ``n_batches``."""
    if rank is None or world_size is None:
        rank, world_size = world()
    return range(rank, n_batches, world_size)


def gather_by_index(local: dict[int, Any]) -> dict[int, Any]:
    """Every rank's ``{index: result}`` merged, on every rank, sorted by index; an index that two
    ranks computed is an error. Results travel pickled: keep them small and on the CPU."""
    if not _active() or dist.get_world_size() == 1:
        return dict(sorted(local.items()))
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[int, Any] = {}
    for rank, part in enumerate(parts):
        for index, value in part.items():
            if index in merged:
                raise RuntimeError(f"index {index} was computed by two ranks (the second is rank {rank})")
            merged[index] = value
    return dict(sorted(merged.items()))


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result (or the exception it raised) handed to every rank.

    For what only rank 0 may touch, such as a resume state file in its output folder.
    """
    if not _active() or dist.get_world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = (True, fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            box[0] = (False, err)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def map_batches(
    n_batches: int,
    compute: Callable[[int], Any],
    skip: Collection[int] = (),
    on_round: Callable[[dict[int, Any]], None] | None = None,
) -> dict[int, Any]:
    """``{b: compute(b)}`` for every batch index ``b < n_batches`` not in ``skip``, on every rank.

    Batches go round by round: round ``k`` is batches ``k * world_size ... (k + 1) * world_size - 1``,
    of which each rank computes the one in :func:`my_batches`. After each round the round's
    results are gathered and ``on_round(results_of_the_round)`` runs on every rank (rank 0 saves
    a resume state there). ``skip`` must be the same on every rank.
    """
    rank, size = world()
    skip, mine = frozenset(skip), frozenset(my_batches(n_batches, rank, size))
    results: dict[int, Any] = {}
    for first in range(0, n_batches, size):
        pending = [b for b in range(first, min(first + size, n_batches)) if b not in skip]
        if not pending:
            continue
        new = gather_by_index({b: compute(b) for b in pending if b in mine})
        results.update(new)
        if on_round is not None:
            on_round(new)
    return results
