"""Device-resident batches: a whole split held on the accelerator as uint8, augmented there.

For data sets that fit in device memory (MNIST, CIFAR, SVHN, GTSRB at 32x32; CIFAR-10's
training split is 150 MB as uint8), copying every batch from host memory, and cropping and
flipping each image in a Python worker, costs more than an FGSM training step on a modern
GPU. As in the fastest CIFAR-10 training code (airbench), the split is moved to the device
once; each batch is gathered there, converted to float in [0, 1], randomly cropped (zero
padding, as ``torchvision.transforms.v2.RandomCrop(padding=p)``) and flipped, all as a few
batched tensor operations.

Randomness is a function of ``(seed, epoch)`` for the order and of ``(seed, epoch, batch)``
for the augmentation, so an epoch is the same however it is split across restarts, and the
loader's position (``state_dict``) is two integers. On the CPU the same code runs on host
tensors, so a recipe that asks for it works everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence, so nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = False,
                  rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """The index batches rank ``rank`` of ``world_size`` takes in ``epoch``: one order of ``range(n)``
    (a permutation from ``(seed, epoch)`` when shuffling), cut into batches of ``batch_size``; rank
    ``r`` takes batches ``r, r + world_size, ...``, cut to the same count on every rank when shuffling.

    Batch boundaries do not depend on ``world_size``: ``k`` ranks at batch ``b`` together see the
    examples one process sees at batch ``k * b`` (same global batch, same examples per step).
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch)))
    else:
        order = torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    mine = batches[rank::world_size]
    if shuffle and world_size > 1:
        mine = mine[: len(batches) // world_size]
    return mine


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per image, a random ``H x W`` window of ``x`` zero-padded by ``padding`` pixels on each side,
    then (with ``flip``) a horizontal flip with probability 1/2. ``x`` is (N, C, H, W); the
    offsets and flips are drawn from ``generator`` on ``x``'s device."""
    n, _, h, w = x.shape
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (2, n), device=x.device, generator=generator)
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        x = padded.gather(2, rows.expand(n, x.shape[1], h, padded.shape[3])).gather(3, cols.expand(n, x.shape[1], h, w))
    if flip:
        mirror = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


class EpochPosition:
    """Where a resumable loader is: ``epoch`` and ``position`` (batches of it already handed out),
    for the order drawn from ``seed``. Shared by :class:`ResidentLoader` and
    :class:`robust.data.base.EpochSampler`; the class sets ``epoch``, ``position`` and ``seed``."""

    epoch: int
    position: int
    seed: int

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (Lightning calls this before each one); a no-op for the current epoch."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def seek(self, epoch: int, position: int) -> None:
        """Continue ``epoch`` after its first ``position`` batches (resuming mid-epoch)."""
        self.epoch, self.position = int(epoch), int(position)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"the checkpoint's data order was drawn with seed {state['seed']}, this run's with "
                             f"{self.seed}: resume with the same data seed")
        self.seek(state["epoch"], state["position"])


class ResidentLoader(EpochPosition):
    """Batches ``(x, y)`` of ``images``/``labels`` kept on ``device``: ``x`` float32 in [0, 1].

    Args:
        images: (N, C, H, W) uint8 (0..255) or float images in [0, 1]; moved to ``device`` once.
        labels: (N,) class indices.
        batch_size: images per batch; the last batch is smaller unless ``drop_last``.
        device: where the split lives and the batches are made.
        shuffle: a fresh permutation every epoch, from ``(seed, epoch)``.
        seed: seeds the order and the augmentation.
        crop_padding / flip: augmentation (0 / False: none).
        rank / world_size: for distributed training, rank ``r`` takes batches ``r, r + world_size, ...``
            of one shared order, cut to the same count on every rank (fixed batch boundaries: no
            example is duplicated, and at most ``world_size - 1`` batches per epoch are left out
            when shuffling, a different few each epoch). Without shuffling nothing is left out.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = False, seed: int = 0, crop_padding: int = 0, flip: bool = False,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"images must be (N, C, H, W) with one label each, got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        if batch_size < 1 or crop_padding < 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad loader settings: batch_size={batch_size}, crop_padding={crop_padding}, "
                             f"rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.crop_padding, self.flip, self.drop_last = int(crop_padding), bool(flip), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self.sampler = self  # Lightning calls ``loader.sampler.set_epoch(epoch)`` before each epoch
        self.batch_sampler = None

    def _batches(self) -> list[torch.Tensor]:
        return epoch_batches(len(self.labels), self.batch_size, self.seed, self.epoch, self.shuffle, self.drop_last,
                             self.rank, self.world_size)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches()
        if self.position >= len(batches):  # the previous pass ended: this is the next epoch
            self.epoch, self.position = self.epoch + 1, 0
            batches = self._batches()
        generator = torch.Generator(device=self.device)
        while self.position < len(batches):
            index = self.position
            self.position += 1
            yield self._make(batches[index].to(self.device, non_blocking=True), generator, index)
        # the position stays at the end until the next ``__iter__`` or ``set_epoch``

    def _make(self, index: torch.Tensor, generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.crop_padding or self.flip:
            # keyed by the global batch number, so a batch is augmented alike on any number of ranks
            generator.manual_seed(_seed(self.seed, self.epoch, self.rank + batch * self.world_size))
            x = random_crop_flip(x, self.crop_padding, self.flip, generator)
        return x, self.labels[index]
