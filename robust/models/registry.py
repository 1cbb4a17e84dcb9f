"""Model registry: ``create(name, num_classes, **kw)`` as in timm's ``create_model``."""

from __future__ import annotations

import collections.abc
import copy
import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from robust.base.errors import InputError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class ModelArgumentError(InputError, ValueError):
    """A model name or constructor argument that cannot build the model; the message names the
    argument and the arguments the model accepts."""


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor ``f(num_classes, **kw)`` available as ``create(name)``.

    A factory that passes ``**kwargs`` on to a class shows the class's arguments by setting its
    ``__signature__`` (:func:`forwarded_signature`), so that they are checked before it runs."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def forwarded_signature(cls: type, *fixed: str) -> inspect.Signature:
    """The signature of ``cls`` without the arguments ``fixed`` sets: for a factory's ``__signature__``
    when it passes ``**kwargs`` on to ``cls``."""
    signature = inspect.signature(cls, eval_str=True)
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in fixed])


def list_models() -> list[str]:
    """Registered names; any ``torchvision:<name>`` classifier is accepted as well."""
    return sorted(_REGISTRY)


def model_arguments(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments (besides ``num_classes``) of the model registered as ``name`` or of
    ``torchvision:<name>``, with their annotations and defaults; a ``**kwargs`` entry means that further
    keywords go on to another constructor."""
    if isinstance(name, str) and name.startswith("torchvision:"):
        from robust.models.tv import check_torchvision_name, torchvision_model

        try:
            check_torchvision_name(name.split(":", 1)[1])
        except ValueError as err:
            raise ModelArgumentError(str(err)) from None
        fn: Callable[..., Any] = torchvision_model
    elif isinstance(name, str) and name in _REGISTRY:
        fn = _REGISTRY[name]
    else:
        raise ModelArgumentError(
            f"unknown model {name!r}; registered: {', '.join(list_models())}, or 'torchvision:<name>'")
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError):
        signature = inspect.signature(fn)
    return {p.name: p for p in signature.parameters.values()
            if p.name not in ("name", "num_classes") and p.kind is not p.VAR_POSITIONAL}


def check_model_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse, naming the argument and the ones ``name`` accepts, an unknown keyword, a value of the
    wrong type (checked against the constructor's annotations), a non-finite float, or an integer
    below 1 (every integer argument of these models is a size or a count)."""
    params = model_arguments(name)
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = describe_arguments(name)
    for key, value in kwargs.items():
        if key == "num_classes":
            raise ModelArgumentError(f"model {name!r}: num_classes is set by create()'s own argument (from the "
                                     "data's classes), not by a keyword")
        param = params.get(key)
        if param is None or param.kind is param.VAR_KEYWORD:
            if open_ended:
                continue
            raise ModelArgumentError(f"model {name!r} takes no argument {key!r}; its arguments: {accepted}")
        annotation = param.annotation
        if not _fits(value, annotation):
            raise ModelArgumentError(f"model {name!r}: argument {key!r} must be {_type_name(annotation)}, got "
                                     f"{value!r}; its arguments: {accepted}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ModelArgumentError(f"model {name!r}: argument {key!r} is a size or count and must be >= 1, "
                                     f"got {value!r}")


def describe_arguments(name: str) -> str:
    """``"in_channels=1, input_size=28, ..."``: the arguments of ``name`` with their defaults."""
    parts = []
    for p in model_arguments(name).values():
        if p.kind is p.VAR_KEYWORD:
            parts.append("and the torchvision constructor's keywords")
        else:
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts) or "none"


def create(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (or ``torchvision:<name>``) for ``num_classes``.

    The arguments are checked first (:func:`check_model_arguments`); a constructor that still
    refuses them raises :class:`ModelArgumentError` naming the model. The returned module remembers
    how it was made, so a checkpoint can store it as a plain spec and rebuild it without pickling.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ModelArgumentError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    check_model_arguments(name, kwargs)
    try:
        if name.startswith("torchvision:"):
            from robust.models.tv import torchvision_model

            model = torchvision_model(name.split(":", 1)[1], num_classes=num_classes, **kwargs)
        else:
            model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    except ModelArgumentError:
        raise
    except (TypeError, ValueError) as err:
        raise ModelArgumentError(f"model {name!r}: {err}; its arguments: {describe_arguments(name)}") from None
    except (RuntimeError, MemoryError) as err:  # e.g. a size whose weights do not fit in memory
        raise ModelArgumentError(f"model {name!r} cannot be built with {kwargs}: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    object.__setattr__(
        model,
        "_robust_spec",
        {
            "class_path": "robust.models.create",
            "init_args": {"name": name, "num_classes": num_classes, **copy.deepcopy(kwargs)},
        },
    )
    return model


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON-like ``value`` matches a constructor annotation (what cannot be judged passes)."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (collections.abc.Sequence, list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis or origin is not tuple) else Any
        return all(_fits(v, item) for v in value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    if annotation is float:
        return "a finite number"
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("collections.abc.", "").replace("typing.", "").replace("NoneType", "None")
