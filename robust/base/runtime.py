"""Small helpers shared by training, evaluation, certification and export: where a model lives, eval
mode, batched logits, full float32, and the performance switches (bf16 autocast, channels_last,
conv-BatchNorm folding, cuDNN autotuning)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from robust.base.errors import InputError


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


class ModelDataMismatch(InputError, ValueError):
    """The model cannot take the data's images, or its logits do not match the data's classes."""


def expected_input(model: nn.Module) -> str | None:
    """What ``model`` takes, as far as its spec or first layer says: ``"1x8x8 images"``,
    ``"3-channel images"``, ``"64 values per image"``; ``None`` when nothing says."""
    from robust.base.spec import to_spec

    spec = to_spec(model)
    args = spec.get("init_args", {}) if isinstance(spec, dict) else {}
    if isinstance(args, dict) and isinstance(args.get("in_channels"), int) and isinstance(args.get("input_size"), int):
        return f"{args['in_channels']}x{args['input_size']}x{args['input_size']} images"
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return f"{module.in_channels}-channel images"
        if isinstance(module, nn.Linear):
            return f"{module.in_features} values per image"
    return None


def check_fits(model: nn.Module, x: torch.Tensor, num_classes: int | None = None,
               labels: torch.Tensor | None = None, data: str = "the data") -> int:
    """Run ``model`` on one image of ``x`` (eval mode, no gradients, on the model's device) and return
    the number of logits; raise :class:`ModelDataMismatch` naming both sides when the images do not go
    through, the output is not ``(1, K)``, ``K`` differs from ``num_classes`` (the data's exact class
    count, where it has one) or a label in ``labels`` is ``>= K``."""
    shape = "x".join(map(str, x.shape[1:]))
    wants = expected_input(model)
    takes = f" (it takes {wants})" if wants and not wants.startswith(f"{shape} ") else ""
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x[:1].to(model_device(model)))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelDataMismatch(f"the model does not fit {data}: its images are {shape}{takes}; "
                                f"one forward pass failed: {reason}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelDataMismatch(f"the model does not fit {data}: on one {shape} image it returns {got}, "
                                "not (1, number of classes) logits")
    classes = int(out.shape[1])
    if num_classes is not None and classes != num_classes:
        raise ModelDataMismatch(f"the model outputs {classes} classes but {data} has {num_classes}: "
                                "give a model with a head for this data's classes")
    if labels is not None and labels.numel() and int(labels.max()) >= classes:
        raise ModelDataMismatch(f"{data} has label {int(labels.max())} but the model outputs only {classes} "
                                f"classes (0..{classes - 1})")
    return classes


# --- performance switches (bf16 autocast, channels_last, conv-BN folding, cuDNN autotuning) -------------

PRECISIONS = ("32", "bf16")
"""Numeric precision of a forward pass: ``"32"`` (float32) or ``"bf16"`` (bfloat16 autocast)."""


def check_precision(value: str, field: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming ``field``."""
    value = str(value)
    if value not in PRECISIONS:
        raise ValueError(f"{field} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def autocast(device: torch.device | str, precision: str):
    """A context that runs eligible ops in bfloat16 on ``device`` (CUDA or CPU) for ``"bf16"``,
    and does nothing for ``"32"``. Gradients w.r.t. float32 inputs stay float32."""
    if check_precision(precision) == "32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


class Autocast(nn.Module):
    """``model`` run under bf16 autocast, returning float32 logits, so that any attack (ours or
    torchattacks') runs in bf16 without knowing it. Parameters are shared with ``model``."""

    def __init__(self, model: nn.Module, precision: str = "bf16") -> None:
        super().__init__()
        self.model = model
        self.precision = check_precision(precision)
        self.train(model.training)  # the wrapper's mode is the model's (attacks save and restore it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.precision):
            return self.model(x).float()


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-d image batch in NHWC memory order (cuDNN's and oneDNN's fast layout); other tensors as is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that follows a convolution folded into it
    (one kernel instead of two; the same function up to float rounding). A model ``torch.fx`` cannot
    trace is returned unchanged. Only for inference: the copy's BatchNorm statistics are frozen."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval(), inplace=True)
    except Exception:  # noqa: BLE001 - data-dependent control flow: fall back to the model itself
        return model


def fast_cuda(device: torch.device | str) -> None:
    """On CUDA, let cuDNN pick the fastest convolution algorithms for the shapes it sees
    (``cudnn.benchmark``); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
