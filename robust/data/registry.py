"""Data-module registry: ``create_datamodule(name, **kw)``, as ``robust.models.create`` for models."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from robust.data.base import RobustDataModule

_REGISTRY: dict[str, type[RobustDataModule]] = {}
Module = TypeVar("Module", bound="type[RobustDataModule]")


def register_datamodule(name: str) -> Callable[[Module], Module]:
    """Class decorator: make the data module available as ``create_datamodule(name)``; ``name`` becomes
    its ``name`` attribute (the data set's name in reports and messages)."""

    def decorator(cls: Module) -> Module:
        if name in _REGISTRY:
            raise ValueError(f"data module {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_datamodules() -> list[str]:
    """Registered names."""
    return sorted(_REGISTRY)


def create_datamodule(name: str, **kwargs: Any) -> RobustDataModule:
    """Build the data module registered as ``name`` (case-insensitive; ``-`` reads as ``_``)."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(list_datamodules())}")
    cls = _REGISTRY[key]
    accepted = datamodule_arguments(key)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"data set {key!r} takes no argument {', '.join(map(repr, unknown))}; "
                         f"its arguments: {', '.join(accepted) or 'none'}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"data set {key!r}: {err}; its arguments: {', '.join(accepted)}") from None
    return cls(**kwargs)


def datamodule_arguments(name: str) -> list[str]:
    """The keyword arguments the data module registered as ``name`` accepts."""
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
