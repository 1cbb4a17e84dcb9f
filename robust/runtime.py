"""Small helpers shared by evaluation, certification and export: where a model lives, eval mode,
batched logits, full float32."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with the whole model in eval mode; restore every submodule's own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def full_float32() -> Iterator[None]:
    """Run the block without TF32 in CUDA matmuls and convolutions (10-bit mantissas), then restore
    the settings: certified bounds must not lose more precision than float32 rounding."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def batched_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model`` on ``x`` in batches under ``no_grad``: float32 logits on the CPU. Batches move to the
    model's device (an ``nn.Module``'s; CPU for any other callable, e.g. an exported model)."""
    device = model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The number of logits ``model`` returns, from one image of ``x`` (moved to the model's device)."""
    with torch.no_grad():
        return int(model(x[:1].to(model_device(model))).shape[1])
