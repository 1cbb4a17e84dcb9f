"""CROWN linear-relaxation bounds (Zhang et al. 2018, "Efficient Neural Network Robustness
Certification with General Activation Functions", NeurIPS) for feed-forward ReLU networks.

The model is traced with :mod:`torch.fx` (the leaf rules of :mod:`robust.certify.ibp`) into one
chain of affine layers (Linear, Conv1d/Conv2d, eval-mode BatchNorm, :class:`~robust.models.Normalize`,
reshapes) and ReLUs. To bound ``a . z`` for an output (or pre-activation) ``z``, the row ``a`` is
propagated backwards to the input:

* through an affine layer ``z = W h + b``: ``a . z = (W^T a) . h + a . b`` (an equality; the
  transpose of a convolution is its input gradient, so no dense matrix is built);
* through a ReLU ``z = relu(h)`` with pre-activation bounds ``l <= h <= u``: stable neurons are
  the identity (``l >= 0``) or zero (``u <= 0``); an unstable one (``l < 0 < u``) lies between the
  lower line ``alpha h`` (``alpha = 1`` if ``u > -l`` else 0, the adaptive choice of the paper)
  and the upper line ``u / (u - l) (h - l)`` for every ``h`` in ``[l, u]``. For a *lower* bound a
  positive coefficient takes the lower line and a negative one the upper line, so
  ``a . relu(h) >= a' . h + c`` holds on the whole box (the linear bound is sound);
* at the input, ``A x + c`` is minimised exactly over the box ``[l, u] = [clamp(x - eps, 0, 1),
  clamp(x + eps, 0, 1)]``: ``A^+ l + A^- u + c``.

An upper bound on ``a . z`` is minus the lower bound on ``-a . z``, which uses exactly the
opposite lines. Every step is an inequality that holds for all inputs in the box, so the result
bounds ``a . z`` at every point of the ball; it is only as tight as the pre-activation bounds
``l, u``, which are computed the same way (one backward pass per pre-activation neuron, in
chunks whose memory stays under :data:`CHUNK_BYTES`) and intersected with interval bounds (IBP)
propagated from the previous tightened layer -- still sound, never looser. Only neurons that
are unstable under the current bounds need tight bounds (a stable neuron's relaxation is exact
whatever its bounds), so only those are refined, per example.

Final bounds are *not* intersected with IBP (so that the two can be compared); pass
``intersect_ibp=True`` to :func:`crown_margins` for the tighter of the two. Everything runs under
:func:`torch.no_grad` on the device of ``x`` and leaves the model (and its mode) untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from math import prod
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from robust.certify.graph import (
    SHAPE_ATTRS, SHAPE_METHODS, Interval, UnsupportedLayerError, check_eval, describe_node, input_box, linf_radius,
    traced_graph)
from robust.certify.ibp import batchnorm_affine, elided_bounds
from robust.models.normalize import Normalize

CHUNK_BYTES = 256 * 2**20
"""Memory budget (bytes) for one chunk of backward-propagated coefficients."""
_TEMPORARIES = 4  # live tensors of a chunk's size during one backward step
_RESHAPE_METHODS = {"view", "reshape", "flatten"}


def _unsupported(what: str, node: fx.Node) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"CROWN does not support {what}: {describe_node(node)}. CROWN supports feed-forward ReLU networks (one "
        "chain of Linear, Conv, eval-mode BatchNorm, Normalize, ReLU, Flatten/view/reshape, Identity and "
        "eval-mode Dropout); use robust.certify.ibp.interval_bounds for other graphs"
    )


class _Affine:
    """``out = L(in) + bias`` per example; shapes exclude the batch dimension."""

    def __init__(self, in_shape: torch.Size, out_shape: torch.Size) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        """``L^T`` applied to every row of ``a`` (B, K, *out_shape) -> (B, K, *in_shape)."""
        raise NotImplementedError

    def offset(self, a: torch.Tensor) -> torch.Tensor | float:
        """``a . bias`` per row, (B, K)."""
        raise NotImplementedError

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class _Dense(_Affine):
    def __init__(self, m: nn.Linear, in_shape: torch.Size, out_shape: torch.Size) -> None:
        super().__init__(in_shape, out_shape)
        self.weight, self.bias = m.weight, m.bias

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.weight

    def offset(self, a: torch.Tensor) -> torch.Tensor | float:
        if self.bias is None:
            return 0.0
        return a.reshape(*a.shape[:2], -1, a.shape[-1]).sum(2) @ self.bias

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        center = F.linear((upper + lower) / 2, self.weight, self.bias)
        radius = F.linear((upper - lower) / 2, self.weight.abs())
        return center - radius, center + radius


class _Conv(_Affine):
    def __init__(self, m: nn.Conv1d | nn.Conv2d, padding: tuple[int, ...], in_shape: torch.Size,
                 out_shape: torch.Size) -> None:
        super().__init__(in_shape, out_shape)
        self.weight, self.bias = m.weight, m.bias
        self.args = (m.stride, padding, m.dilation, m.groups)
        two_d = isinstance(m, nn.Conv2d)
        self.conv = F.conv2d if two_d else F.conv1d
        self.transpose = torch.nn.grad.conv2d_input if two_d else torch.nn.grad.conv1d_input

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        b, k = a.shape[:2]
        grad = self.transpose((b * k, *self.in_shape), self.weight, a.reshape(b * k, *self.out_shape), *self.args)
        return grad.view(b, k, *self.in_shape)

    def offset(self, a: torch.Tensor) -> torch.Tensor | float:
        return 0.0 if self.bias is None else a.flatten(3).sum(-1) @ self.bias

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        center = self.conv((upper + lower) / 2, self.weight, self.bias, *self.args)
        radius = self.conv((upper - lower) / 2, self.weight.abs(), None, *self.args)
        return center - radius, center + radius


class _Elementwise(_Affine):
    """``out = scale * in + shift`` element-wise (eval-mode BatchNorm, Normalize)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, shape: torch.Size) -> None:
        super().__init__(shape, shape)
        self.scale, self.shift = scale.expand(shape), shift.expand(shape).reshape(-1)

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.scale

    def offset(self, a: torch.Tensor) -> torch.Tensor | float:
        return a.flatten(2) @ self.shift

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = lower * self.scale, upper * self.scale
        shift = self.shift.view(self.out_shape)
        return torch.minimum(lo, hi) + shift, torch.maximum(lo, hi) + shift


class _Reshape(_Affine):
    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return a.reshape(*a.shape[:2], *self.in_shape)

    def offset(self, a: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = lower.shape[0]
        return lower.reshape(n, *self.out_shape), upper.reshape(n, *self.out_shape)


@dataclass
class _ReLU:
    shape: torch.Size


_Layer = _Affine | _ReLU


def _conv_padding(m: nn.Conv1d | nn.Conv2d, node: fx.Node) -> tuple[int, ...]:
    if m.padding_mode != "zeros":
        raise _unsupported(f"{type(m).__name__} with padding_mode={m.padding_mode!r}", node)
    if not isinstance(m.padding, str):
        return tuple(m.padding)
    pads = m._reversed_padding_repeated_twice  # (right, left) pairs per dim, last dim first
    if any(pads[i] != pads[i + 1] for i in range(0, len(pads), 2)):
        raise _unsupported(f"{type(m).__name__} with asymmetric padding={m.padding!r}", node)
    return tuple(pads[::2][::-1])


def _batchnorm(m: nn.BatchNorm1d | nn.BatchNorm2d, node: fx.Node, shape: torch.Size) -> _Elementwise:
    check_eval(m, node, "CROWN")
    affine = batchnorm_affine(m)
    if affine is None:
        raise _unsupported(f"{type(m).__name__} without running statistics", node)
    scale, shift = affine
    view = (-1,) + (1,) * (len(shape) - 1)
    return _Elementwise(scale.view(view), shift.view(view), shape)


def _normalize(m: Normalize, node: fx.Node, shape: torch.Size) -> _Elementwise:
    if torch.broadcast_shapes(m.mean.shape, (1, *shape)) != (1, *shape):
        raise _unsupported(f"Normalize of {m.mean.shape[1]} channels on an input of shape {tuple(shape)}", node)
    return _Elementwise((1 / m.std)[0], (-m.mean / m.std)[0], shape)


def _module_layer(m: nn.Module, node: fx.Node, h: torch.Tensor) -> tuple[_Layer | None, torch.Tensor]:
    """The chain layer of leaf module ``m`` (None: the identity) and its value on the input ``h``."""
    shape = h.shape[1:]
    if isinstance(m, nn.ReLU):
        return _ReLU(shape), torch.relu(h)
    if isinstance(m, nn.Dropout):
        check_eval(m, node, "CROWN")
        return None, h
    if isinstance(m, nn.Identity):
        return None, h
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batchnorm(m, node, shape), m(h)
    if isinstance(m, Normalize):
        return _normalize(m, node, shape), m(h)
    out = m(h) if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Flatten)) else None
    if isinstance(m, nn.Linear):
        return _Dense(m, shape, out.shape[1:]), out
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return _Conv(m, _conv_padding(m, node), shape, out.shape[1:]), out
    if isinstance(m, nn.Flatten):
        return _reshape(h, out, node), out
    raise _unsupported(f"layer {type(m).__name__}", node)


def _reshape(h: torch.Tensor, out: Any, node: fx.Node) -> _Reshape:
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != h.shape[0]:
        raise _unsupported("a reshape that does not keep the batch dimension first", node)
    return _Reshape(h.shape[1:], out.shape[1:])


def _evaluate(model: nn.Module, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "get_attr":
        return reduce(getattr, node.target.split("."), model)
    if node.op == "call_module":
        return model.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise _unsupported(f"graph operation {node.op}", node)


def _bounded_layer(model: nn.Module, node: fx.Node, args: tuple, kwargs: dict) -> tuple[_Layer | None, torch.Tensor]:
    """The chain layer computed by ``node``, whose first argument is the bounded tensor ``args[0]``."""
    h = args[0]
    if node.op == "call_module":
        if len(args) != 1 or kwargs:
            raise _unsupported(f"{type(model.get_submodule(node.target)).__name__} called with extra arguments", node)
        return _module_layer(model.get_submodule(node.target), node, h)
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and node.target in (F.relu, torch.relu) or node.op == "call_method" and name == "relu":
        if len(args) != 1 or set(kwargs) - {"inplace"}:
            raise _unsupported(f"relu with extra arguments {args[1:]} {kwargs}", node)
        return _ReLU(h.shape[1:]), torch.relu(h)
    if node.op == "call_function" and node.target in (torch.flatten, torch.reshape) or (
        node.op == "call_method" and name in _RESHAPE_METHODS
    ):
        out = _evaluate(model, node, args, kwargs)
        return _reshape(h, out, node), out
    what = {"call_function": f"function {getattr(node.target, '__qualname__', name)}",
            "call_method": f"tensor method .{name}()"}.get(node.op, f"graph operation {node.op}")
    raise _unsupported(what, node)


def _chain(model: nn.Module, x: torch.Tensor) -> tuple[list[_Layer], int]:
    """The model as a chain of affine layers and ReLUs from the input to the logits, and the
    number of logits."""
    graph = traced_graph(model)
    env: dict[fx.Node, Any] = {}
    tail: fx.Node | None = None  # the last node of the chain so far: the only one a layer may read
    bounded: set[fx.Node] = set()
    chain: list[_Layer] = []
    for node in graph.nodes:
        if node.op == "placeholder":
            if tail is None:
                env[node], tail = x, node
                bounded.add(node)
            elif node.args:
                env[node] = node.args[0]
            else:
                raise _unsupported("models with more than one input", node)
            continue
        if node.op == "output":
            if node.args[0] is not tail:
                raise _unsupported("an output that is not the single tensor at the end of the chain", node)
            continue
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        inputs = [n for n in node.all_input_nodes if n in bounded]
        shape_query = (node.op == "call_method" and node.target in SHAPE_METHODS) or (
            node.op == "call_function" and node.target is getattr and node.args[1] in SHAPE_ATTRS
        )
        if not inputs or shape_query:
            env[node] = _evaluate(model, node, args, kwargs)
            continue
        if len(inputs) > 1 or not node.args or node.args[0] is not inputs[0] or _mentions(
            (node.args[1:], node.kwargs), inputs[0]
        ):
            raise _unsupported("a node with more than one bounded input (a residual connection or multi-input op)", node)
        if inputs[0] is not tail:
            raise _unsupported(f"a branch: {inputs[0].name!r} feeds more than one later node (a residual connection)", node)
        layer, env[node] = _bounded_layer(model, node, args, kwargs)
        if layer is not None:
            chain.append(layer)
        bounded.add(node)
        tail = node
    out = env[tail]
    if out.dim() != 2:
        raise UnsupportedLayerError(f"CROWN needs logits of shape (N, num_classes), got {tuple(out.shape)}")
    return chain, out.shape[1]


def _mentions(args: Any, node: fx.Node) -> bool:
    found = False

    def visit(a: Any) -> Any:
        nonlocal found
        found = found or a is node
        return a

    fx.node.map_aggregate(args, visit)
    return found


@dataclass
class _Relaxation:
    """Linear bounds ``lower_slope h <= relu(h) <= (lower_slope + gap) h + upper_offset`` on ``[l, u]``."""

    lower_slope: torch.Tensor  # (N, 1, *shape): broadcasts over rows
    gap: torch.Tensor  # (N, 1, *shape): upper slope - lower slope, non-zero only where unstable
    upper_offset: torch.Tensor  # (N, D, 1): a right factor for batched row sums


def _relaxation(lower: torch.Tensor, upper: torch.Tensor) -> _Relaxation:
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(lower.dtype)
    upper_slope = torch.where(unstable, upper / (upper - lower), active)
    lower_slope = torch.where(unstable, (upper > -lower).to(lower.dtype), active)
    offset = torch.where(unstable, -upper_slope * lower, torch.zeros_like(lower))
    return _Relaxation(lower_slope.unsqueeze(1), (upper_slope - lower_slope).unsqueeze(1), offset.flatten(1).unsqueeze(-1))


def _concretise(a: torch.Tensor, box: Interval) -> torch.Tensor:
    """``min over the box of a . x`` per row: ``a^+ . lower + a^- . upper = a . lower + a^- . (upper - lower)``, (N, K)."""
    a = a.flatten(2)
    lower = box.lower.flatten(1).unsqueeze(-1)
    return (a @ lower + a.clamp(max=0) @ (box.upper.flatten(1).unsqueeze(-1) - lower)).squeeze(-1)


def _lower_bound(chain: Sequence[_Layer], relax: dict[int, _Relaxation], a: torch.Tensor,
                 const: torch.Tensor, box: Interval) -> torch.Tensor:
    """Lower bounds (N, K) on ``a . z + const`` over the box, ``z`` the output of ``chain``;
    ``a`` is (B, K, *shape) with B = N or 1 (rows shared by all examples)."""
    for i in reversed(range(len(chain))):
        layer = chain[i]
        if isinstance(layer, _ReLU):
            r = relax[i]
            neg = a.clamp(max=0)  # a^+ takes the lower line, a^- the upper one
            const = const + (neg.flatten(2) @ r.upper_offset).squeeze(-1)
            a = torch.addcmul(a * r.lower_slope, neg, r.gap)
        else:
            const = const + layer.offset(a)
            a = layer.backward(a)
    return const + _concretise(a, box)


def _width(chain: Sequence[_Layer]) -> int:
    """The most elements per example and row that a backward pass through ``chain`` holds."""
    shapes = [s for layer in chain for s in
              ((layer.shape,) if isinstance(layer, _ReLU) else (layer.in_shape, layer.out_shape))]
    return max((prod(s) for s in shapes), default=1)


def _chunk(elements_per_row: int, dtype: torch.dtype) -> int:
    return max(1, CHUNK_BYTES // (_TEMPORARIES * dtype.itemsize * elements_per_row))


def _refine(chain: Sequence[_Layer], relax: dict[int, _Relaxation], box: Interval, lower: torch.Tensor,
            upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on the output of ``chain`` (a pre-activation): ``[lower, upper]`` intersected with CROWN
    bounds on every neuron unstable under them (for the examples where it is unstable)."""
    n, shape = lower.shape[0], lower.shape[1:]
    lower, upper = lower.flatten(1).clone(), upper.flatten(1).clone()
    unstable = (lower < 0) & (upper > 0)
    rows = unstable.any(0).nonzero().squeeze(1)
    if not len(rows):
        return lower.view(n, *shape), upper.view(n, *shape)
    relus = [i for i, layer in enumerate(chain) if isinstance(layer, _ReLU)]
    split = relus[-1] + 1 if relus else 0
    below, shared = chain[:split], chain[split:]  # shared: affine, the same for every example
    width = max(prod(shape), _width(shared), 2 * n * _width(below))
    for cols in rows.split(_chunk(width, lower.dtype)):
        a = lower.new_zeros(len(cols), lower.shape[1])
        a[torch.arange(len(cols), device=a.device), cols] = 1
        a, const = a.view(1, len(cols), *shape), lower.new_zeros(1, len(cols))
        for layer in reversed(shared):
            const = const + layer.offset(a)
            a = layer.backward(a)
        if not below:  # affine in the input: exact bounds for every example
            lower[:, cols] = torch.maximum(lower[:, cols], const + _concretise(a, box))
            upper[:, cols] = torch.minimum(upper[:, cols], const - _concretise(-a, box))
            continue
        selected = unstable[:, cols]
        count = selected.sum(1)
        m = int(count.max())
        order = torch.sort(selected.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :m]
        valid = torch.arange(m, device=a.device) < count[:, None]
        both = torch.cat([order, order], 1)  # each example's own unstable rows, for z and for -z
        a, const = a[0][both], const[0][both]
        a[:, m:].neg_()
        const[:, m:].neg_()
        bound = _lower_bound(below, relax, a, const, box)
        example = torch.arange(n, device=a.device)[:, None].expand(n, m)[valid]
        col = cols[order][valid]
        lower[example, col] = torch.maximum(lower[example, col], bound[:, :m][valid])
        upper[example, col] = torch.minimum(upper[example, col], -bound[:, m:][valid])
    return lower.view(n, *shape), upper.view(n, *shape)


def _relaxed(model: nn.Module, x: torch.Tensor, eps: float) -> tuple[list[_Layer], dict[int, _Relaxation], Interval, int]:
    """The chain, the relaxation of each of its ReLUs (by index), the input box and the number of logits."""
    chain, num_classes = _chain(model, x)
    box = input_box(x, eps)
    relax: dict[int, _Relaxation] = {}
    lower, upper = box.lower, box.upper
    for i, layer in enumerate(chain):
        if isinstance(layer, _ReLU):
            lower, upper = _refine(chain[:i], relax, box, lower, upper)
            relax[i] = _relaxation(lower, upper)
            lower, upper = lower.clamp(min=0), upper.clamp(min=0)
        else:
            lower, upper = layer.interval(lower, upper)
    return chain, relax, box, num_classes


def _spec_lower(chain: list[_Layer], relax: dict[int, _Relaxation], box: Interval, spec: torch.Tensor) -> torch.Tensor:
    """Lower bounds (N, K) on ``spec @ logits`` for the rows of ``spec`` (B, K, num_classes), in chunks."""
    width = box.lower.shape[0] * max(_width(chain), prod(box.lower.shape[1:]))
    zero = spec.new_zeros(())
    return torch.cat([_lower_bound(chain, relax, rows, zero, box) for rows in spec.split(_chunk(width, spec.dtype), 1)], 1)


def crown_bounds(model: nn.Module, x: torch.Tensor, eps: Any, C: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound ``(lower, upper)`` bounds, each (N, K), on ``C @ logits`` for every input in the L-inf
    ball of radius ``eps`` (pixel units) around ``x`` intersected with [0, 1].

    ``C`` is a specification matrix per example, (N, K, num_classes) (or (1, K, num_classes),
    shared); None bounds the logits themselves (K = num_classes). ``C`` is folded into the
    backward pass, which is tighter than combining bounds on the logits. The final bounds are
    CROWN's alone (not intersected with IBP); the pre-activation bounds are. Not differentiable.
    Raises :class:`~robust.certify.ibp.UnsupportedLayerError` naming a layer or graph node that
    is not part of a feed-forward ReLU chain, ValueError for train-mode BatchNorm/dropout.
    """
    eps = linf_radius(eps)
    with torch.no_grad():
        chain, relax, box, num_classes = _relaxed(model, x, eps)
        if C is None:
            spec = torch.eye(num_classes, dtype=x.dtype, device=x.device)[None]
        else:
            spec = C.to(device=x.device, dtype=x.dtype)
            if spec.dim() != 3 or spec.shape[0] not in (1, x.shape[0]) or spec.shape[2] != num_classes:
                raise ValueError(
                    f"C must have shape (N, K, num_classes) = ({x.shape[0]}, K, {num_classes}), got {tuple(C.shape)}"
                )
        k = spec.shape[1]
        bound = _spec_lower(chain, relax, box, torch.cat([spec, -spec], 1))
        return bound[:, :k], -bound[:, k:]


def crown_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Any, intersect_ibp: bool = False
                  ) -> torch.Tensor:
    """Lower bounds on the margins ``z_y - z_j`` for all classes j, shape (N, num_classes), 0 at j = y.

    The same contract as :func:`robust.certify.ibp.elided_bounds` (an example is verified iff
    :func:`robust.certify.ibp.certified` holds): ``C = e_y - e_j`` is folded into CROWN's backward
    pass. With ``intersect_ibp`` the result is the element-wise maximum with the IBP elided
    margins (both are sound, so is their maximum); by default it is CROWN's alone.
    """
    eps = linf_radius(eps)
    with torch.no_grad():
        chain, relax, box, num_classes = _relaxed(model, x, eps)
        y = y.to(x.device).long()
        if y.shape != (x.shape[0],) or (y.numel() and (y.min() < 0 or y.max() >= num_classes)):
            raise ValueError(f"y must hold {x.shape[0]} labels in [0, {num_classes}), got shape {tuple(y.shape)}")
        target = F.one_hot(y, num_classes)
        spec = target.to(x.dtype)[:, None, :] - torch.eye(num_classes, dtype=x.dtype, device=x.device)[None]
        margins = _spec_lower(chain, relax, box, spec).masked_fill(target.bool(), 0.0)
        if intersect_ibp:
            margins = torch.maximum(margins, elided_bounds(model, x, y, eps))
        return margins
