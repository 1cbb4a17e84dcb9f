"""The datamodule base class: splits, loaders and the errors every data module raises.

Contract: every data module yields ``(x, y)`` with ``x`` a float32 tensor of images in
[0, 1], shape ``(N, C, H, W)``, and ``y`` int64 class indices. Normalisation is the
model's first layer (``robust.models.Normalize``); ``mean``/``std`` are exposed here
only so that a user can build that layer.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from robust.base.errors import InputError
from robust.data.resident import EpochPosition, ResidentLoader, epoch_batches

SPLIT_SEED = 0
"""Seed of every train/val split: splits are fixed, independent of the ``seed`` argument."""


class DataNotFoundError(InputError, FileNotFoundError):
    """The files of a data set are not where the data module looked for them.

    ``path`` is the absolute path that was searched; the message says how to supply the files.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return str(self.args[0])


class DataFormatError(InputError, ValueError):
    """A data file exists but its content is not what the data module expects."""


def absolute(path: str | Path) -> Path:
    """``path`` made absolute against the current directory (``~`` expanded, ``..`` resolved)."""
    return Path(path).expanduser().resolve()


def check_val_size(val_size: int | float, name: str = "val_size") -> int | float:
    """Validate a validation-set size: a count (int >= 0) or a fraction in [0, 1)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"{name} must be an int (a count) or a float in [0, 1) (a fraction), got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"{name} as a fraction must lie in [0, 1), got {val_size}")
    elif val_size < 0:
        raise ValueError(f"{name} must be >= 0, got {val_size}")
    return val_size


def resolve_val_size(val_size: int | float, n: int, name: str = "val_size") -> int:
    """The number of validation examples out of ``n`` training examples (a fraction is rounded)."""
    check_val_size(val_size, name)
    count = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if count >= n:
        raise ValueError(f"{name}={val_size} leaves no training data out of {n} examples")
    return count


def split_indices(
    n: int,
    val_size: int | float,
    groups: Sequence[object] | np.ndarray | None = None,
    seed: int = SPLIT_SEED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random split of ``range(n)`` into sorted ``(train_idx, val_idx)``.

    With ``groups`` (one id per example), whole groups go to validation until at least
    ``val_size`` examples are there, so near-duplicates (GTSRB's tracks of one physical
    sign) never straddle the split.
    """
    count = resolve_val_size(val_size, n)
    gen = torch.Generator().manual_seed(seed)
    if count == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    if groups is None:
        perm = torch.randperm(n, generator=gen)
        val = perm[:count]
    else:
        if len(groups) != n:
            raise ValueError(f"got {len(groups)} group ids for {n} examples")
        _, group_of = np.unique(np.asarray(groups), return_inverse=True)
        group_of = torch.from_numpy(group_of.reshape(-1).astype(np.int64))
        sizes = torch.bincount(group_of)
        order = torch.randperm(len(sizes), generator=gen)
        taken = order[: int(torch.searchsorted(torch.cumsum(sizes[order], 0), count)) + 1]
        chosen = torch.zeros(len(sizes), dtype=torch.bool)
        chosen[taken] = True
        val = torch.nonzero(chosen[group_of]).flatten()
        if len(val) >= n:
            raise ValueError(f"val_size={val_size} leaves no training data out of {n} examples")
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 (0..255) or float (in [0, 1]) ``(N, C, H, W)`` tensors.

    Each item is converted to float32 in [0, 1], then ``transform`` (a per-image
    augmentation on a ``(C, H, W)`` float tensor) is applied; labels are int64.
    uint8 storage keeps CIFAR-sized sets at a quarter of their float32 size.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _to_unit_float(self.images[index])
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float32 in [0, 1] and their labels, without ``transform``."""
        return _to_unit_float(self.images), self.labels


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of an in-memory data set (``TensorDataset`` or ``ImageTensorDataset``)."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.tensors()
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    raise TypeError(f"{type(dataset).__name__} does not hold its examples in memory")


def _stored(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The images as stored (uint8 stays uint8: a quarter of the device memory) and the labels."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.images, dataset.labels
    return dataset_tensors(dataset)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` images in [0, 1] (std floored at 1e-3)."""
    x = _to_unit_float(images).transpose(0, 1).reshape(images.shape[1], -1).double()
    mean = x.mean(dim=1)
    std = x.std(dim=1, unbiased=False).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


class EpochSampler(EpochPosition, DistributedSampler):
    """The training order of the plain ``DataLoader`` path: resumable mid-epoch and rank-aware.

    Yields this rank's examples of :func:`robust.data.resident.epoch_batches` (the order the
    device-resident loader uses: a permutation from ``(seed, epoch)`` cut into fixed batches of
    ``batch_size``, batch ``b`` to rank ``b % world_size``), batch after batch, so a ``DataLoader``
    with the same ``batch_size`` makes exactly those batches. :meth:`seek` skips the batches of the
    epoch already trained; :meth:`set_epoch` (called by Lightning before each epoch) starts a new one.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP instead of wrapping it in its
    own (whose batch boundaries depend on the number of processes).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = int(batch_size)
        self.position = 0  # batches of ``self.epoch`` to skip on the next pass

    def _batches(self) -> list[torch.Tensor]:
        return epoch_batches(len(self.dataset), self.batch_size, self.seed, self.epoch, self.shuffle,
                             rank=self.rank, world_size=self.num_replicas)

    def __iter__(self):
        batches = self._batches()[self.position:]
        self.position = 0  # the skip applies to one pass
        return iter(torch.cat(batches).tolist() if batches else [])

    def __len__(self) -> int:
        return sum(len(b) for b in self._batches())


def _check_positive_int(value: object, name: str, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _parameters(init: Callable[..., None]) -> list[inspect.Parameter]:
    """``init``'s parameters after ``self``, with their annotations evaluated (postponed ones are strings)."""
    hints = typing.get_type_hints(init)
    return [p.replace(annotation=hints.get(p.name, p.annotation))
            for p in list(inspect.signature(init).parameters.values())[1:]]


def _save_hyperparameters(module: pl.LightningDataModule, arguments: dict[str, Any]) -> None:
    """Lightning's hyperparameters: the config LightningCLI is building the module from, if it is (a
    checkpoint then rebuilds the module as the CLI would), else ``arguments``."""
    token = _given_hyperparameters.set(arguments) if _given_hyperparameters.get() is None else None
    try:
        module.save_hyperparameters()
    finally:
        if token is not None:
            _given_hyperparameters.reset(token)


def _with_signature(cls: type, target: Callable[..., None], params: list[inspect.Parameter]) -> Callable[..., None]:
    """An ``__init__`` for ``cls`` with the signature ``params``: it fills in the defaults, calls ``target``
    with every argument and, as the outermost constructor, saves them as the hyperparameters."""
    signature = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params],
                                  return_annotation=None)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        target(*bound.args, **bound.kwargs)
        if type(self).__init__ is __init__:
            _save_hyperparameters(self, dict(list(bound.arguments.items())[1:]))

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not p.empty}
    __init__.__annotations__["return"] = None
    __init__.__doc__ = target.__doc__
    __init__.__module__ = cls.__module__
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


class RobustDataModule(pl.LightningDataModule):
    """Base of every data module: batch sizes, workers, a seeded shuffle and fixed splits.

    Subclasses set the class (or instance) attributes ``num_classes``, ``in_channels``,
    ``image_size`` (int, images are square), ``mean``, ``std`` (per-channel, of [0, 1] pixels),
    get ``name`` from :func:`robust.data.registry.register_datamodule`, and implement
    ``_load_fit() -> (train, val | None)`` and ``_load_test() -> test``, called from ``setup``.

    A subclass's ``__init__`` takes its own parameters and ``**options``, which it passes on to its
    parent; its signature, which jsonargparse reads for ``robust fit --help``, lists its own
    parameters and then its parent's (keyword-only), each with its default. A subclass changes an
    inherited default with a class keyword: ``class _CIFAR(TorchvisionDataModule, augment=True)``.
    The arguments of the outermost constructor are saved as Lightning's hyperparameters.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: seeds the training order (a permutation per epoch from ``(seed, epoch)``, the same for the
            ``DataLoader`` and the device-resident path) and the device-resident augmentation; splits
            never depend on it. The training order is resumable mid-epoch (:class:`EpochSampler`).
        device_resident: hold every split on the training device as uint8 and make batches there,
            with the augmentation done on the device too (:class:`robust.data.resident.ResidentLoader`);
            for data sets that fit in device memory. On the CPU the same loader runs on host tensors.
    """

    name: str = ""
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init_subclass__(cls, **defaults: Any) -> None:
        super().__init_subclass__()
        own = cls.__dict__.get("__init__")
        if own is None and not defaults:
            return  # the parent's __init__ and signature serve as they are
        parent = cls.__mro__[1].__init__
        params = _parameters(own or parent)
        if own is not None and any(p.kind is p.VAR_KEYWORD for p in params):
            named = {p.name for p in params}
            params = [p for p in params if p.kind is not p.VAR_KEYWORD]
            params += [p.replace(kind=p.KEYWORD_ONLY) for p in _parameters(parent)
                       if p.name not in named and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = set(defaults) - {p.name for p in params}
        if unknown:
            raise TypeError(f"{cls.__name__}: no parameter {sorted(unknown)} to give a default to")
        params = [p.replace(default=defaults[p.name]) if p.name in defaults else p for p in params]
        cls.__init__ = _with_signature(cls, own or parent, sorted(params, key=lambda p: p.kind))

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int(batch_size, "batch_size")
        if eval_batch_size is not None:
            _check_positive_int(eval_batch_size, "eval_batch_size")
        _check_positive_int(num_workers, "num_workers", allow_zero=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.device_resident = bool(device_resident)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # -- what subclasses implement -------------------------------------------------
    def _load_fit(self) -> tuple[Dataset, Dataset | None]:
        raise NotImplementedError

    def _load_test(self) -> Dataset:
        raise NotImplementedError

    def _augmentation(self) -> tuple[int, bool]:
        """``(crop padding, flip)`` of the training augmentation (``(0, False)``: none)."""
        return 0, False

    # -- Lightning hooks -----------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set, self.val_set = self._load_fit()
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._load_test()

    def train_dataloader(self) -> DataLoader | ResidentLoader:
        self._ensure("fit")
        if self.device_resident:
            padding, flip = self._augmentation()
            return self._resident(self.train_set, self.batch_size, shuffle=True, crop_padding=padding, flip=flip)
        rank, world = self._rank()
        sampler = EpochSampler(self.train_set, self.batch_size, seed=self.seed, rank=rank, world_size=world)
        return self._loader(self.train_set, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | ResidentLoader | list:
        self._ensure("fit")
        if self.val_set is None:
            return []
        if self.device_resident:
            return self._resident(self.val_set, self.eval_batch_size)
        return self._loader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader | ResidentLoader:
        self._ensure("test")
        if self.device_resident:
            return self._resident(self.test_set, self.eval_batch_size)
        return self._loader(self.test_set, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- in-memory access ----------------------------------------------------------
    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split as ``(x, y)`` (float32 in [0, 1], int64), without augmentation."""
        self._ensure("fit")
        return dataset_tensors(self.train_set)

    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation split (checkpoint selection) as ``(x, y)`` tensors."""
        self._ensure("fit")
        if self.val_set is None:
            raise ValueError(f"{self.name}: no validation split (val_size=0)")
        return dataset_tensors(self.val_set)

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out test split as ``(x, y)`` tensors."""
        self._ensure("test")
        return dataset_tensors(self.test_set)

    # -- helpers -------------------------------------------------------------------
    def _ensure(self, stage: str) -> None:
        missing = self.train_set is None if stage == "fit" else self.test_set is None
        if missing:
            self.setup(stage)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: EpochSampler | None = None) -> DataLoader:
        # its own generator: the DataLoader draws a seed for its workers at every ``iter()``, which must
        # not advance the global RNG (random starts, noise) differently in a resumed run
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _resident(self, dataset: Dataset, batch_size: int, shuffle: bool = False, crop_padding: int = 0,
                  flip: bool = False) -> ResidentLoader:
        """A :class:`ResidentLoader` on the trainer's device (CPU without a trainer), one shard per rank."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world = self._rank()
        images, labels = _stored(dataset)
        return ResidentLoader(images, labels, batch_size, device, shuffle=shuffle, seed=self.seed,
                              crop_padding=crop_padding, flip=flip, rank=rank, world_size=world)

    def split_sizes(self) -> dict[str, int]:
        """Number of examples per split (sets them up if needed)."""
        self._ensure("fit")
        self._ensure("test")
        return {
            "train": len(self.train_set),
            "val": 0 if self.val_set is None else len(self.val_set),
            "test": len(self.test_set),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}, image_size={self.image_size})"
        )

    __str__ = __repr__  # Lightning's __str__ builds every dataloader, i.e. loads the data
