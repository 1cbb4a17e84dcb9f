"""Interval bound propagation (Gowal et al. 2018, "On the Effectiveness of Interval Bound
Propagation for Training Verifiably Robust Models").

The model is traced with :mod:`torch.fx` and every node maps an interval ``[lower, upper]``
to a sound interval on its output: affine layers (Linear, Conv, eval-mode BatchNorm) in
centre-radius form ``(W c + b, |W| r)``, monotone layers (ReLU, pooling, reshapes,
:class:`~robust.models.Normalize`) on both ends separately, residual additions end-wise.
Inputs are images in [0, 1]; ``eps`` is an L-inf radius in the same pixel units, and the
input box is ``[clamp(x - eps, 0, 1), clamp(x + eps, 0, 1)]``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from robust.base.batching import batches, collect
from robust.base.runtime import eval_mode, full_float32, model_device
from robust.base.safe_load import check_finite_weights
from robust.base.stats import accuracy_record
from robust.certify.graph import (  # noqa: F401 - Interval and the error are public names of this module
    AFFINE,
    BATCHNORM,
    MONOTONE_MODULES,
    SHAPE_ATTRS,
    SHAPE_METHODS,
    Interval,
    UnsupportedLayerError,
    check_eval,
    describe_node,
    input_box,
    linf_radius,
    traced_graph,
)

_MONOTONE_FUNCTIONS = {
    torch.flatten, torch.cat, torch.relu, F.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    torch.squeeze, torch.unsqueeze, torch.reshape, operator.getitem,
}
_MONOTONE_METHODS = {"view", "reshape", "flatten", "relu", "contiguous", "squeeze", "unsqueeze", "mean", "sum"}


def _unsupported(what: str, node: fx.Node) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"interval bound propagation does not support {what}: {describe_node(node)}")


def _has_interval(args: Any) -> bool:
    found = False

    def visit(a: Any) -> Any:
        nonlocal found
        found = found or isinstance(a, Interval)
        return a

    fx.node.map_aggregate(args, visit)
    return found


def _end(args: Any, which: str) -> Any:
    return fx.node.map_aggregate(args, lambda a: getattr(a, which) if isinstance(a, Interval) else a)


def _monotone(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Interval:
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    return Interval(fn(*_end(args, "lower"), **_end(kwargs, "lower")), fn(*_end(args, "upper"), **_end(kwargs, "upper")))


def _scale(a: Interval, c: Any) -> Interval:
    lo, hi = a.lower * c, a.upper * c
    return Interval(torch.minimum(lo, hi), torch.maximum(lo, hi))


def _arith(op: str, a: Any, b: Any, node: fx.Node) -> Interval:
    if op == "add":
        if isinstance(a, Interval) and isinstance(b, Interval):
            return Interval(a.lower + b.lower, a.upper + b.upper)
        i, c = (a, b) if isinstance(a, Interval) else (b, a)
        return Interval(i.lower + c, i.upper + c)
    if op == "sub":
        if isinstance(b, Interval):
            return _arith("add", a, Interval(-b.upper, -b.lower), node)
        return Interval(a.lower - b, a.upper - b)
    if op == "mul" and not (isinstance(a, Interval) and isinstance(b, Interval)):
        return _scale(a, b) if isinstance(a, Interval) else _scale(b, a)
    if op == "div" and not isinstance(b, Interval):
        return _scale(a, 1.0 / b)
    raise _unsupported(f"{op} of two bounded tensors" if op == "mul" else f"{op} by a bounded tensor", node)


_ARITH = {
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
}
_ARITH_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}


def _affine(module: nn.Module, a: Interval, node: fx.Node) -> Interval:
    center, radius = a.center, a.radius
    if isinstance(module, nn.Linear):
        return Interval.from_center(module(center), F.linear(radius, module.weight.abs()))
    if module.padding_mode != "zeros":
        raise _unsupported(f"{type(module).__name__} with padding_mode={module.padding_mode!r}", node)
    conv = F.conv2d if isinstance(module, nn.Conv2d) else F.conv1d
    spread = conv(radius, module.weight.abs(), None, module.stride, module.padding, module.dilation, module.groups)
    return Interval.from_center(module(center), spread)


def batchnorm_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm, ``y = scale * x + shift``;
    None without running statistics (then it is not an affine map)."""
    if module.running_mean is None or module.running_var is None:
        return None
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    return scale, shift


def _batchnorm(module: nn.Module, a: Interval, node: fx.Node) -> Interval:
    check_eval(module, node, "interval")
    affine = batchnorm_affine(module)
    if affine is None:
        raise _unsupported(f"{type(module).__name__} without running statistics", node)
    scale, shift = affine
    shape = (1, -1) + (1,) * (a.lower.dim() - 2)
    scale, shift = scale.view(shape), shift.view(shape)
    return Interval.from_center(a.center * scale + shift, a.radius * scale.abs())


def _call_module(module: nn.Module, args: tuple, kwargs: dict, node: fx.Node) -> Any:
    if not _has_interval((args, kwargs)):
        return module(*args, **kwargs)
    a = args[0]
    if len(args) != 1 or kwargs or not isinstance(a, Interval):
        raise _unsupported(f"{type(module).__name__} called with extra arguments", node)
    if isinstance(module, AFFINE):
        return _affine(module, a, node)
    if isinstance(module, BATCHNORM):
        return _batchnorm(module, a, node)
    if isinstance(module, nn.ReLU):
        return Interval(torch.relu(a.lower), torch.relu(a.upper))
    if isinstance(module, nn.Dropout):
        check_eval(module, node, "interval")
        return a
    if isinstance(module, MONOTONE_MODULES):
        return Interval(module(a.lower), module(a.upper))
    raise _unsupported(f"layer {type(module).__name__}", node)


def _call_function(fn: Any, args: tuple, kwargs: dict, node: fx.Node) -> Any:
    if not _has_interval((args, kwargs)):
        return fn(*args, **kwargs)
    if fn in _ARITH and len(args) == 2 and not kwargs:
        return _arith(_ARITH[fn], args[0], args[1], node)
    if fn is operator.neg:
        return Interval(-args[0].upper, -args[0].lower)
    if fn is getattr and args[1] in SHAPE_ATTRS:
        return getattr(args[0].lower, args[1])
    if fn in _MONOTONE_FUNCTIONS:
        return _monotone(fn, args, kwargs)
    raise _unsupported(f"function {getattr(fn, '__qualname__', fn)}", node)


def _call_method(name: str, args: tuple, kwargs: dict, node: fx.Node) -> Any:
    if not _has_interval((args, kwargs)):
        return getattr(args[0], name)(*args[1:], **kwargs)
    if name in SHAPE_METHODS and isinstance(args[0], Interval):
        return getattr(args[0].lower, name)(*args[1:], **kwargs)
    if name in _ARITH_METHODS and len(args) == 2 and not kwargs:
        return _arith(_ARITH_METHODS[name], args[0], args[1], node)
    if name in _MONOTONE_METHODS and isinstance(args[0], Interval) and not _has_interval((args[1:], kwargs)):
        return _monotone(lambda t, *a, **k: getattr(t, name)(*a, **k), args, kwargs)
    raise _unsupported(f"tensor method .{name}()", node)


def _propagate(model: nn.Module, box: Interval) -> tuple[fx.Graph, dict[fx.Node, Any]]:
    """Interval (or constant) value of every node of ``model``'s graph for inputs in ``box``."""
    graph = traced_graph(model)
    env: dict[fx.Node, Any] = {}
    placeholders = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1 and not node.args:
                raise _unsupported("models with more than one input", node)
            env[node] = box if placeholders == 1 else node.args[0]
            continue
        if node.op == "output":
            env[node] = env[node.args[0]] if isinstance(node.args[0], fx.Node) else None
            continue
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "get_attr":
            env[node] = reduce(getattr, node.target.split("."), model)
        elif node.op == "call_module":
            env[node] = _call_module(model.get_submodule(node.target), args, kwargs, node)
        elif node.op == "call_function":
            env[node] = _call_function(node.target, args, kwargs, node)
        elif node.op == "call_method":
            env[node] = _call_method(node.target, args, kwargs, node)
        else:
            raise _unsupported(f"graph operation {node.op}", node)
    return graph, env


def _output(graph: fx.Graph, env: dict[fx.Node, Any]) -> Interval:
    out = env[graph.output_node()] if hasattr(graph, "output_node") else env[list(graph.nodes)[-1]]
    if not isinstance(out, Interval):
        raise UnsupportedLayerError(f"the model's output is not a single tensor of logits: {type(out).__name__}")
    return out


def interval_bounds(model: nn.Module, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound ``(lower, upper)`` bounds on ``model``'s logits over the L-inf ball of radius ``eps``
    (pixel units) around ``x`` intersected with [0, 1] (Gowal et al. 2018, Sec. 3).

    Differentiable in the parameters (IBP training backpropagates through it). BatchNorm and
    dropout must be in eval mode. Raises :class:`UnsupportedLayerError` (a NotImplementedError)
    naming any layer or function it cannot bound.
    """
    graph, env = _propagate(model, input_box(x, linf_radius(eps)))
    out = _output(graph, env)
    return out.lower, out.upper


def _last_linear(model: nn.Module, graph: fx.Graph) -> fx.Node | None:
    last = list(graph.nodes)[-1].args[0]
    if isinstance(last, fx.Node) and last.op == "call_module" and len(last.args) == 1 and not last.kwargs:
        if isinstance(model.get_submodule(last.target), nn.Linear):
            return last
    return None


def elided_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Lower bounds on the margins ``z_y - z_j`` for all classes j, shape (N, num_classes), 0 at j = y.

    The last Linear layer is folded with ``C = e_y - e_j`` before the interval step (Gowal et
    al. 2018, Sec. 3, "elision of the last layer"), which is never looser than
    ``lower_y - upper_j``. If the model does not end in an ``nn.Linear``, this falls back to
    that naive difference. An example is verified at ``eps`` iff every entry with j != y is > 0.
    """
    graph, env = _propagate(model, input_box(x, linf_radius(eps)))
    y = y.to(x.device).long()
    last = _last_linear(model, graph)
    if last is None or not isinstance(env[last.args[0]], Interval):
        out = _output(graph, env)
        margins = out.lower.gather(1, y[:, None]) - out.upper
    else:
        linear: nn.Linear = model.get_submodule(last.target)
        h = env[last.args[0]]
        if h.lower.dim() != 2:
            raise UnsupportedLayerError(f"elision needs a flat input to the last Linear: {describe_node(last)}")
        weight = linear.weight[y][:, None, :] - linear.weight[None]
        margins = torch.einsum("nkd,nd->nk", weight, h.center) - torch.einsum("nkd,nd->nk", weight.abs(), h.radius)
        if linear.bias is not None:
            margins = margins + linear.bias[y][:, None] - linear.bias[None]
    return margins.masked_fill(F.one_hot(y, margins.shape[1]).bool(), 0.0)


def certified(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example bool: every margin bound ``z_y - z_j`` with j != y is > 0."""
    return ((margins > 0) | F.one_hot(y, margins.shape[1]).bool()).all(1)


def verified_accuracy(model: nn.Module, data: Any, eps: float, batch_size: int = 256) -> dict:
    """IBP-verified and clean accuracy of ``model`` at L-inf radius ``eps`` (pixel units).

    ``data`` is an ``(x, y)`` pair of tensors (images in [0, 1]) or an iterable of such batches
    (a DataLoader). An example counts as verified only if it is classified correctly and
    :func:`elided_bounds` proves every other class's logit lower at every point of the ball.
    Returns ``{"verified", "clean"}`` accuracy records, ``eps``, ``n_examples`` and
    ``per_example`` (one bool per example). The model runs in eval mode and is restored.
    """
    eps = linf_radius(eps)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_finite_weights(model, "certify")
    device = model_device(model)
    per_example: list[bool] = []
    clean = 0
    with eval_mode(model):
        with torch.no_grad():
            for x, y in batches(*collect(data), batch_size):
                x, y = x.to(device), y.to(device).long()
                correct = model(x).argmax(1) == y
                with full_float32():
                    proved = certified(elided_bounds(model, x, y, eps), y)
                per_example += (correct & proved).tolist()
                clean += int(correct.sum())
    n = len(per_example)
    return {"verified": accuracy_record(sum(per_example), n), "clean": accuracy_record(clean, n), "eps": eps,
            "n_examples": n, "per_example": per_example}
