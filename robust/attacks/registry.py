"""The evaluation attacks by name, each registered with its published defaults beside it.

Importing this module loads no torch, so the command line can list the attacks in its help. An
attack's builder turns ``(threat, n_classes, options)`` into the settings written into every report
and the parts to run in order, each a torchattacks class (or ours, from
:mod:`robust.attacks.independent`) with its arguments: a :class:`Plan`, plain data.
:func:`robust.attacks.independent.build_attack` makes the attack from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robust.base.threat import ThreatModel

MAX_TARGETS = 9  # RobustBench standard: APGD-T and FAB-T use the 9 most likely other classes
MIN_CLASSES_TARGETED = 4  # the targeted DLR loss reads the 3rd and 4th largest logits
POSITIVE_INTEGERS = ("steps", "restarts", "queries", "eot_iter")
OURS = "robust.attacks.independent"


@dataclass(frozen=True)
class Part:
    """One attack of a plan: ``cls`` (``torchattacks.APGD``, or ``robust.attacks.independent.PGD``)
    is built as ``cls(model, **kwargs)``, with ``seed=`` the run's seed when ``seeded``; ``attrs``
    are set on it afterwards. ``name`` counts its successes in reports."""

    name: str
    cls: str
    kwargs: dict[str, Any]
    seeded: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """An attack as data: its ``settings`` (for reports) and its ``parts``, run in order, each on
    the examples that survived the ones before it."""

    settings: dict[str, Any]
    parts: list[Part]


Builder = Callable[["ThreatModel", int, dict[str, Any]], tuple[dict[str, Any], list[Part]]]
"""``builder(threat, n_classes, options) -> (settings beyond the options, parts)``."""


@dataclass(frozen=True)
class Attack:
    build: Builder
    defaults: Mapping[str, Any]
    l2_only: bool


_REGISTRY: dict[str, Attack] = {}
_DEFAULTS: dict[str, Mapping[str, Any]] = {}
ATTACK_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(_DEFAULTS)
"""Each registered attack's options and defaults, read-only (they are written beside each builder)."""


def register_attack(name: str, *, l2_only: bool = False, **defaults: Any) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder`` available as ``build_attack(name)``, with ``defaults`` as its options
    (the only ones it takes); ``l2_only`` attacks are refused under any other norm."""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} is registered twice")
        _REGISTRY[name] = Attack(builder, MappingProxyType(dict(defaults)), l2_only)
        _DEFAULTS[name] = _REGISTRY[name].defaults
        return builder

    return decorator


def list_attacks() -> list[str]:
    """Registered names, in the order of registration (the cheapest first, composed ones last)."""
    return list(_REGISTRY)


def attack_defaults(name: str) -> dict[str, Any]:
    """The options ``name`` takes, with their defaults."""
    return dict(_entry(name).defaults)


def _entry(name: str) -> Attack:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def plan_attack(name: str, threat: ThreatModel, n_classes: int, **options: Any) -> Plan:
    """The :class:`Plan` of ``name`` under ``threat`` with the defaults, overridden by ``options``.

    Unknown names and options, L2-only attacks under another norm, fewer than 2 classes and
    counts that are not positive integers raise a ``ValueError`` that says so.
    """
    attack = _entry(name)
    if attack.l2_only and threat.norm != "l2":
        raise ValueError(f"{name} is an L2 attack and is refused under the {threat.norm} threat model")
    unknown = set(options) - set(attack.defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for attack {name!r}; "
                         f"it takes {sorted(attack.defaults) or 'none'}")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes to attack, got {n_classes}")
    o = {**attack.defaults, **options}
    for key in POSITIVE_INTEGERS:
        if key in o and (not isinstance(o[key], int) or o[key] < 1):
            raise ValueError(f"{name}: {key} must be a positive integer, got {o[key]!r}")
    extra, parts = attack.build(threat, n_classes, o)
    return Plan({"norm": threat.norm, "eps": float(threat.eps), **o, **extra}, parts)


# --- the parts -----------------------------------------------------------------------------------
def _ball(threat: ThreatModel) -> dict[str, Any]:
    """torchattacks' names for the threat: ``norm="Linf"`` or ``"L2"`` and ``eps``."""
    return {"norm": "Linf" if threat.norm == "linf" else "L2", "eps": float(threat.eps)}


def _targets(n_classes: int, name: str) -> int:
    if n_classes < MIN_CLASSES_TARGETED:
        raise ValueError(f"{name} needs at least {MIN_CLASSES_TARGETED} classes (its targeted DLR loss "
                         f"reads the 3rd and 4th largest logits), got {n_classes}")
    return min(MAX_TARGETS, n_classes - 1)


def _apgd(name: str, threat: ThreatModel, steps: int, loss: str, restarts: int = 1, eot_iter: int = 1) -> Part:
    return Part(name, "torchattacks.APGD", {**_ball(threat), "steps": steps, "n_restarts": restarts, "loss": loss,
                                            "eot_iter": eot_iter, "rho": 0.75}, seeded=True)


def _apgdt(threat: ThreatModel, steps: int, n_classes: int, restarts: int = 1) -> tuple[Part, int]:
    targets = _targets(n_classes, "apgd-t")
    kwargs = {**_ball(threat), "steps": steps, "n_restarts": restarts, "eot_iter": 1, "rho": 0.75,
              "n_classes": n_classes}
    return Part("apgd-t", "torchattacks.APGDT", kwargs, seeded=True, attrs={"n_target_classes": targets}), targets


def _fab(name: str, threat: ThreatModel, steps: int, n_classes: int, restarts: int = 1) -> tuple[Part, int | None]:
    targeted = name == "fab-t"
    targets = _targets(n_classes, name) if targeted else None
    kwargs = {**_ball(threat), "steps": steps, "n_restarts": restarts, "multi_targeted": targeted,
              "n_classes": n_classes}
    attrs = {"n_target_classes": targets} if targeted else {}
    return Part(name, "torchattacks.FAB", kwargs, seeded=True, attrs=attrs), targets


def _square(threat: ThreatModel, queries: int, p_init: float = 0.8) -> Part:
    return Part("square", "torchattacks.Square", {**_ball(threat), "n_queries": queries, "n_restarts": 1,
                                                  "p_init": p_init, "loss": "margin", "resc_schedule": False},
                seeded=True)


def _our_pgd(threat: ThreatModel) -> str:
    return f"{OURS}.PGD" if threat.norm == "linf" else f"{OURS}.PGDL2"


def _pgd(name: str, loss: str, threat: ThreatModel, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    eps = float(threat.eps)
    alpha = o["step_size"] if o["step_size"] is not None else 2.5 * eps / o["steps"]
    kwargs = {"eps": eps, "alpha": alpha, "steps": o["steps"], "restarts": o["restarts"], "loss": loss,
              "random_start": bool(o["random_start"])}
    return {"step_size": alpha, "loss": "cw-margin" if loss == "cw" else "ce"}, [Part(name, _our_pgd(threat), kwargs)]


# --- the registry: each attack with its published defaults --------------------------------------
@register_attack("fgsm")
def fgsm(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """One signed-gradient step of eps (L2: the normalised gradient) from the clean point (Goodfellow et al. 2015)."""
    eps = float(threat.eps)
    part = Part("fgsm", _our_pgd(threat), {"eps": eps, "alpha": eps, "steps": 1, "random_start": False})
    return {"step_size": eps,
            "impl": f"single signed-gradient step (L2: normalised gradient) via {OURS}.PGD"}, [part]


@register_attack("pgd", steps=50, step_size=None, restarts=1, random_start=True)
def pgd(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """PGD on the cross-entropy with restarts (Madry et al. 2018), step ``2.5 * eps / steps`` by default."""
    return _pgd("pgd", "ce", threat, o)


@register_attack("pgd-cw", steps=50, step_size=None, restarts=1, random_start=True)
def pgd_cw(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """PGD on the Carlini-Wagner margin (Carlini & Wagner 2017), which does not saturate with the softmax."""
    return _pgd("pgd-cw", "cw", threat, o)


@register_attack("apgd-ce", steps=100, restarts=1)
def apgd_ce(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """APGD on the cross-entropy (Croce & Hein 2020)."""
    return {}, [_apgd("apgd-ce", threat, o["steps"], "ce", restarts=o["restarts"])]


@register_attack("apgd-dlr", steps=100, restarts=1)
def apgd_dlr(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """APGD on the difference-of-logits-ratio loss (Croce & Hein 2020)."""
    return {}, [_apgd("apgd-dlr", threat, o["steps"], "dlr", restarts=o["restarts"])]


@register_attack("apgd-t", steps=100, restarts=1)
def apgd_t(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """Targeted APGD-DLR on the 9 most likely other classes (fewer below 10 classes)."""
    part, targets = _apgdt(threat, o["steps"], n_classes, o["restarts"])
    return {"target_classes": targets}, [part]


@register_attack("fab", steps=100, restarts=1)
def fab(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """FAB, the minimum-norm attack of Croce & Hein 2020 (untargeted)."""
    return {}, [_fab("fab", threat, o["steps"], n_classes, o["restarts"])[0]]


@register_attack("fab-t", steps=100, restarts=1)
def fab_t(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """FAB targeted at the 9 most likely other classes (fewer below 10 classes)."""
    part, targets = _fab("fab-t", threat, o["steps"], n_classes, o["restarts"])
    return {"target_classes": targets}, [part]


@register_attack("square", queries=5000, p_init=0.8)
def square(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """Square, a score-based black-box attack (Andriushchenko et al. 2020): blind to masked gradients."""
    return {}, [_square(threat, o["queries"], o["p_init"])]


@register_attack("cw-l2", l2_only=True, c=1.0, kappa=0.0, steps=100, lr=0.01)
def cw_l2(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """Carlini-Wagner L2 (a minimum-norm attack: points outside the ball count as failures)."""
    return {}, [Part("cw-l2", "torchattacks.CW", {k: o[k] for k in ("c", "kappa", "steps", "lr")})]


@register_attack("deepfool", l2_only=True, steps=50, overshoot=0.02)
def deepfool(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """DeepFool (Moosavi-Dezfooli et al. 2016), a minimum-norm L2 attack."""
    return {}, [Part("deepfool", "torchattacks.DeepFool", {"steps": o["steps"], "overshoot": o["overshoot"]})]


@register_attack("autoattack", steps=100, queries=5000)
def autoattack(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """RobustBench's "standard" AutoAttack: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020)."""
    apgdt, targets = _apgdt(threat, o["steps"], n_classes)
    fabt, _ = _fab("fab-t", threat, o["steps"], n_classes)
    parts = [_apgd("apgd-ce", threat, o["steps"], "ce"), apgdt, fabt, _square(threat, o["queries"])]
    return {"version": "standard", "components": [p.name for p in parts], "target_classes": targets,
            "restarts": 1, "square_p_init": 0.8}, parts


@register_attack("autoattack-rand", steps=100, eot_iter=20)
def autoattack_rand(threat: ThreatModel, n_classes: int, o: dict[str, Any]) -> tuple[dict[str, Any], list[Part]]:
    """AutoAttack for randomised defences: APGD-CE and APGD-DLR with ``eot_iter`` samples per step."""
    parts = [_apgd("apgd-ce", threat, o["steps"], "ce", eot_iter=o["eot_iter"]),
             _apgd("apgd-dlr", threat, o["steps"], "dlr", eot_iter=o["eot_iter"])]
    return {"version": "rand", "components": [p.name for p in parts], "restarts": 1}, parts

