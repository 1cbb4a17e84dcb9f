"""Model registry: ``create(name, num_classes, **kw)`` as in timm's ``create_model``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor ``f(num_classes, **kw)`` available as ``create(name)``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Registered names; any ``torchvision:<name>`` classifier is accepted as well."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (or ``torchvision:<name>``) for ``num_classes``.

    The returned module remembers how it was made, so a checkpoint can store it as a
    plain spec and rebuild it without pickling.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(name, str) and name.startswith("torchvision:"):
        from robust.models.tv import torchvision_model

        model = torchvision_model(name.split(":", 1)[1], num_classes=num_classes, **kwargs)
    elif name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    else:
        raise ValueError(
            f"unknown model {name!r}; registered: {', '.join(list_models())}, or 'torchvision:<name>'"
        )
    object.__setattr__(
        model,
        "_robust_spec",
        {
            "class_path": "robust.models.create",
            "init_args": {"name": name, "num_classes": num_classes, **copy.deepcopy(kwargs)},
        },
    )
    return model
