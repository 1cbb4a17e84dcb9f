"""Any torchvision classifier by name, sized for ``num_classes`` and, if asked, small inputs.

Models are built with ``weights=None``, so nothing is downloaded; a ``weights``
argument is passed to torchvision only when a caller gives it explicitly (Python, or
``--model-args`` on the command line), and its errors surface as they are (pretrained
heads have 1000 classes; to start from pretrained weights, load a state_dict instead).
A spec from elsewhere (a checkpoint, an ``hparams_file``, a recipe) never carries one:
:func:`robust.base.spec.check_role` refuses it before anything is built, and a
checkpoint stores the spec with ``weights=None`` beside the weights themselves.
Inputs are images in [0, 1]; given ``mean``/``std``, a
:class:`~robust.models.Normalize` is the first layer.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torchvision.models as tvm
from torch import nn

from robust.models.normalize import with_normalize

SMALL_INPUT = 64


def torchvision_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``torchvision.models.<name>`` with a ``num_classes`` head.

    Args:
        name: a classifier in ``torchvision.models.list_models(module=torchvision.models)``.
        num_classes: size of the classification head (set at construction).
        in_channels: input channels; the first convolution is rebuilt when not 3.
        input_size: side of the (square) input images. At most 64, ResNets (and
            ResNeXts, wide ResNets, DenseNets) get the CIFAR stem: a 3x3 stride-1
            convolution and no max-pooling. ViTs get ``image_size=input_size``.
        mean, std: per-channel normalisation applied as the first layer.
        **kwargs: passed to the torchvision constructor (``weights``, ``dropout``, ...).
    """
    check_torchvision_name(name)
    if input_size is not None and (not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1):
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    kwargs.setdefault("weights", None)
    if name.startswith("vit_") and input_size is not None:
        kwargs.setdefault("image_size", input_size)
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = tvm.get_model(name, num_classes=num_classes, **kwargs)
    if input_size is not None and input_size <= SMALL_INPUT:
        _small_input_stem(model, in_channels)
    _set_in_channels(model, in_channels)
    return with_normalize(model, mean, std)


def check_torchvision_name(name: str) -> None:
    """Raise a ``ValueError`` unless ``name`` is a torchvision classifier (naming close matches)."""
    valid = tvm.list_models(module=tvm)
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown torchvision classifier {name!r}{hint}; "
            "torchvision.models.list_models(module=torchvision.models) lists the valid names"
        )


def _cifar_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _small_input_stem(model: nn.Module, in_channels: int) -> None:
    if isinstance(model, tvm.ResNet):
        model.conv1 = _cifar_conv(in_channels, model.conv1.out_channels)
        model.maxpool = nn.Identity()
    elif isinstance(model, tvm.DenseNet):
        model.features.conv0 = _cifar_conv(in_channels, model.features.conv0.out_channels)
        model.features.pool0 = nn.Identity()


def _set_in_channels(model: nn.Module, in_channels: int) -> None:
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ValueError(f"cannot adapt the grouped first convolution {name!r} to {in_channels} input channels")
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
