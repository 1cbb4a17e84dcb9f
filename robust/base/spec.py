"""Objects as plain specs: ``{"class_path": "pkg.Name", "init_args": {...}}``.

Checkpoints store hyperparameters as specs, never as pickled objects, so they load
with ``torch.load(weights_only=True)``. Specs are rebuilt only from an allowlist of
importable names, checked *before* anything is imported: a checkpoint or config
naming ``os.system`` is refused without running a line of it.

Where a spec comes from elsewhere (a checkpoint's hyperparameters, an ``hparams_file``, a recipe's
``model:`` and ``data:`` sections) the allowlist is narrower: a *role* (:data:`ROLES`) says what may
stand in that place, e.g. a model is one of our model classes, ``robust.models.create``, a
``torch.nn`` layer or a ``torchvision.models`` classifier, never a store, a logger or anything with
I/O, and no argument that downloads weights. :func:`check_stored`, :func:`check_recipe` and
:func:`check_role` decide from the text of the spec alone; ``build(spec, role=...)`` then verifies
each imported object before calling it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
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

# --- roles: the narrow allowlists of specs from elsewhere ------------------------------------------
# Kept in step with the packages by a contract test (tests/test_hostile_construction.py).
MODEL_CLASSES = frozenset({"CNN4", "CNNLarge", "CNNMedium", "CNNSmall", "CifarResNet", "MadryCNN", "Normalize",
                           "PreActResNet18", "ResNet110", "SmallCNN", "WideResNet"})
METHOD_CLASSES = frozenset({"FGSM", "GaussianNoise", "IBP", "MART", "MaskedTraining", "PGD", "Standard", "TRADES"})
DATA_CLASSES = frozenset({"CIFAR10", "CIFAR100", "Digits", "FashionMNIST", "GTSRB", "MNIST", "MNIST10k", "Npz",
                          "SVHN"})
# Constructor arguments that fetch pretrained weights (torchvision, timm): allowed only as None/False.
DOWNLOAD_ARGS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_backbone", "pretrained_cfg",
                           "pretrained_cfg_overlay", "checkpoint_path"})
# The LightningModule a checkpoint's ``_class_path`` (or a recipe's ``model.class_path``) may name.
LIGHTNING_MODULES = frozenset({"robust.module.RobustClassifier"})
# RobustClassifier's hyperparameters that hold objects, and the role of each; the others are plain values.
STORED_ROLES = {"model": "model", "method": "method", "eval_threat": "threat"}


def _names(names: frozenset[str]) -> str:
    return "(" + "|".join(sorted(names)) + ")"


@dataclass(frozen=True)
class Role:
    """What a spec in one place may name, decided from its class path alone (nothing is imported): a
    path matching one of ``allowed`` and none of ``refused`` (regular expressions over the whole path).
    Specs inside its ``init_args`` follow the role ``nested``."""

    name: str
    what: str
    allowed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    nested: str = "plain"

    def admits(self, class_path: str) -> bool:
        path = current_path(class_path)
        return (any(re.fullmatch(p, path) for p in self.allowed)
                and not any(re.fullmatch(p, path) for p in self.refused))


ROLES: dict[str, Role] = {
    "model": Role(
        "model", "models (robust.models classes and robust.models.create, torch.nn layers, torchvision.models "
                 "classifiers)",
        allowed=(r"robust\.models\.create", rf"robust\.models(\.[a-z_][a-z0-9_]*)?\.{_names(MODEL_CLASSES)}",
                 r"torch\.nn\.[A-Z][A-Za-z0-9_]*", r"torchvision\.models\.[A-Za-z][A-Za-z0-9_]*"),
        refused=(r"torch\.nn\.(DataParallel|Parameter|Buffer|Uninitialized[A-Za-z]*|[A-Za-z]*Options)",
                 r"torchvision\.models\.(get_[a-z_]+|list_models|[A-Za-z0-9_]*Weights[A-Za-z]*|[A-Za-z]*Outputs)"),
        nested="model"),
    "method": Role("method", "training methods (robust.methods classes)",
                   allowed=(rf"robust\.methods(\.[a-z_][a-z0-9_]*)?\.{_names(METHOD_CLASSES)}",), nested="threat"),
    "threat": Role("threat", "threat models (robust.threat.ThreatModel)",
                   allowed=(r"robust\.(base\.)?threat\.ThreatModel",)),
    "data": Role("data", "data modules (robust.data classes)",
                 allowed=(rf"robust\.data(\.[a-z_][a-z0-9_]*)?\.{_names(DATA_CLASSES)}",)),
    "module": Role("module", "LightningModules (robust.module.RobustClassifier)",
                   allowed=tuple(re.escape(path) for path in sorted(LIGHTNING_MODULES))),
    "plain": Role("plain", "this field, which holds plain values, not objects"),
}


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


def _admit(class_path: Any, role: Role, where: str) -> None:
    if not isinstance(class_path, str) or not _DOTTED.match(class_path):
        raise SpecError(f"{where}: class_path {class_path!r} is not a dotted import path")
    if not role.admits(class_path):
        raise SpecError(f"{where}: class_path {class_path!r} is outside the allowlist for {role.what}; "
                        f"refusing to import or build it")


def _no_download(name: str, value: Any, where: str) -> None:
    if name in DOWNLOAD_ARGS and value is not None and value is not False:
        raise SpecError(f"{where}: {name}={value!r} would fetch pretrained weights while the object is built; a "
                        f"spec may not (pretrained weights come only from an explicit flag such as --weights): "
                        f"set it to null")


def _check_value(value: Any, role: Role, where: str) -> None:
    if isinstance(value, Mapping):
        paths = [value[key] for key in ("class_path", "_class_path") if key in value]
        for path in paths:
            _admit(path, role, where)
        inner = ROLES[role.nested] if paths else role
        for key, item in value.items():
            if key in ("class_path", "_class_path"):
                continue
            if paths and key in ("init_args", "dict_kwargs") and isinstance(item, Mapping):
                for name, arg in item.items():
                    _no_download(str(name), arg, f"{where}.{key}.{name}")
                    _check_value(arg, inner, f"{where}.{key}.{name}")
            else:
                if paths:
                    _no_download(str(key), item, f"{where}.{key}")
                _check_value(item, inner, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, role, f"{where}[{i}]")


def without_downloads(value: Any) -> Any:
    """A copy of the spec ``value`` with every argument of :data:`DOWNLOAD_ARGS` set to ``None``: how a
    model built from pretrained weights is stored (its checkpoint holds the weights)."""
    if isinstance(value, Mapping):
        return {k: (None if k in DOWNLOAD_ARGS and v is not False else without_downloads(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_downloads(v) for v in value]
    return copy.deepcopy(value)


def check_role(value: Any, role: str, where: str) -> None:
    """Refuse, importing nothing, a value standing in a ``role`` place (a spec, a bare class path
    such as jsonargparse accepts, or plain data) that names anything the role does not allow
    (:data:`ROLES`), at any depth, or passes an argument that downloads weights (:data:`DOWNLOAD_ARGS`).
    The :class:`SpecError` names the field, e.g. ``hyper_parameters.model.init_args.weights``."""
    rule = ROLES[role]
    if isinstance(value, str) and role != "plain":
        _admit(value, rule, where)
    else:
        _check_value(value, rule, where)


def check_stored(hparams: Any, where: str = "hyper_parameters") -> None:
    """Refuse, importing nothing, RobustClassifier hyperparameters (a checkpoint's, an
    ``hparams_file``'s, a recipe's ``model:`` section) that name anything but a model at ``model``, a
    training method at ``method`` and a threat model at ``eval_threat`` (:data:`STORED_ROLES`);
    every other field holds plain values."""
    if isinstance(hparams, str):
        _admit(hparams, ROLES["module"], where)
        return
    if not isinstance(hparams, Mapping):
        return
    for key in ("class_path", "_class_path"):
        if key in hparams:
            _admit(hparams[key], ROLES["module"], where)
    for key, value in hparams.items():
        if key in ("class_path", "_class_path"):
            continue
        if key in ("init_args", "dict_kwargs") and isinstance(value, Mapping):
            check_stored(value, f"{where}.{key}")
        else:
            check_role(value, STORED_ROLES.get(str(key), "plain"), f"{where}.{key}")


def check_recipe(config: Any, where: str = "") -> None:
    """Refuse, importing nothing, a LightningCLI config whose ``model:`` section is not what
    :func:`check_stored` allows or whose ``data:`` is not a data module; every other ``class_path``
    (the trainer's loggers, callbacks, plugins) stays within :data:`CONFIG_PREFIXES`."""
    if not isinstance(config, Mapping):
        check_tree(config, where, CONFIG_PREFIXES)
        return
    prefix = f"{where}." if where else ""
    for key, value in config.items():
        if key == "model":
            check_stored(value, f"{prefix}model")
        elif key == "data":
            check_role(value, "data", f"{prefix}data")
        else:
            check_tree(value, f"{prefix}{key}", CONFIG_PREFIXES)


def current_path(class_path: str) -> str:
    """``class_path`` as the package names it now (see :data:`MOVED`)."""
    for old, new in MOVED.items():
        if class_path.startswith(old) and not class_path.startswith(new):
            return new + class_path[len(old):]
    return class_path


def import_object(class_path: str, role: str | None = None) -> Any:
    """Import ``a.b.C`` after checking it against the allowlist (the wide one, or ``role``'s); with a
    ``role``, the object is also verified to be what the role builds before anyone calls it."""
    check_allowed(class_path)
    if role is not None:
        _admit(class_path, ROLES[role], role)
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
    if not inspect.isclass(obj):
        if class_path not in FACTORIES and not _torchvision_builder(class_path, obj):
            raise SpecError(f"class_path {class_path!r} is a function, not a class or a model factory; "
                            f"refusing to call it")
    elif role == "model":
        from torch import nn

        if not issubclass(obj, nn.Module):
            raise SpecError(f"class_path {class_path!r} is not an nn.Module class; refusing to build it as a model")
    if role is not None and role != "model" and not inspect.isclass(obj):
        raise SpecError(f"class_path {class_path!r} is a function, not a class; refusing to call it")
    return obj


def _torchvision_builder(class_path: str, obj: Any) -> bool:
    """True if ``obj`` is one of torchvision's classifier constructors (``torchvision.models.resnet18``)."""
    if not class_path.startswith("torchvision.models."):
        return False
    import torchvision.models as tvm

    name = class_path.rpartition(".")[2]
    return name in tvm.list_models(module=tvm) and tvm.get_model_builder(name) is obj


def is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def build(value: Any, role: str | None = None) -> Any:
    """Rebuild objects from (possibly nested) specs; other values pass through.

    With a ``role`` (a key of :data:`ROLES`: ``model``, ``method``, ``threat``, ``data``) the whole
    tree is first checked against that role (:func:`check_role`), and every imported object is
    verified before it is called; without one, against the wide :data:`ALLOWED_PREFIXES`.
    """
    if role is not None:
        check_role(value, role, role)
    return _build(value, role)


def _build(value: Any, role: str | None) -> Any:
    if is_spec(value):
        if role is None:
            check_tree(value)  # the whole tree before the first import
        extra = set(value) - {"class_path", "init_args"}
        if extra:
            raise SpecError(f"spec for {value['class_path']!r} has unknown keys {sorted(extra)}")
        target = import_object(value["class_path"], role)
        init_args = value.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise SpecError(f"init_args of {value['class_path']!r} must be a mapping")
        nested = None if role is None else ROLES[role].nested
        kwargs = {k: _build(v, nested) for k, v in init_args.items()}
        try:
            return target(**kwargs)
        except TypeError as exc:
            raise SpecError(f"cannot build {value['class_path']!r}: {exc}") from exc
    if isinstance(value, dict):
        return {k: _build(v, role) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_build(v, role) for v in value)
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
