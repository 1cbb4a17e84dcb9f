"""RobustBench ``model_info`` JSON records: import them next to our entries, export ours to submit.

A RobustBench record (``model_info/<dataset>/<threat>/<model>.json``) holds percentages as
strings (``"clean_acc": "89.69"``), ``eps`` as written (``"8/255"``, null for corruptions) and
no counts: AutoAttack runs on the full test set (10,000 images for CIFAR-10/100, 5,000 for
ImageNet), which is the ``n_examples`` an imported record gets unless told otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robust.base.threat import parse_eps
from robust.leaderboard.entry import THREATS, EntryError, validate
from robust.reports.format import percent

FIELDS = ("name", "link", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
          "eps", "clean_acc", "reported", "autoattack_acc", "external", "unreliable", "footnote", "corruptions_acc",
          "corruptions_mce")
FULL_TEST_SET = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}
_KEEP = ("link", "authors", "venue", "reported", "additional_data", "number_forward_passes", "footnote",
         "corruptions_acc", "corruptions_mce")


def _percent(info: Mapping[str, Any], field: str, required: bool) -> float | None:
    value = info.get(field)
    if value in (None, ""):
        if required:
            raise EntryError(f"{field}: required in a RobustBench record")
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(value)
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise EntryError(f"{field}: expected a percentage such as \"59.53\", got {value!r:.40}") from None
    if not 0 <= number <= 100 or not math.isfinite(number):
        raise EntryError(f"{field}: expected a percentage in [0, 100], got {value!r:.40}")
    return number / 100


def from_robustbench(info: Mapping[str, Any], threat: str | None = None, n_examples: int | None = None,
                     name: str | None = None) -> dict[str, Any]:
    """An entry from a RobustBench ``model_info`` record; refused whole, naming the wrong field.

    ``threat`` (Linf, L2 or corruptions) comes from the record's folder in RobustBench; give it,
    or put it in the record as ``threat_model``.
    """
    if not isinstance(info, Mapping):
        raise EntryError(f"a RobustBench record must be a JSON object, got {type(info).__name__}")
    unknown = set(info) - set(FIELDS) - {"threat_model", "model_id"}
    if unknown:
        raise EntryError(f"unknown RobustBench field(s) {sorted(unknown)}")
    threat = threat or info.get("threat_model")
    if threat not in THREATS:
        raise EntryError(f"threat_model: expected one of {', '.join(THREATS)}, got {threat!r} "
                         "(RobustBench keeps it in the folder name: pass it explicitly)")
    dataset = info.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise EntryError("dataset: required in a RobustBench record")
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1):
        raise EntryError(f"n_examples: expected a count >= 1, got {n_examples!r}")
    n = n_examples or FULL_TEST_SET.get(dataset.lower())
    if n is None:
        raise EntryError(f"dataset {dataset!r}: unknown test-set size; give n_examples")
    clean = _percent(info, "clean_acc", True)
    if not isinstance(info.get("unreliable", False), bool):
        raise EntryError(f"unreliable: expected true or false, got {info.get('unreliable')!r}")
    keep = {k: info[k] for k in _KEEP if k in info}
    entry: dict[str, Any] = {
        "name": name or info.get("model_id") or info.get("name"), "architecture": info.get("architecture"),
        "dataset": dataset, "threat": threat, "clean": {"accuracy": clean, "n": n}, "source": "robustbench",
        "robustbench": {**keep, "name": info.get("name"), "model_id": info.get("model_id")},
        "unreliable": bool(info.get("unreliable", False)),
    }
    if threat == "corruptions":
        corr = _percent(info, "corruptions_acc", True)
        entry.update(eps=None, robust={"accuracy": corr, "n": None},
                     attack_protocol={"name": "common-corruptions", "version": "robustbench", "n_examples": n})
    else:
        eps_text = info.get("eps")
        try:
            eps = parse_eps(eps_text)
        except (TypeError, ValueError):
            raise EntryError(f"eps: expected a radius such as \"8/255\", got {eps_text!r}") from None
        robust = _percent(info, "autoattack_acc", True)
        external = _percent(info, "external", False)
        _at_most(info, "autoattack_acc", robust, "clean_acc", clean)
        if external is not None:
            _at_most(info, "external", external, "autoattack_acc", robust)
        entry.update(eps=eps, eps_str=str(eps_text), robust={"accuracy": robust, "n": n},
                     attack_protocol={"name": "autoattack", "version": "standard", "n_examples": n},
                     external=external)
    return validate(entry)


def _at_most(info: Mapping[str, Any], field: str, value: float, bound_field: str, bound: float) -> None:
    """Refuse ``field`` above ``bound_field`` (robust accuracy above clean, an adaptive attack's number
    above the protocol's), naming the record's own fields."""
    if value > bound + 1e-9:
        raise EntryError(f"{field}: {info[field]!r} is above {bound_field} {info[bound_field]!r}; a robust "
                         "accuracy is at most the clean one, and external at most autoattack_acc")


def read_robustbench(path: str | Path, threat: str | None = None, n_examples: int | None = None) -> dict[str, Any]:
    """:func:`from_robustbench` on a file; the file name (without .json) is the model id."""
    file = Path(path)
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EntryError(f"{file}: not JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise EntryError(f"{file}: not a UTF-8 text file") from None
    except OSError as err:
        raise EntryError(f"{file}: cannot be read ({err.strerror})") from None
    if isinstance(info, dict):
        info = {**info, "model_id": info.get("model_id") or file.stem}
    if threat is None:  # RobustBench layout: model_info/<dataset>/<threat>/<model>.json
        folder = file.parent.name
        threat = folder if folder in THREATS else None
    return from_robustbench(info, threat, n_examples)


def to_robustbench(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The RobustBench ``model_info`` record of an entry (for a submission or a side-by-side board)."""
    entry = validate(entry)
    rb = entry.get("robustbench") or {}
    out: dict[str, Any] = {
        "name": rb.get("name") or entry["name"], "link": rb.get("link", ""), "authors": rb.get("authors", ""),
        "additional_data": rb.get("additional_data", False), "number_forward_passes": rb.get("number_forward_passes", 1),
        "dataset": entry["dataset"], "venue": rb.get("venue", ""), "architecture": entry.get("architecture") or "",
        "eps": entry.get("eps_str"), "clean_acc": percent(entry["clean"]["accuracy"], unit="", missing=""),
        "reported": rb.get("reported", ""), "unreliable": entry["unreliable"], "footnote": rb.get("footnote", ""),
    }
    robust = entry.get("robust")
    if entry["threat"] == "corruptions":
        out["corruptions_acc"] = percent(None if robust is None else robust["accuracy"], unit="", missing="")
        if "corruptions_mce" in rb:
            out["corruptions_mce"] = rb["corruptions_mce"]
    else:
        out["autoattack_acc"] = percent(None if robust is None else robust["accuracy"], unit="", missing="")
        out["external"] = percent(entry.get("external"), unit="", missing="")
    return out
