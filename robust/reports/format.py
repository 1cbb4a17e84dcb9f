"""How a number, an accuracy and a threat model read in every document the package writes.

Pure Python (no torch, numpy or matplotlib), so the leaderboard and the light commands can use it.
Every accuracy is an ``accuracy_record`` (see :mod:`robust.base.stats`) and reads
``"64.33% [58.61, 69.77] (193/300)"``: the accuracy, its 95% Clopper-Pearson interval and its sample.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = ["NORM_NAMES", "KIND_NAMES", "percent", "interval", "fmt_accuracy", "fmt_value", "short_settings",
           "eps_label", "threat_label", "norm_label", "metric_key"]

NORM_NAMES = {"linf": "L∞", "l2": "L2"}
# Threats that are not a norm ball: their dicts carry a ``kind`` and settings, no ``norm``/``eps`` to read.
KIND_NAMES = {"patch": "adversarial patch", "spatial": "spatial transformation", "corruptions": "common corruptions"}
THREAT_KEYS = {"kind", "norm", "eps", "eps_str"}
MISSING = "—"


def percent(value: float | None, digits: int = 2, unit: str = "%", missing: str = MISSING) -> str:
    """A fraction as a percentage: ``percent(0.6433) == "64.33%"``; ``missing`` when unknown."""
    return missing if value is None else f"{100 * float(value):.{digits}f}{unit}"


def interval(ci: Sequence[float] | None, digits: int = 2, missing: str = "") -> str:
    """A 95% interval in percent points: ``"[58.61, 69.77]"``; ``missing`` when there is none."""
    if not ci or len(ci) != 2 or None in ci:
        return missing
    return f"[{percent(ci[0], digits, '')}, {percent(ci[1], digits, '')}]"


def fmt_accuracy(record: Mapping | float | None, fallback: float | None = None) -> str:
    """``"64.33% [58.61, 69.77] (193/300)"``; just the percentage when only ``fallback`` is known."""
    if isinstance(record, (int, float)) and not isinstance(record, bool):
        return percent(record)
    if not record:
        return percent(fallback)
    text = percent(record.get("accuracy"))
    ci = interval(record.get("ci95"))
    if ci:
        text += f" {ci}"
    if record.get("n") is not None:
        text += f" ({record.get('correct', '?')}/{record['n']})"
    return text


def fmt_value(value: Any) -> str:
    """A setting or measured value in a table cell: 4 significant digits, ``true``/``false``, lists."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def short_settings(settings: Mapping | None, skip: Collection[str] = ()) -> str:
    """``"eps=8/255, alpha=2/255, steps=10"``: scalars and lists, ``<key>_str`` preferred over ``<key>``."""
    if not settings:
        return ""
    parts = []
    for key, value in settings.items():
        if key in skip or isinstance(value, Mapping) or value is None:
            continue
        if key.endswith("_str") and key[:-4] in settings:
            continue
        shown = settings.get(f"{key}_str") or value
        parts.append(f"{key}={shown if isinstance(shown, str) else fmt_value(shown)}")
    return ", ".join(parts)


def eps_label(point: Mapping) -> str:
    """The radius of a threat dict or a sweep point as written (``"8/255"``), else its float."""
    if point.get("eps_str"):
        return str(point["eps_str"])
    return "" if point.get("eps") is None else fmt_value(float(point["eps"]))


def threat_label(threat: Mapping | None) -> str:
    """A short name for a threat model: ``"L∞ ε = 8/255"``, ``"adversarial patch (fraction=0.1, ...)"``.

    A norm ball is a :meth:`robust.base.threat.ThreatModel.to_dict` (a smoothing certificate's has no
    single ε); a patch, spatial or corruption threat is named by its ``kind`` and settings.
    """
    if not threat:
        return "unknown threat model"
    kind = threat.get("kind")
    if kind in KIND_NAMES:
        extra = short_settings(threat, skip=THREAT_KEYS | {"corruptions", "severities"})
        return f"{KIND_NAMES[kind]} ({extra})" if extra else KIND_NAMES[kind]
    norm = threat["norm"]
    eps = eps_label(threat)
    return NORM_NAMES.get(norm, str(norm)) + (f" ε = {eps}" if eps else "")


def norm_label(threat: Mapping | None) -> str:
    """``"L∞ threat model"`` for a norm-bounded threat, without its ε (a sweep varies it)."""
    if threat and threat.get("kind") not in KIND_NAMES and threat.get("norm") in NORM_NAMES:
        return f"{NORM_NAMES[threat['norm']]} threat model"
    return threat_label(threat)


def metric_key(name: str) -> str:
    """A name as a wandb metric key: anything but letters, digits and ``_.-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
