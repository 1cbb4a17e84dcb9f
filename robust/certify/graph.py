"""What every bound-propagation method shares: the ``torch.fx`` graph of a model (the supported
layers kept as single nodes), the interval type, a node's name for error messages, the eval-mode
check, and the input box of an L-inf ball intersected with [0, 1]."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from robust.base.errors import InputError
from robust.base.threat import parse_radius
from robust.models.normalize import Normalize

AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
MONOTONE_MODULES = (Normalize, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Identity)
LEAVES = (*AFFINE, *BATCHNORM, *MONOTONE_MODULES, nn.ReLU, nn.Dropout)
"""Layers traced as single graph nodes (each has a bound rule)."""
SHAPE_METHODS = {"size", "dim"}
SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}
"""Tensor methods and attributes that read a shape, not values: no bounds pass through them."""


class UnsupportedLayerError(InputError, NotImplementedError):
    """A layer or function that a bound-propagation method does not handle."""


@dataclass
class Interval:
    """Element-wise bounds ``lower <= value <= upper``."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def center(self) -> torch.Tensor:
        return (self.upper + self.lower) / 2

    @property
    def radius(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2

    @classmethod
    def from_center(cls, center: torch.Tensor, radius: torch.Tensor) -> "Interval":
        return cls(center - radius, center + radius)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, fx.Graph]" = weakref.WeakKeyDictionary()


def traced_graph(model: nn.Module) -> fx.Graph:
    """The model's ``fx`` graph with the :data:`LEAVES` as single nodes (cached per model)."""
    if model not in _GRAPHS:
        _GRAPHS[model] = _Tracer().trace(model)
    return _GRAPHS[model]


def describe_node(node: fx.Node) -> str:
    """``graph node 'name' (op target) inside Owner 'path'``: where an error happened."""
    stack = node.meta.get("nn_module_stack") or {}
    inside = ""
    if stack:
        path, owner = list(stack.values())[-1]
        inside = f" inside {getattr(owner, '__name__', owner)} {path!r}"
    return f"graph node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)!s}){inside}"


def check_eval(module: nn.Module, node: fx.Node, method: str) -> None:
    """Refuse a layer in training mode (batch statistics, dropout): bounds describe the eval-mode network."""
    if module.training:
        raise ValueError(f"{type(module).__name__} at {describe_node(node)} is in training mode; {method} bounds "
                         "need eval mode (running statistics, no dropout): call model.eval()")


def linf_radius(eps: Any) -> float:
    """An L-inf radius in [0, 1] pixel units (``0.1``, ``"8/255"``); 0 is valid (the clean point)."""
    return parse_radius(eps, "eps", "L-inf radius in [0, 1] pixel units")


def input_box(x: torch.Tensor, eps: float) -> Interval:
    """The L-inf ball of radius ``eps`` around ``x`` intersected with the image box [0, 1]."""
    return Interval((x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0))
