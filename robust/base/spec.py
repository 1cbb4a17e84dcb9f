"""Objects as plain specs: ``{"class_path": "pkg.Name", "init_args": {...}}``.

Checkpoints store hyperparameters as specs, never as pickled objects, so they load
with ``torch.load(weights_only=True)``. Specs are rebuilt only from an allowlist of
importable names, checked *before* anything is imported: a checkpoint or config
naming ``os.system`` is refused without running a line of it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import re
from typing import Any

from robust.base.errors import InputError

ALLOWED_PREFIXES: tuple[str, ...] = ("robust.", "torchvision.models.", "torch.nn.")
# Functions a spec may name (everything else it names must be a class).
FACTORIES = frozenset({"robust.models.create"})
# A recipe's trainer section also names Lightning's callbacks, loggers and trainer plugins.
CONFIG_PREFIXES: tuple[str, ...] = ALLOWED_PREFIXES + tuple(
    f"lightning.pytorch.{part}." for part in ("callbacks", "loggers", "strategies", "plugins", "profilers",
                                              "accelerators"))
# Class paths written before the package layout changed, and where they live now: checkpoints and
# configs that name the old path still load.
MOVED: dict[str, str] = {
    "robust.methods.ibp.": "robust.methods.certified.",
}
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class SpecError(InputError, ValueError):
    """A spec that cannot be rebuilt (not allowlisted, malformed, or failing)."""


def check_allowed(class_path: Any, prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> str:
    """Return ``class_path`` if it may be imported, else raise :class:`SpecError`."""
    if not isinstance(class_path, str) or not _DOTTED.match(class_path):
        raise SpecError(f"class_path {class_path!r} is not a dotted import path")
    if not class_path.startswith(prefixes):
        raise SpecError(
            f"class_path {class_path!r} is outside the allowlist "
            f"({', '.join(p + '*' for p in prefixes)}); refusing to import it"
        )
    return class_path


def check_tree(value: Any, where: str = "", prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> None:
    """Check every ``class_path`` (and Lightning's ``_class_path``) nested in ``value`` without
    importing anything; the :class:`SpecError` names the field, e.g. ``model.init_args.block``."""
    if isinstance(value, dict):
        for key in ("class_path", "_class_path"):
            if key in value:
                try:
                    check_allowed(value[key], prefixes)
                except SpecError as exc:
                    if not where:
                        raise
                    raise SpecError(f"{where}: {exc}") from None
        for key, item in value.items():
            check_tree(item, f"{where}.{key}" if where else str(key), prefixes)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_tree(item, f"{where}[{i}]", prefixes)


def current_path(class_path: str) -> str:
    """``class_path`` as the package names it now (see :data:`MOVED`)."""
    for old, new in MOVED.items():
        if class_path.startswith(old) and not class_path.startswith(new):
            return new + class_path[len(old):]
    return class_path


def import_object(class_path: str) -> Any:
    """Import ``a.b.C`` after checking it against the allowlist."""
    check_allowed(class_path)
    class_path = current_path(class_path)
    module_name, _, attr = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"class_path {class_path!r} cannot be imported: {exc}") from exc
    if not callable(obj):
        raise SpecError(f"class_path {class_path!r} is not callable")
    origin = f"{getattr(obj, '__module__', None) or ''}."
    if not origin.startswith(ALLOWED_PREFIXES):  # e.g. a function another module re-exports
        raise SpecError(f"class_path {class_path!r} resolves to {origin}{attr}, outside the allowlist")
    if not inspect.isclass(obj) and class_path not in FACTORIES and not class_path.startswith("torchvision.models."):
        raise SpecError(f"class_path {class_path!r} is a function, not a class or a model factory; refusing to call it")
    return obj


def is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def build(value: Any) -> Any:
    """Rebuild objects from (possibly nested) specs; other values pass through."""
    if is_spec(value):
        check_tree(value)  # the whole tree before the first import
        extra = set(value) - {"class_path", "init_args"}
        if extra:
            raise SpecError(f"spec for {value['class_path']!r} has unknown keys {sorted(extra)}")
        target = import_object(value["class_path"])
        init_args = value.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise SpecError(f"init_args of {value['class_path']!r} must be a mapping")
        kwargs = {k: build(v) for k, v in init_args.items()}
        try:
            return target(**kwargs)
        except TypeError as exc:
            raise SpecError(f"cannot build {value['class_path']!r}: {exc}") from exc
    if isinstance(value, dict):
        return {k: build(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(build(v) for v in value)
    return value


def to_spec(obj: Any) -> Any:
    """The spec of ``obj``; ``None`` when the object cannot be described as one.

    Objects made by :class:`Recorded` classes or ``robust.models.create`` carry their
    spec; dataclasses are described field by field; plain data passes through.
    """
    if obj is None or isinstance(obj, bool):
        return obj
    for plain in (int, float, str):
        if isinstance(obj, plain):
            return plain(obj)
    spec = getattr(obj, "_robust_spec", None)
    if spec is not None:
        return copy.deepcopy(spec)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {
                f.name: to_spec(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
            },
        }
    if isinstance(obj, dict):
        return {k: to_spec(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_spec(v) for v in obj]
    return None


def describable(obj: Any) -> bool:
    """True if ``to_spec(obj)`` describes ``obj`` completely."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return True
    if getattr(obj, "_robust_spec", None) is not None:
        return True
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(describable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init)
    if isinstance(obj, dict):
        return all(describable(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(describable(v) for v in obj)
    return False


class Recorded:
    """Mixin: instances remember the arguments they were built with as a spec.

    Every subclass gets its ``__init__`` wrapped; the spec is written once the
    outermost constructor returns, under the instance's public class path.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        original = cls.__init__
        if getattr(original, "_robust_wrapped_for", None) is cls:
            return
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            original(self, *args, **kw)
            if type(self) is cls:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                init_args: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:
                    kind = signature.parameters[name].kind
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        init_args.update({k: to_spec(v) for k, v in value.items()})
                    elif kind is not inspect.Parameter.VAR_POSITIONAL:
                        init_args[name] = to_spec(value)
                object.__setattr__(
                    self,
                    "_robust_spec",
                    {"class_path": public_path(cls), "init_args": init_args},
                )

        __init__._robust_wrapped_for = cls  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]


def public_path(cls: type) -> str:
    """The shortest ``robust.<pkg>.Name`` that imports ``cls`` (e.g. ``robust.methods.PGD``)."""
    module = cls.__module__
    parts = module.split(".")
    for i in range(1, len(parts)):
        candidate = ".".join(parts[:i])
        try:
            if getattr(importlib.import_module(candidate), cls.__qualname__, None) is cls:
                return f"{candidate}.{cls.__qualname__}"
        except ImportError:  # pragma: no cover - parent packages always import
            continue
    return f"{module}.{cls.__qualname__}"
