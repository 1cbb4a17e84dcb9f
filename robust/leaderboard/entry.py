"""Leaderboard entries: one per (model, protocol), built from our reports or RobustBench records.

An entry is a plain JSON-able dict (see :data:`FIELDS`); accuracies are fractions in [0, 1]
with the counts behind them (``correct``/``n``) where known, so 95% intervals can be computed.
:func:`validate` refuses a malformed entry whole, naming the field that is wrong.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from robust.base.errors import InputError

THREATS = ("Linf", "L2", "corruptions")
_TOL = 1e-9  # rounding slack when two fractions are compared
_MAX_COUNT = 2**53  # counts beyond this are not exact as floats (and no test set is that large)
_NORMS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}

FIELDS: dict[str, str] = {
    "name": "model name shown on the board",
    "architecture": "network, e.g. WideResNet-28-10",
    "dataset": "data set, lower case, e.g. cifar10",
    "threat": "Linf, L2 or corruptions",
    "eps": "radius in [0, 1] pixel units (None for corruptions)",
    "eps_str": "the radius as written, e.g. 8/255",
    "clean": "accuracy record {accuracy, correct, n, ci95}",
    "robust": "accuracy record under the attack protocol (None for a certified-only entry)",
    "attack_protocol": "{name, version, n_examples, seed, torchattacks}",
    "external": "a lower robust accuracy found by an adaptive attack (fraction), or None",
    "certified": "list of {method, norm, radius, accuracy, correct, n, alpha, n_samples}",
    "unreliable": "True when the gradient-masking audit flagged the evaluation",
    "audit_flags": "list of {name, message} from the audit",
    "training": "{method, recipe, seconds}",
    "checkpoint_sha256": "sha256 of the checkpoint file",
    "model_sha256": "sha256 of the weights",
    "versions": "package versions of the measurement",
    "hardware": "device of the measurement",
    "wandb_run": "path of the wandb run",
    "timestamp": "UTC time of the measurement, ISO 8601",
    "source": "robust or robustbench",
    "sweep": "list of {eps, accuracy} for the robust-accuracy-vs-eps curve",
    "certified_curve": "list of {radius, accuracy} for the certified-accuracy-vs-radius curve",
    "robustbench": "RobustBench fields kept as given: link, authors, venue, reported, additional_data, "
                   "number_forward_passes, footnote, corruptions_acc, corruptions_mce",
}


class EntryError(InputError, ValueError):
    """A leaderboard entry or input file that is malformed; the message names the field."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _shown(value: Any) -> str:
    """``repr(value)``, at most 80 characters, for a message."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too long to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any, field: str, low: float = 0.0, high: float = math.inf, what: str = "a number") -> float:
    """``value`` as a float when it is a finite number (not a boolean) in [low, high], else :class:`EntryError`."""
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise EntryError(f"{field}: expected {what}, got {_shown(value)}")
    return number


def _fraction(value: Any, field: str) -> float:
    return _number(value, field, 0.0, 1.0, "a fraction in [0, 1] (a number, not text or a boolean)")


def _count(value: Any, field: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT):
        raise EntryError(f"{field}: expected a whole count >= 0 (at most 2**53), got {_shown(value)}")
    return value


def _interval(value: Any, accuracy: float, field: str) -> list[float]:
    """A 95% interval: two ordered fractions that contain ``accuracy``."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise EntryError(f"{field}: expected an interval of two numbers [low, high], got {_shown(value)}")
    low, high = (_fraction(v, f"{field}[{i}]") for i, v in enumerate(value))
    if low > high:
        raise EntryError(f"{field}: low {low:g} above high {high:g}")
    if not low - _TOL <= accuracy <= high + _TOL:
        raise EntryError(f"{field}: [{low:g}, {high:g}] does not contain the accuracy {accuracy:g}")
    return [low, high]


def _record(value: Any, field: str) -> dict | None:
    """An accuracy record ``{accuracy, correct, n, ci95}``, checked whole: a fraction, whole counts with
    ``correct <= n`` that give the accuracy, and an interval that contains it."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or "accuracy" not in value:
        raise EntryError(f"{field}: expected an accuracy record {{accuracy, correct, n}}, got {_shown(value)}")
    out: dict[str, Any] = {"accuracy": _fraction(value["accuracy"], f"{field}.accuracy")}
    for key in ("correct", "n"):
        out[key] = _count(value.get(key), f"{field}.{key}")
    correct, n = out["correct"], out["n"]
    if n is not None and correct is not None:
        if correct > n:
            raise EntryError(f"{field}: correct {correct} exceeds n {n}")
        if n and abs(out["accuracy"] * n - correct) > 0.5:
            raise EntryError(f"{field}.accuracy: {out['accuracy']:g} is not correct/n = {correct}/{n}")
    if value.get("ci95") is not None:
        out["ci95"] = _interval(value["ci95"], out["accuracy"], f"{field}.ci95")
    return out


def _text(value: Any, field: str, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise EntryError(f"{field}: required")
        return None
    if not isinstance(value, str):
        raise EntryError(f"{field}: expected text, got {type(value).__name__}")
    return value


def validate(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised copy of ``entry``, checked whole; raises :class:`EntryError` naming the first wrong field.

    Beyond each field's type and range (see :data:`FIELDS`), the numbers must agree: for an L-inf or
    L2 entry the robust accuracy, the sweep's points and every certified accuracy are at most the
    clean accuracy; ``external`` (a lower number from an adaptive attack) is at most the protocol's
    robust accuracy; the robust record's ``n`` is the protocol's ``n_examples``.
    """
    if not isinstance(entry, Mapping):
        raise EntryError(f"an entry must be a JSON object, got {type(entry).__name__}")
    unknown = set(entry) - set(FIELDS) - {"id"}
    if unknown:
        raise EntryError(f"unknown field(s) {sorted(map(str, unknown))}; known: {', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    if entry.get("id") is not None:
        out["id"] = _text(entry["id"], "id")
    out["name"] = _text(entry.get("name"), "name", required=True)
    out["architecture"] = _text(entry.get("architecture"), "architecture")
    dataset = _text(entry.get("dataset"), "dataset", required=True)
    out["dataset"] = dataset.lower()
    threat = entry.get("threat")
    if not isinstance(threat, str) or threat not in THREATS:
        raise EntryError(f"threat: expected one of {', '.join(THREATS)}, got {_shown(threat)}")
    out["threat"] = threat
    norm_ball = threat != "corruptions"
    eps = None
    if norm_ball:
        high = 1.0 if threat == "Linf" else math.inf
        eps = _number(entry.get("eps"), "eps", 0.0, high, f"a radius > 0{' and <= 1' if high == 1 else ''} "
                      f"(pixels in [0, 1]) for the {threat} threat model")
        if eps == 0:
            raise EntryError(f"eps: expected a radius > 0 for the {threat} threat model, got {_shown(entry.get('eps'))}")
    out["eps"] = eps
    out["eps_str"] = _text(entry.get("eps_str"), "eps_str") or (None if eps is None else f"{eps:g}")
    out["clean"] = _record(entry.get("clean"), "clean")
    if out["clean"] is None:
        raise EntryError("clean: required")
    clean = out["clean"]["accuracy"]

    def at_most_clean(value: float, field: str) -> None:
        if norm_ball and value > clean + _TOL:
            raise EntryError(f"{field}: {value:g} is above the clean accuracy {clean:g} (an attack or certificate "
                             "cannot make a model more accurate)")

    out["robust"] = _record(entry.get("robust"), "robust")
    protocol = entry.get("attack_protocol")
    if out["robust"] is not None:
        at_most_clean(out["robust"]["accuracy"], "robust.accuracy")
        if not isinstance(protocol, Mapping) or not protocol.get("name"):
            raise EntryError("attack_protocol: a robust accuracy needs the protocol that produced it ({name, ...})")
        n = protocol.get("n_examples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise EntryError(f"attack_protocol.n_examples: expected a count >= 1, got {_shown(n)}")
        if out["robust"]["n"] is not None and out["robust"]["n"] != n:
            raise EntryError(f"robust.n: {out['robust']['n']} is not attack_protocol.n_examples {n}")
    if protocol is not None:
        if not isinstance(protocol, Mapping):
            raise EntryError(f"attack_protocol: expected an object, got {type(protocol).__name__}")
        _text(protocol.get("name"), "attack_protocol.name")
        _text(protocol.get("version"), "attack_protocol.version")
    out["attack_protocol"] = dict(protocol) if isinstance(protocol, Mapping) else None
    external = entry.get("external")
    out["external"] = None
    if external is not None:
        out["external"] = _fraction(external, "external")
        if out["robust"] is None:
            raise EntryError("external: an adaptive attack's number needs the attack protocol's robust accuracy "
                             "it lowers")
        if out["external"] > out["robust"]["accuracy"] + _TOL:
            raise EntryError(f"external: {out['external']:g} is above the protocol's robust accuracy "
                             f"{out['robust']['accuracy']:g}; external is the lower number an adaptive attack found")
    certified = entry.get("certified") or []
    if not isinstance(certified, list):
        raise EntryError("certified: expected a list")
    out["certified"] = []
    for i, c in enumerate(certified):
        if not isinstance(c, Mapping) or c.get("radius") is None:
            raise EntryError(f"certified[{i}]: expected {{method, norm, radius, accuracy, n, ...}}, got {_shown(c)}")
        _text(c.get("method"), f"certified[{i}].method", required=True)
        if c.get("norm") is not None and c["norm"] not in THREATS[:2]:
            raise EntryError(f"certified[{i}].norm: expected Linf or L2, got {_shown(c['norm'])}")
        rec = _record(c, f"certified[{i}]")
        radius = _number(c["radius"], f"certified[{i}].radius", what="a radius >= 0")
        at_most_clean(rec["accuracy"], f"certified[{i}].accuracy")
        out["certified"].append({**dict(c), **rec, "radius": radius})
    if out["robust"] is None and not out["certified"]:
        raise EntryError("robust: an entry needs a robust accuracy or at least one certified accuracy")
    unreliable = entry.get("unreliable", False)
    if not isinstance(unreliable, bool):
        raise EntryError(f"unreliable: expected true or false, got {_shown(unreliable)}")
    out["unreliable"] = unreliable
    flags = entry.get("audit_flags") or []
    if not isinstance(flags, list):
        raise EntryError("audit_flags: expected a list")
    out["audit_flags"] = [{"name": str(f.get("name", "")), "message": str(f.get("message", ""))}
                          if isinstance(f, Mapping) else {"name": str(f), "message": ""} for f in flags]
    for key in ("training", "versions", "robustbench"):
        value = entry.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise EntryError(f"{key}: expected an object, got {type(value).__name__}")
        out[key] = dict(value) if value else {}
    for key in ("checkpoint_sha256", "model_sha256", "hardware", "wandb_run"):
        out[key] = _text(entry.get(key), key)
    out["timestamp"] = _text(entry.get("timestamp"), "timestamp") or _now()
    out["source"] = _text(entry.get("source"), "source") or "robust"
    for key, x in (("sweep", "eps"), ("certified_curve", "radius")):
        points = entry.get(key) or []
        if not isinstance(points, list):
            raise EntryError(f"{key}: expected a list of {{{x}, accuracy}}, got {type(points).__name__}")
        out[key] = []
        for i, p in enumerate(points):
            if not isinstance(p, Mapping) or x not in p or "accuracy" not in p:
                raise EntryError(f"{key}[{i}]: expected {{{x}, accuracy}}, got {_shown(p)}")
            high = 1.0 if x == "eps" and threat == "Linf" else math.inf
            point = {x: _number(p[x], f"{key}[{i}].{x}", 0.0, high, f"a radius >= 0{' and <= 1' if high == 1 else ''}"),
                     "accuracy": _fraction(p["accuracy"], f"{key}[{i}].accuracy")}
            at_most_clean(point["accuracy"], f"{key}[{i}].accuracy")
            out[key].append(point)
    for key, value in out.items():  # stored and exported as standard JSON
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise EntryError(f"{key}: not plain JSON data ({err})") from None
    return out


def fingerprint(entry: Mapping[str, Any]) -> str:
    """sha256 of the entry without its id and timestamp: the same measurement added twice is one entry."""
    body = {k: v for k, v in entry.items() if k not in ("id", "timestamp")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def robust_value(entry: Mapping[str, Any]) -> float | None:
    """The robust accuracy a board ranks by: ``external`` (an adaptive attack's lower number)
    takes precedence over the attack protocol's, as in RobustBench."""
    if entry.get("external") is not None:
        return float(entry["external"])
    robust = entry.get("robust")
    return None if robust is None else float(robust["accuracy"])


# ------------------------------------------------------------------------------ from our reports


def _threat(report: Mapping[str, Any]) -> tuple[str, float | None, str | None]:
    threat = report["threat"]  # a ThreatModel.to_dict() (check_report refused any other shape)
    norm = _NORMS.get(threat["norm"].lower())
    if norm is None:
        raise EntryError(f"report threat {_shown(threat)}: expected an L-inf or L2 threat model")
    return norm, threat.get("eps"), threat.get("eps_str")


def _provenance(report: Mapping[str, Any]) -> dict[str, Any]:
    protocol = report.get("protocol") or {}
    model = protocol.get("model") or {}
    return {
        "architecture": model.get("architecture"),
        "dataset": protocol.get("dataset") or "unknown",
        "training": {k: v for k, v in (("method", model.get("training")), ("recipe", model.get("recipe")))
                     if v is not None},
        "checkpoint_sha256": (protocol.get("checkpoint") or {}).get("sha256"),
        "model_sha256": protocol.get("model_sha256"),
        "versions": protocol.get("versions") or {},
        "hardware": protocol.get("device"),
        "wandb_run": protocol.get("wandb_run"),
    }


def from_report(report: Mapping[str, Any], name: str | None = None, **overrides: Any) -> dict[str, Any]:
    """An entry from a ``robust evaluate`` or ``robust certify`` report (``report.json``).

    Everything is read from the report: threat, accuracies with their counts, the attack
    protocol, the audit's verdict and flags, certificates, curves and provenance (architecture,
    dataset, training method, checkpoint and weights sha256, versions, device, wandb run).
    ``overrides`` replace fields (e.g. ``name``, ``external``).
    """
    check_report(report)
    try:
        prov = _provenance(report)
        base = {"name": name or report.get("name") or prov["architecture"] or "model", **prov}
        if report.get("kind") == "certification":
            entry = _from_certification(report, base)
        else:
            entry = _from_evaluation(report, base)
    except KeyError as exc:
        raise EntryError(f"report: missing field {exc}") from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise EntryError(f"report: a field has the wrong type ({exc})") from None
    entry.update({k: v for k, v in overrides.items() if v is not None})
    return validate(entry)


_REPORT_FIELDS: dict[str, tuple[type, ...]] = {  # field -> JSON types it may have (None where optional)
    "threat": (Mapping,), "clean": (Mapping,), "protocol": (Mapping, type(None)), "name": (str, type(None)),
    "n_examples": (int,), "sweep": (list, type(None)),
}
_EVALUATION_FIELDS = {"robust": (Mapping,), "per_attack": (Mapping,), "audit": (Mapping, type(None))}
_CERTIFICATION_FIELDS = {"method": (str,), "per_example": (list,)}
_SMOOTHING_FIELDS = {"sigma": (int, float), "settings": (Mapping,), "certified_accuracy": (list,)}


def check_report(report: Any) -> None:
    """Refuse a ``report.json`` that does not have the shape ``robust evaluate``/``certify`` writes,
    naming the first wrong field (:class:`EntryError`)."""
    if not isinstance(report, Mapping):
        raise EntryError(f"a report must be a JSON object, got {type(report).__name__}")
    fields = dict(_REPORT_FIELDS)
    if report.get("kind") == "certification":
        fields.update(_CERTIFICATION_FIELDS)
        if report.get("method") == "smoothing":
            fields.update(_SMOOTHING_FIELDS)
            del fields["n_examples"]
    else:
        fields.update(_EVALUATION_FIELDS)
    for field, types in fields.items():
        value = report.get(field)
        if (value is None and type(None) not in types) or not isinstance(value, types) or isinstance(value, bool):
            wanted = " or ".join("null" if t is type(None) else "an object" if t is Mapping else t.__name__
                                 for t in types)
            raise EntryError(f"report field {field!r}: expected {wanted}, got {_shown(value)}")
    for field in ("clean", "robust"):
        if isinstance(report.get(field), Mapping):
            _record(report[field], field)
    threat = report["threat"]
    if "norm" not in threat and threat.get("kind") in ("patch", "spatial", "corruptions"):
        raise EntryError(f"report threat {threat['kind']!r}: an entry needs an L-inf or L2 threat model "
                         "(the evaluation's, not one of its physical or corruption threats)")
    if not isinstance(threat.get("norm"), str):
        raise EntryError(f"report field 'threat': expected {{norm, eps}}, got {_shown(threat)}")
    for i, point in enumerate(report.get("sweep") or []):
        if not isinstance(point, Mapping):
            raise EntryError(f"report field 'sweep[{i}]': expected an object, got {_shown(point)}")


def _from_evaluation(report: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    norm, eps, eps_str = _threat(report)
    protocol = report.get("protocol") or {}
    attacks = list((report.get("per_attack") or {}).keys())
    audit = report.get("audit") or {}
    return {
        **base, "threat": norm, "eps": eps, "eps_str": eps_str, "clean": report["clean"], "robust": report["robust"],
        "attack_protocol": {"name": "+".join(attacks), "version": "standard" if attacks == ["autoattack"] else "custom",
                            "n_examples": report["n_examples"], "seed": protocol.get("seed"),
                            "torchattacks": (protocol.get("versions") or {}).get("torchattacks")},
        "unreliable": bool(audit.get("unreliable")),
        "audit_flags": [{"name": f.get("name"), "message": f.get("message")} for f in audit.get("flags") or []],
        "sweep": [{"eps": p["eps"], "accuracy": p["robust"]["accuracy"]} for p in report.get("sweep") or []],
        "timestamp": protocol.get("timestamp"),
    }


def _from_certification(report: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    protocol = report.get("protocol") or {}
    method = report["method"]
    if method == "smoothing":
        s = report["settings"]
        certified = [{"method": "smoothing", "norm": "L2", "radius": m["radius"], **m["certified"],
                      "sigma": report["sigma"], "alpha": s["alpha"], "n_samples": s["n"]}
                     for m in report["certified_accuracy"]]
        radii = sorted({float(r["radius"]) for r in report["per_example"] if r["correct"]})
        total = max(len(report["per_example"]), 1)
        curve = [{"radius": r, "accuracy": sum(1 for row in report["per_example"]
                                               if row["correct"] and row["radius"] >= r) / total}
                 for r in [0.0, *radii]]
        largest = max((c["radius"] for c in certified), default=0.0)
        return {**base, "threat": "L2", "eps": largest or report["sigma"], "eps_str": None,
                "clean": report["clean"], "robust": None, "certified": certified, "certified_curve": curve,
                "timestamp": protocol.get("timestamp")}
    sweep = report.get("sweep") or [report]
    norm, eps, eps_str = _threat(report)
    attack = report.get("attack")
    return {
        **base, "threat": norm, "eps": eps, "eps_str": eps_str, "clean": report["clean"],
        "robust": report["robust"] if attack else None,
        "attack_protocol": None if not attack else {"name": attack["name"], "version": "custom",
                                                    "n_examples": report["n_examples"],
                                                    "seed": protocol.get("seed"),
                                                    "torchattacks": (protocol.get("versions") or {}).get("torchattacks")},
        "certified": [{"method": method, "norm": norm, "radius": s["threat"]["eps"], **s["certified"]} for s in sweep],
        "certified_curve": [{"radius": s["threat"]["eps"], "accuracy": s["certified"]["accuracy"]} for s in sweep],
        "timestamp": protocol.get("timestamp"),
    }
