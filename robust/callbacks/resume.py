"""Exact resumption: the random-number generators and the place in the epoch, in every checkpoint.

Lightning's checkpoints hold the weights, the optimiser, the LR scheduler and the loop counters
(epoch, batch within the epoch, global step); the methods' eps ramps are functions of those
counters. Two things a run needs to continue *exactly* as if it had never stopped are missing:

* the RNG states (torch CPU, CUDA, NumPy, Python's ``random``): random starts of the training
  attacks, smoothing noise and CPU-side augmentation draw from them. :class:`ResumeState` stores
  them as tensors and plain numbers (``weights_only=True`` loads them), one set per rank under
  DDP, and puts them back just before the first resumed batch is fetched;
* the data position: the training loader must skip the batches of the epoch already trained.
  Lightning restores a loader's ``state_dict`` only when ``configure_optimizers`` did not call
  ``trainer.estimated_stepping_batches`` (Lightning issue #20550: that call builds the loader
  before the checkpoint is read, and the saved loader state is then dropped silently; the
  cosine and one-cycle schedules call it). So the position is taken from Lightning's own
  restored loop counters instead and handed to the loader (``seek(epoch, batches)``:
  :class:`robust.data.base.EpochSampler` on the ``DataLoader`` path,
  :class:`robust.data.resident.ResidentLoader` on the device-resident one). The counters count
  batches trained, so neither Lightning's nor a ``DataLoader``'s worker prefetching can put the
  position off by the batches fetched ahead.

``robust fit`` adds the callback; with a ``Trainer`` of your own, add it to ``callbacks``. Exact
for ``num_workers=0`` and device-resident data; with worker processes the order and position are
exact, but augmentation drawn inside the workers is not replayed.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": None if gauss is None else float(gauss)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the states :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:  # another number of visible GPUs: at least this process's device continues its stream
            torch.cuda.set_rng_state(cuda[min(torch.cuda.current_device(), len(cuda) - 1)].cpu())
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))


def _gather(state: dict[str, Any], trainer: pl.Trainer) -> list[dict[str, Any]]:
    """Every rank's ``state`` (all ranks call this while the checkpoint is dumped), in rank order."""
    if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [state]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def training_position(trainer: pl.Trainer) -> tuple[int, int]:
    """``(epoch, batches of it already trained)`` from Lightning's (restored) loop counters.

    Valid from ``on_train_start``: the fit loop has settled its epoch counter by then, while the
    epoch loop still holds the batch counts of the checkpoint (a finished epoch counts as 0 of the next).
    """
    fit_loop = trainer.fit_loop
    epoch = fit_loop.epoch_progress.current.processed
    done = fit_loop.epoch_loop.batch_progress.current.processed
    if done >= trainer.num_training_batches:
        done = 0
    return int(epoch), int(done)


def _resumable(loader: Any) -> Any:
    """The object that can ``seek(epoch, batches)`` for ``loader``, if any."""
    for candidate in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if candidate is not None and callable(getattr(candidate, "seek", None)):
            return candidate
    return None


class ResumeState(pl.Callback):
    """Save the RNG states of every rank in each checkpoint; on resume, restore them and move the
    training loader to the first batch not yet trained. See the module docstring."""

    def __init__(self) -> None:
        self._loaded: list[dict[str, Any]] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        state = rng_state()
        return {"format": 1, "rng": _gather(state, trainer) if trainer is not None else [state]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = list(state_dict.get("rng") or []) or None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, done = training_position(trainer)
        if trainer.ckpt_path is not None or done:
            self._seek(trainer, epoch, done)
        if self._loaded is not None:
            states, self._loaded = self._loaded, None
            if len(states) != trainer.world_size:
                rank_zero_warn(f"the checkpoint holds the RNG states of {len(states)} process(es), this run has "
                               f"{trainer.world_size}: the random streams continue from rank 0's, not exactly")
            set_rng_state(states[trainer.global_rank] if len(states) == trainer.world_size else states[0])

    @staticmethod
    def _seek(trainer: pl.Trainer, epoch: int, done: int) -> None:
        loaders = trainer.train_dataloader
        flat = list(loaders.values()) if isinstance(loaders, dict) else (
            list(loaders) if isinstance(loaders, (list, tuple)) else [loaders])
        for loader in flat:
            target = _resumable(loader)
            if target is not None:
                target.seek(epoch, done)
            elif done:
                rank_zero_warn(f"the training loader ({type(loader).__name__}) cannot skip the {done} batches of epoch "
                               f"{epoch} already trained: the resumed epoch sees them again")
