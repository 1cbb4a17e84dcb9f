"""The evaluation attacks by name, each registered with its published defaults beside it.

Importing this module loads no torch, so the command line can list the attacks in its help. An
attack's builder turns ``(threat, n_classes, options)`` into the settings written into every report
and the parts to run in order, each a torchattacks class (or ours, from
:mod:`robust.attacks.independent`) with its arguments: a :class:`Plan`, plain data.
:func:`robust.attacks.independent.build_attack` makes the attack from it.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from robust.base.errors import InputError
from robust.base.threat import parse_eps

if TYPE_CHECKING:
    from robust.base.threat import ThreatModel

MAX_TARGETS = 9  # RobustBench standard: APGD-T and FAB-T use the 9 most likely other classes
MIN_CLASSES_TARGETED = 4  # the targeted DLR loss reads the 3rd and 4th largest logits
OURS = "robust.attacks.independent"


class AttackOptionError(InputError, ValueError):
    """An attack name or option that the registry does not take: unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Rule:
    """What one option takes: ``kind`` is ``"count"`` (a positive integer), ``"positive"`` (a finite number
    > 0; a fraction like ``"2/255"`` is read as one), ``"nonnegative"`` (finite, >= 0), ``"fraction"``
    (in (0, 1]) or ``"flag"`` (true or false); ``default_none`` lets ``None`` stand for the computed default."""

    kind: str
    default_none: bool = False

    def describe(self) -> str:
        text = {"count": "a positive integer", "positive": "a finite number > 0", "nonnegative": "a finite number >= 0",
                "fraction": "a number in (0, 1]", "flag": "true or false (a JSON boolean)"}[self.kind]
        return text + (" or null (the default)" if self.default_none else "")

    def check(self, value: Any) -> Any:
        """``value`` as the attack takes it; a ``ValueError`` (the message is :meth:`describe`) otherwise."""
        if value is None and self.default_none:
            return None
        if self.kind == "flag":
            if isinstance(value, bool):
                return value
            raise ValueError(self.describe())
        if isinstance(value, bool):
            raise ValueError(self.describe())
        if self.kind == "count":
            if isinstance(value, numbers.Integral) and value >= 1:
                return int(value)
            raise ValueError(self.describe())
        try:
            number = parse_eps(float(value) if isinstance(value, numbers.Real) else value)
        except (ValueError, OverflowError):
            number = float("nan")
        ok = math.isfinite(number) and {"positive": number > 0, "nonnegative": number >= 0,
                                        "fraction": 0 < number <= 1}[self.kind]
        if not ok:
            raise ValueError(self.describe())
        return float(number)


COUNT, POSITIVE, NONNEGATIVE = Rule("count"), Rule("positive"), Rule("nonnegative")
OPTION_RULES: Mapping[str, Rule] = MappingProxyType({
    "steps": COUNT, "restarts": COUNT, "queries": COUNT, "eot_iter": COUNT,
    "step_size": Rule("positive", default_none=True),  # None: 2.5 * eps / steps (Madry et al.)
    "random_start": Rule("flag"),
    "p_init": Rule("fraction"),  # Square's initial share of pixels changed
    "c": POSITIVE, "lr": POSITIVE, "kappa": NONNEGATIVE, "overshoot": NONNEGATIVE,
})
"""The type and range of every option an attack may declare; an option without a rule cannot be registered."""


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
        for key, value in defaults.items():
            if key not in OPTION_RULES:
                raise ValueError(f"attack {name!r}: option {key!r} has no rule in OPTION_RULES")
            OPTION_RULES[key].check(value)
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


def _unknown_attack(name: Any, where: str) -> AttackOptionError:
    text = name if isinstance(name, str) else ""
    cased = [n for n in _REGISTRY if n.lower() == text.lower()]
    close = cased or difflib.get_close_matches(text, _REGISTRY, 1)
    hint = (f" ({'names are exact and lower-case: ' if cased else ''}did you mean {close[0]!r}?)" if close else "")
    return AttackOptionError(f"{where}unknown attack {name!r}{hint}; choose from {', '.join(_REGISTRY)}")


def _entry(name: str) -> Attack:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown_attack(name, "")
    return _REGISTRY[name]


def check_attacks(attacks: Iterable[str], where: str = "attacks") -> list[str]:
    """``attacks`` (registry names, duplicates dropped) if every one is registered; otherwise an
    :class:`AttackOptionError` naming the first unknown one and listing the registered names."""
    names = list(dict.fromkeys(attacks))
    for name in names:
        if not isinstance(name, str) or name not in _REGISTRY:
            raise _unknown_attack(name, f"{where}: ")
    return names


def check_options(name: str, options: Any, where: str = "") -> dict[str, Any]:
    """The options of attack ``name`` typed and range-checked against :data:`OPTION_RULES` (fractions
    such as ``"2/255"`` read as numbers); unknown keys, wrong types (``"no"`` for a boolean, ``"x"`` for
    a number) and out-of-range values (NaN, steps 0, step size <= 0) raise an :class:`AttackOptionError`
    naming the key, prefixed with ``where`` (e.g. ``"--attack-options: "``)."""
    attack = _entry(name)
    if not isinstance(options, Mapping):
        raise AttackOptionError(f"{where}the options of attack {name!r} must be a JSON object such as "
                                f'{{"steps": 10}}, got {options!r}')
    takes = ", ".join(sorted(attack.defaults)) or "none"
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key not in attack.defaults:
            raise AttackOptionError(f"{where}unknown option {key!r} for attack {name!r}; it takes {takes}")
        try:
            checked[key] = OPTION_RULES[key].check(value)
        except ValueError as err:
            raise AttackOptionError(f"{where}{name}.{key} must be {err}, got {value!r:.60}") from None
    return checked


def check_attack_options(attacks: Iterable[str], options: Any, where: str = "attack_options") -> dict[str, dict]:
    """``{attack: checked options}`` for the per-attack overrides ``options`` (``{"pgd": {"steps": 100}}``)
    of a run of ``attacks``. Refused, with an :class:`AttackOptionError` naming the key: anything but an
    object of objects, an unknown or wrongly cased attack name, options for an attack the run does not
    include (they would be ignored), and every option :func:`check_options` refuses."""
    names = check_attacks(attacks)
    prefix = f"{where}: " if where else ""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise AttackOptionError(f"{prefix}must be an object of per-attack options such as "
                                f'{{"pgd": {{"steps": 100}}}}, got {options!r}')
    checked: dict[str, dict] = {}
    for name, value in options.items():
        if not isinstance(name, str) or name not in _REGISTRY:
            raise _unknown_attack(name, prefix)
        if name not in names:
            raise AttackOptionError(f"{prefix}options for attack {name!r}, which this run does not include "
                                    f"(attacks: {', '.join(names)}); add it to the attacks or drop its options")
        checked[name] = check_options(name, value, prefix)
    return checked


def plan_attack(name: str, threat: ThreatModel, n_classes: int, **options: Any) -> Plan:
    """The :class:`Plan` of ``name`` under ``threat`` with the defaults, overridden by ``options``.

    Unknown names and options, options of the wrong type or range (:func:`check_options`), L2-only
    attacks under another norm and fewer than 2 classes raise a ``ValueError`` that says so.
    """
    attack = _entry(name)
    if attack.l2_only and threat.norm != "l2":
        raise AttackOptionError(f"{name} is an L2 attack and is refused under the {threat.norm} threat model")
    options = check_options(name, options)
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes to attack, got {n_classes}")
    o = {**attack.defaults, **options}
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

