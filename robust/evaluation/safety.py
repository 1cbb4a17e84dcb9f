"""Safety-critical classes: a harm matrix, the safety view of a robustness report, and targeted attacks
toward the most harmful confusions.

Accuracy counts every error alike; a driver does not. :class:`HarmMatrix` gives each confusion
(true class, predicted class) a non-negative cost, 0 on the diagonal; :func:`safety_view` reads a
:class:`~robust.evaluation.results.RobustnessReport`'s per-example predictions and reports, for the
safety-critical classes, clean and robust accuracy with 95% Clopper-Pearson intervals, the worst class,
and harm-weighted figures: mean harm per example, clean and under attack, and the share of errors that
are *severe* (cost >= the matrix's ``severe`` threshold). :func:`targeted_success` measures the most
harmful confusions directly: APGD-T (Croce & Hein 2020, targeted DLR loss, 100 steps) toward each class
of a target set (stop -> any of the 8 speed limits); an image counts once any target is reached.

A harm file (YAML or JSON) configures the matrix per project (:meth:`HarmMatrix.from_file`)::

    base: gtsrb          # start from the GTSRB default below; "uniform" (every confusion costs 1) otherwise
    severe: 5            # an error with cost >= 5 is severe (optional)
    safety: [stop, yield, 27]                      # the classes reported first (optional)
    costs:               # applied in order, a later rule overriding an earlier one; the diagonal stays 0
      - {label: stop, read_as: "group:speed_limit", cost: 10}
      - {label: 2, read_as: [3, 4], cost: 1.5}
      - {label: "*", read_as: "no entry", cost: 2}
    # matrix: [[0, 1, ...], ...]                   # or a full C x C matrix in place of base

A class is named by its id, by its name in the data set's class metadata (case-insensitive), as
``group:<name>`` (all classes of a metadata group) or ``*`` (every class).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from tqdm.auto import tqdm

from robust.attacks.independent import in_ball
from robust.base.batching import check_images
from robust.base.classes import ClassMetadata, class_metadata
from robust.base.errors import InputError
from robust.base.runtime import batched_logits, check_fits, eval_mode, model_device
from robust.base.stats import accuracy_record, clopper_pearson
from robust.base.threat import ThreatModel

__all__ = ["HarmMatrix", "HarmMatrixError", "TargetedAPGD", "SEVERE", "add_certified", "certified_per_class",
           "default_harm", "default_targeted", "gtsrb_harm", "harm_figures", "parse_classes", "parse_targeted",
           "rate", "safety_view", "targeted_success"]

SEVERE = 5.0
"""The default cost from which an error counts as severe (GTSRB default: a missed stop, yield or no entry,
a lost warning of pedestrians, children or cyclists, a speed limit read 70 km/h or more too high)."""
FILE_KEYS = ("base", "severe", "safety", "costs", "matrix")


class HarmMatrixError(InputError, ValueError):
    """A harm matrix, harm file or class reference that cannot be used; the message names the bad value."""


def rate(count: int, n: int) -> dict[str, Any]:
    """``{"rate", "count", "n", "ci95"}``: a proportion that is not an accuracy, with its 95% Clopper-Pearson
    interval (``[0, 1]`` when ``n`` is 0)."""
    return {"rate": count / n if n else 0.0, "count": int(count), "n": int(n), "ci95": list(clopper_pearson(count, n))}


# ------------------------------------------------------------------------------------------ harm matrix


@dataclass(frozen=True, eq=False)
class HarmMatrix:
    """``costs[true, pred]``: the harm of reading class ``true`` as ``pred``; C x C, finite, >= 0, diagonal 0.

    ``severe`` is the cost from which an error counts as severe (``None``: no severity figures, as for the
    uniform matrix, where every error costs 1); ``source`` says where the matrix came from (reports record
    it); ``safety`` optionally names the classes a report leads with.
    """

    costs: np.ndarray
    severe: float | None = SEVERE
    source: str = "uniform"
    safety: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        where = f"harm matrix ({self.source})"
        try:
            costs = np.array(self.costs, dtype=np.float64)
        except (TypeError, ValueError):
            raise HarmMatrixError(f"{where}: costs must be a square matrix of numbers") from None
        if costs.ndim != 2 or costs.shape[0] != costs.shape[1] or costs.shape[0] < 2:
            raise HarmMatrixError(f"{where}: costs must be a C x C matrix with C >= 2, got shape {costs.shape}")
        bad = np.argwhere(~np.isfinite(costs))
        if len(bad):
            i, j = bad[0]
            raise HarmMatrixError(f"{where}: cost [{i}, {j}] is {costs[i, j]}, not a finite number")
        bad = np.argwhere(costs < 0)
        if len(bad):
            i, j = bad[0]
            raise HarmMatrixError(f"{where}: cost [{i}, {j}] is {costs[i, j]:g}; costs must be >= 0")
        diag = np.flatnonzero(np.diag(costs))
        if len(diag):
            raise HarmMatrixError(f"{where}: cost [{diag[0]}, {diag[0]}] is {costs[diag[0], diag[0]]:g}; a correct "
                                  "prediction costs 0")
        if self.severe is not None and (isinstance(self.severe, bool) or not isinstance(self.severe, numbers.Real)
                                        or not math.isfinite(self.severe) or self.severe <= 0):
            raise HarmMatrixError(f"{where}: severe must be a finite number > 0, got {self.severe!r}")
        if self.safety is not None:
            object.__setattr__(self, "safety", tuple(int(c) for c in self.safety))
            out = [c for c in self.safety if not 0 <= c < len(costs)]
            if out:
                raise HarmMatrixError(f"{where}: safety class {out[0]} is not in 0..{len(costs) - 1}")
        costs.setflags(write=False)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "severe", None if self.severe is None else float(self.severe))

    @property
    def num_classes(self) -> int:
        return int(self.costs.shape[0])

    def cost(self, true: int, pred: int) -> float:
        return float(self.costs[true, pred])

    def of(self, labels: Any, preds: Any) -> np.ndarray:
        """The cost of each ``(label, pred)`` pair, as a float64 array."""
        return self.costs[np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "severe": self.severe, "num_classes": self.num_classes,
                "safety": None if self.safety is None else list(self.safety), "costs": self.costs.tolist()}

    @classmethod
    def uniform(cls, num_classes: int, cost: float = 1.0) -> HarmMatrix:
        """Every confusion costs ``cost``: mean harm is then the error rate; no error is singled out as severe."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise HarmMatrixError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        return cls(cost * (1 - np.eye(num_classes)), severe=None, source="uniform")

    @classmethod
    def from_dict(cls, spec: Any, num_classes: int, metadata: ClassMetadata | None = None,
                  where: str = "harm file") -> HarmMatrix:
        """The matrix a harm file's content describes (see the module docstring); ``metadata`` resolves names."""
        if not isinstance(spec, Mapping):
            raise HarmMatrixError(f"{where}: must be a mapping with keys {', '.join(FILE_KEYS)}, got "
                                  f"{type(spec).__name__}")
        unknown = sorted(set(map(str, spec)) - set(FILE_KEYS))
        if unknown:
            raise HarmMatrixError(f"{where}: unknown key {unknown[0]!r}; a harm file takes {', '.join(FILE_KEYS)}")
        if "matrix" in spec and "base" in spec:
            raise HarmMatrixError(f"{where}: give base or matrix, not both")
        if "matrix" in spec:
            costs = _matrix(spec["matrix"], num_classes, where)
        else:
            base = spec.get("base", "uniform")
            if base == "uniform":
                costs = 1 - np.eye(num_classes)
            elif base == "gtsrb":
                costs = gtsrb_harm(metadata if metadata is not None and metadata.num_classes == num_classes
                                   else None).costs.copy()
                if len(costs) != num_classes:
                    raise HarmMatrixError(f"{where}: base gtsrb has 43 classes, the data has {num_classes}")
            else:
                raise HarmMatrixError(f"{where}: base must be uniform or gtsrb, got {base!r}")
        rules = spec.get("costs") or []
        if not isinstance(rules, list):
            raise HarmMatrixError(f"{where}: costs must be a list of {{label, read_as, cost}} rules, got "
                                  f"{rules!r:.60}")
        for k, rule in enumerate(rules):
            at = f"{where}: costs[{k}]"
            if not isinstance(rule, Mapping) or set(rule) != {"label", "read_as", "cost"}:
                raise HarmMatrixError(f"{at}: a rule has exactly the keys label, read_as and cost, got {rule!r:.80}")
            value = _number(rule["cost"], f"{at}.cost")
            rows = parse_classes(rule["label"], num_classes, metadata, f"{at}.label")
            cols = parse_classes(rule["read_as"], num_classes, metadata, f"{at}.read_as")
            costs[np.ix_(rows, cols)] = value
        np.fill_diagonal(costs, 0.0)
        severe = spec.get("severe", SEVERE if "base" in spec and spec["base"] == "gtsrb" else None)
        if severe is not None:
            severe = _number(severe, f"{where}: severe")
            if severe <= 0:
                raise HarmMatrixError(f"{where}: severe must be > 0, got {severe:g}")
        safety = spec.get("safety")
        if safety is not None:
            safety = tuple(dict.fromkeys(parse_classes(safety, num_classes, metadata, f"{where}: safety")))
        return cls(costs, severe=severe, source=where, safety=safety)

    @classmethod
    def from_file(cls, path: str | Path, num_classes: int, metadata: ClassMetadata | None = None) -> HarmMatrix:
        """Read a YAML or JSON harm file (``.json`` is read as JSON, anything else as YAML, a superset of it)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise HarmMatrixError(f"harm file {path}: not found" if not path.exists() else
                                  f"harm file {path}: not a file")
        try:
            text = path.read_text(encoding="utf-8")
            spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HarmMatrixError(f"harm file {path}: not {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                                  f"({reason})") from None
        return cls.from_dict(spec, num_classes, metadata, where=f"harm file {path}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise HarmMatrixError(f"{where} must be a finite number, got {value!r}")
    if value < 0:
        raise HarmMatrixError(f"{where} is {value:g}; costs must be >= 0")
    return float(value)


def _matrix(value: Any, num_classes: int, where: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise HarmMatrixError(f"{where}: matrix must be a list of rows")
    if len(value) != num_classes or any(len(row) != num_classes for row in value):
        shape = f"{len(value)} rows of {sorted({len(r) for r in value})} entries"
        raise HarmMatrixError(f"{where}: matrix must be {num_classes} x {num_classes} (the data's classes), "
                              f"got {shape}")
    out = np.zeros((num_classes, num_classes))
    for i, row in enumerate(value):
        for j, v in enumerate(row):
            out[i, j] = _number(v, f"{where}: matrix[{i}][{j}]")
    diag = np.flatnonzero(np.diag(out))
    if len(diag):
        raise HarmMatrixError(f"{where}: matrix[{diag[0]}][{diag[0]}] is {out[diag[0], diag[0]]:g}; a correct "
                              "prediction costs 0")
    return out


def parse_classes(ref: Any, num_classes: int, metadata: ClassMetadata | None = None,
                  where: str = "class") -> list[int]:
    """The class ids ``ref`` names: an id, a name in ``metadata``, ``group:<name>``, ``*``, or a list of these."""
    if isinstance(ref, list):
        if not ref:
            raise HarmMatrixError(f"{where}: an empty list names no class")
        return [c for r in ref for c in parse_classes(r, num_classes, metadata, where)]
    if isinstance(ref, numbers.Integral) and not isinstance(ref, bool):
        if not 0 <= ref < num_classes:
            raise HarmMatrixError(f"{where}: class {ref} is not in 0..{num_classes - 1}")
        return [int(ref)]
    if not isinstance(ref, str) or not ref.strip():
        raise HarmMatrixError(f"{where}: {ref!r} is not a class id, name, group:<name> or *")
    text = ref.strip()
    if text == "*":
        return list(range(num_classes))
    if text.lstrip("-").isdigit():
        return parse_classes(int(text), num_classes, metadata, where)
    if metadata is None:
        raise HarmMatrixError(f"{where}: class name {text!r} needs the data set's class metadata; this data has "
                              "none, so name classes by id")
    if metadata.num_classes != num_classes:
        raise HarmMatrixError(f"{where}: the class metadata names {metadata.num_classes} classes, the data has "
                              f"{num_classes}")
    if text.lower().startswith("group:"):
        group = text[6:].strip()
        if group not in metadata.groups:
            raise HarmMatrixError(f"{where}: unknown group {group!r}; groups: {', '.join(metadata.groups)}")
        return list(metadata.groups[group])
    try:
        return [metadata.index(text)]
    except ValueError:
        raise HarmMatrixError(f"{where}: unknown class name {text!r}") from None


def gtsrb_harm(metadata: ClassMetadata | None = None) -> HarmMatrix:
    """The default harm matrix for GTSRB, built from its class metadata's names and groups.

    Costs (true -> predicted), each rule overriding the ones before it; any confusion costs at least 1:

    * 2: a prohibitory sign (no passing, no vehicles, trucks) read as anything else; a mandatory sign read
      as a non-mandatory one; anything read as stop, yield or no entry (a phantom stop: braking where
      traffic behind does not expect it);
    * 3: a mandatory direction read as another direction (keep right read as keep left); a danger warning
      read as a non-danger sign; stop, yield and no entry read as one another (a stop taken for a yield
      rolls through);
    * 6: pedestrians, children or bicycles crossing read as anything but another warning or a stop sign
      (the warning of vulnerable road users is lost; read as another warning: 2);
    * speed limit v read as w: 1 when w < v (too slow), ``1 + ceil((w - v) / 20)`` when w > v (50 -> 60: 2,
      30 -> 120: 6); a speed limit read as an end of limits: 4 (the car resumes open-road speed);
    * 8: stop, yield or no entry read as any other sign (the obligation to stop, give way or keep out is lost),
      10 when read as a speed limit, priority road, right-of-way or end of limits: the car is told to
      carry on at speed into cross traffic or against one-way traffic (Eykholt et al. 2018 attack exactly
      this stop -> speed limit confusion).

    ``severe`` is :data:`SEVERE` (5): the missed stops, the lost vulnerable-road-user warnings and a speed
    limit read 70 km/h or more too high.
    """
    meta = metadata if metadata is not None else class_metadata("gtsrb")
    try:
        obey = [meta.index(n) for n in ("stop", "yield", "no entry")]
        grant = [meta.index(n) for n in ("priority road", "right-of-way at next intersection")]
        vulnerable = [meta.index(n) for n in ("pedestrians", "children crossing", "bicycles crossing")]
        groups = {g: list(meta.groups[g]) for g in ("speed_limit", "derestriction", "mandatory", "danger",
                                                    "prohibitory")}
        kmh = {c: int(meta.name(c).split()[-1]) for c in groups["speed_limit"]}
    except (KeyError, ValueError, IndexError, AttributeError) as err:
        raise HarmMatrixError(f"the GTSRB default harm matrix needs GTSRB's class metadata: {err}") from None
    n = meta.num_classes
    every = list(range(n))
    costs = np.ones((n, n))

    def rule(rows: Sequence[int], cols: Sequence[int], value: float) -> None:
        costs[np.ix_(list(rows), list(cols))] = value

    def others(group: Sequence[int]) -> list[int]:
        return [c for c in every if c not in group]

    rule(groups["prohibitory"], others(groups["prohibitory"]), 2)
    rule(groups["mandatory"], others(groups["mandatory"]), 2)
    rule(groups["mandatory"], groups["mandatory"], 3)
    rule(groups["danger"], others(groups["danger"]), 3)
    rule(vulnerable, others(groups["danger"]), 6)
    rule(vulnerable, groups["danger"], 2)
    for v, cv in kmh.items():
        for w, cw in kmh.items():
            costs[v, w] = 1 if cw < cv else 1 + math.ceil((cw - cv) / 20)
    rule(groups["speed_limit"], groups["derestriction"], 4)
    rule(others(obey), obey, 2)
    rule(obey, every, 8)
    rule(obey, groups["speed_limit"] + grant + groups["derestriction"], 10)
    rule(obey, obey, 3)
    np.fill_diagonal(costs, 0.0)
    return HarmMatrix(costs, severe=SEVERE, source="gtsrb default", safety=tuple(meta.safety) or None)


def _is_gtsrb(metadata: ClassMetadata | None) -> bool:
    reference = class_metadata("gtsrb")
    return metadata is not None and reference is not None and tuple(metadata.names) == tuple(reference.names)


def default_harm(num_classes: int, metadata: ClassMetadata | None = None) -> HarmMatrix:
    """GTSRB's default (:func:`gtsrb_harm`) for GTSRB's classes, the uniform matrix otherwise."""
    if _is_gtsrb(metadata) and metadata.num_classes == num_classes:
        return gtsrb_harm(metadata)
    return HarmMatrix.uniform(num_classes)


def default_targeted(metadata: ClassMetadata | None) -> list[tuple[int, tuple[int, ...]]]:
    """The most harmful targeted confusion to measure by default: for GTSRB, stop -> any of the 8 speed
    limits (the confusion of Eykholt et al. 2018); nothing for other data."""
    if not _is_gtsrb(metadata):
        return []
    return [(metadata.index("stop"), tuple(metadata.groups["speed_limit"]))]


def parse_targeted(text: str, num_classes: int, metadata: ClassMetadata | None = None,
                   where: str = "--targeted") -> list[tuple[int, tuple[int, ...]]]:
    """``"14>0,1,2;stop>group:speed_limit"`` as ``[(source, targets), ...]``: pairs separated by ``;``, a
    source and its comma-separated targets by ``>`` (ids, names, ``group:<name>``)."""
    pairs = []
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if part.count(">") != 1:
            raise HarmMatrixError(f"{where}: {part!r} must read SOURCE>TARGET,TARGET,... (e.g. 14>0,1,2)")
        left, right = (s.strip() for s in part.split(">"))
        sources = parse_classes(left, num_classes, metadata, f"{where} source")
        if len(sources) != 1:
            raise HarmMatrixError(f"{where}: {left!r} names {len(sources)} classes; give one source class")
        targets = [c for t in right.split(",") if t.strip()
                   for c in parse_classes(t.strip(), num_classes, metadata, f"{where} target")]
        targets = tuple(dict.fromkeys(targets))
        if not targets:
            raise HarmMatrixError(f"{where}: {part!r} names no target class")
        if sources[0] in targets:
            raise HarmMatrixError(f"{where}: {part!r}: the source class {sources[0]} cannot be its own target")
        pairs.append((sources[0], targets))
    if not pairs:
        raise HarmMatrixError(f"{where}: {text!r} names no SOURCE>TARGETS pair")
    return pairs


# ------------------------------------------------------------------------------------------- the view


def _class_entry(c: int, clean_ok: np.ndarray, robust: np.ndarray, labels: np.ndarray,
                 metadata: ClassMetadata | None) -> dict[str, Any]:
    sel = labels == c
    n = int(sel.sum())
    return {"class": c, "name": metadata.name(c) if metadata is not None else None,
            "group": metadata.group_of(c) if metadata is not None else None, "n": n,
            "clean": accuracy_record(int(clean_ok[sel].sum()), n) if n else None,
            "robust": accuracy_record(int(robust[sel].sum()), n) if n else None}


def _worst(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The entry with the lowest robust accuracy (ties: the larger sample, then the lower id)."""
    seen = [e for e in entries if e["n"]]
    return dict(min(seen, key=lambda e: (e["robust"]["accuracy"], -e["n"], e["class"]))) if seen else None


def harm_figures(harm: HarmMatrix, labels: np.ndarray, preds: np.ndarray, top: int = 5) -> dict[str, Any]:
    """Mean and total harm of ``preds`` against ``labels``, the errors, the severe share of errors and of
    examples (proportions, with intervals) and the ``top`` confusions by total harm."""
    cost = harm.of(labels, preds)
    n, wrong = len(labels), preds != labels
    errors = int(wrong.sum())
    out: dict[str, Any] = {"mean": float(cost.mean()) if n else 0.0, "total": float(cost.sum()), "n": n,
                           "errors": errors, "max": float(cost.max()) if n else 0.0}
    if harm.severe is not None:
        severe = int((wrong & (cost >= harm.severe)).sum())
        out["severe_errors"] = severe
        out["severe_share_of_errors"] = rate(severe, errors)
        out["severe_share_of_examples"] = rate(severe, n)
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(labels[wrong].tolist(), preds[wrong].tolist()):
        pairs[(t, p)] = pairs.get((t, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1] * harm.cost(*kv[0]), -kv[1], kv[0]))[:top]
    out["top"] = [{"true": t, "pred": p, "count": k, "cost": harm.cost(t, p), "total": k * harm.cost(t, p)}
                  for (t, p), k in ranked]
    return out


def safety_view(report: Any, harm: HarmMatrix | None = None, metadata: ClassMetadata | None = None,
                safety_classes: Sequence[int] | None = None,
                targeted: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The safety section of a robustness report (a :class:`RobustnessReport` or its dict).

    Per safety class (``safety_classes``, else the harm matrix's, else the metadata's, else the targeted
    sources, else every class): clean and robust accuracy with intervals; the worst class over all classes
    and over the safety classes; harm per example clean (clean prediction) and under attack (the prediction
    the evaluation's untargeted attacks produced: they do not aim at harmful classes, so this is the harm
    an accuracy-driven attacker causes, not the worst harm; ``targeted`` measures that). ``targeted`` results
    of :func:`targeted_success` are kept with the untargeted figure for the same source class.
    """
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    pe = d.get("per_example") or {}
    if not pe.get("label"):
        raise InputError("the safety view needs the report's per-example predictions (per_example), which "
                         "this report lacks")
    labels = np.asarray(pe["label"], dtype=np.int64)
    clean_pred = np.asarray(pe["clean_pred"], dtype=np.int64)
    adv_pred = np.asarray(pe["adv_pred"], dtype=np.int64)
    clean_ok = clean_pred == labels
    bits = pe.get("robust") or {}
    robust = clean_ok & (adv_pred == labels)
    for b in bits.values():
        robust &= np.frombuffer(b.encode(), dtype=np.uint8) == ord("1")
    num_classes = (d.get("protocol") or {}).get("num_classes") or (harm.num_classes if harm else None) \
        or (metadata.num_classes if metadata else None) or int(max(labels.max(), clean_pred.max(), adv_pred.max())) + 1
    harm = harm if harm is not None else default_harm(num_classes, metadata)
    if harm.num_classes != num_classes:
        raise HarmMatrixError(f"the harm matrix ({harm.source}) has {harm.num_classes} classes, the report "
                              f"{num_classes}")
    if metadata is not None and metadata.num_classes != num_classes:
        metadata = None
    if safety_classes is None:
        safety_classes = harm.safety or (metadata.safety if metadata is not None else None) \
            or tuple(dict.fromkeys(int(t["source"]) for t in targeted)) or tuple(range(num_classes))
    safety_classes = [int(c) for c in safety_classes]
    bad = [c for c in safety_classes if not 0 <= c < num_classes]
    if bad:
        raise HarmMatrixError(f"safety class {bad[0]} is not in 0..{num_classes - 1}")
    every = [_class_entry(c, clean_ok, robust, labels, metadata) for c in range(num_classes)]
    classes = [every[c] for c in safety_classes]
    view = {
        "threat": d.get("threat"), "n_examples": int(len(labels)), "num_classes": num_classes,
        "metadata": "gtsrb" if _is_gtsrb(metadata) else None,
        "safety_classes": safety_classes, "classes": classes,
        "worst_class": _worst(every), "worst_safety_class": _worst(classes),
        "harm": {"matrix": harm.to_dict(), "clean": harm_figures(harm, labels, clean_pred),
                 "adversarial": harm_figures(harm, labels, adv_pred),
                 "note": "the predictions of the evaluation's untargeted attacks, which aim at any wrong class, "
                         "not at the costly ones (the targeted attacks do)"},
        "targeted": [],
    }
    for result in targeted:
        add_targeted(view, result, metadata)
    return view


def add_targeted(view: dict[str, Any], result: Mapping[str, Any],
                 metadata: ClassMetadata | None = None) -> dict[str, Any]:
    """Append a :func:`targeted_success` result to ``view["targeted"]`` with the untargeted figures for its
    source class beside it: the share of its images misread under the untargeted attacks (of all, and of
    those read correctly when clean); ``metadata`` adds the class names."""
    entry = dict(result)
    source = int(entry["source"])
    if metadata is not None and metadata.num_classes == view.get("num_classes"):
        entry["source_name"] = metadata.name(source)
        entry["target_names"] = [metadata.name(int(t)) for t in entry["targets"]]
    cls = next((e for e in view.get("classes", []) if e["class"] == source), None)
    if cls is None or cls.get("robust") is None:
        worst = view.get("worst_class")
        cls = worst if worst and worst["class"] == source else None
    if cls is not None and cls.get("robust") is not None:
        n, right, kept = cls["n"], cls["clean"]["correct"], cls["robust"]["correct"]
        entry["untargeted"] = {"misread": rate(n - kept, n), "misread_of_correct": rate(right - kept, right)}
    view.setdefault("targeted", []).append(entry)
    return entry


def certified_per_class(certificate: Mapping[str, Any], classes: Sequence[int],
                        radius: float | None = None) -> dict[str, Any]:
    """Certified accuracy per class from a certification report's ``per_example`` rows: ``verified`` for the
    bound methods; for randomized smoothing, correct with a certified L2 radius >= ``radius`` (default: the
    smallest positive radius the report lists)."""
    rows = certificate.get("per_example") or []
    if certificate.get("method") == "smoothing":
        if radius is None:
            listed = [m["radius"] for m in certificate.get("certified_accuracy") or [] if m["radius"] > 0]
            radius = min(listed) if listed else 0.0
        ok = [bool(r["correct"]) and r["radius"] >= radius for r in rows]
        what = f"randomized smoothing, L2 radius {radius:g}"
    else:
        ok = [r["status"] == "verified" for r in rows]
        what = f"{certificate.get('method')} at {(certificate.get('threat') or {}).get('eps_str', '?')}"
    labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
    ok_arr = np.asarray(ok, dtype=bool)
    per = {}
    for c in classes:
        sel = labels == c
        per[str(int(c))] = accuracy_record(int(ok_arr[sel].sum()), int(sel.sum())) if sel.any() else None
    return {"by": what, "radius": radius, "per_class": per}


def add_certified(view: dict[str, Any], certificate: Mapping[str, Any], radius: float | None = None) -> None:
    """Add each safety class's (and the worst classes') certified accuracy from ``certificate`` to ``view``."""
    entries = [*view["classes"], *(e for e in (view.get("worst_class"), view.get("worst_safety_class")) if e)]
    found = certified_per_class(certificate, sorted({e["class"] for e in entries}), radius)
    for e in entries:
        e["certified"] = found["per_class"].get(str(e["class"]))
    view["certified_by"] = found["by"]


# ------------------------------------------------------------------------------------- targeted attacks


class TargetedAPGD(torchattacks.APGDT):
    """torchattacks' APGD-T (Croce & Hein 2020: momentum, step-size halving at checkpoints, 1 restart) aimed
    at one given class ``target`` instead of the k-th most likely one.

    ``loss="dlr"`` is APGD-T's targeted DLR loss, ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (needs
    >= 4 classes); ``"ce"`` is the targeted cross-entropy ``-CE(z, t)`` of the reference code. Every
    iterate is checked: an image is returned at the first iterate the model reads as ``target`` (APGD keeps
    only the last misclassified iterate, which may land elsewhere), else at its best-loss iterate. Like
    APGD-T it reseeds the global RNG: call it under ``torch.random.fork_rng()``.
    """

    def __init__(self, model: nn.Module, target: int, norm: str = "Linf", eps: float = 8 / 255, steps: int = 100,
                 seed: int = 0, loss: str = "dlr", rho: float = 0.75):
        if loss not in ("dlr", "ce"):
            raise ValueError(f"loss must be dlr or ce, got {loss!r}")
        super().__init__(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, eot_iter=1, rho=rho,
                         n_classes=2)
        self.n_target_classes, self.target_class = 1, 2  # APGDT's own choice of target, unused by the loss
        self.target, self.target_loss = int(target), loss
        self.reached: torch.Tensor | None = None
        self.first: torch.Tensor | None = None

    def dlr_loss_targeted(self, x: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        target = torch.full_like(y, self.target)
        if self.target_loss == "ce":
            return -F.cross_entropy(x, target, reduction="none")
        return super().dlr_loss_targeted(x, y, target)

    def get_logits(self, inputs: torch.Tensor, labels: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = super().get_logits(inputs, labels, *args, **kwargs)
        if self.reached is not None and len(inputs) == len(self.reached):
            hit = (logits.detach().argmax(1) == self.target) & ~self.reached
            self.first[hit] = inputs.detach()[hit]
            self.reached |= hit
        return logits

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        self.reached = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.first = images.clone()
        try:
            torch.manual_seed(self.seed)
            best, _, _, _ = self.attack_single_run(images, labels)
            return torch.where(self.reached.view(-1, *[1] * (images.ndim - 1)), self.first, best.detach())
        finally:
            self.reached = self.first = None


def targeted_success(model: nn.Module, x: torch.Tensor, y: torch.Tensor, source: int, targets: Sequence[int],
                     threat: ThreatModel | Mapping | str, steps: int = 100, batch_size: int = 256, seed: int = 0,
                     progress: bool = True, loss: str = "dlr") -> dict[str, Any]:
    """How often the images of class ``source`` are read as any class in ``targets`` under ``threat``.

    Every source image the model reads correctly is attacked by :class:`TargetedAPGD` toward each target in
    turn (``steps`` per target, 100 as in AutoAttack's APGD-T), the next target only on the images no
    earlier one reached; an image counts once the model reads a point in [0, 1] inside the eps-ball (checked
    by us) as a target. ``success`` is over all source images (a clean misreading into a target counts:
    it is what the car sees), ``success_on_correct`` over those attacked; both with 95% intervals. The model
    runs in eval mode; the global RNG is left untouched.
    """
    threat = ThreatModel.coerce(threat)
    check_images(x, y)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    device = model_device(model)
    with eval_mode(model):
        n_classes = check_fits(model, x)
        targets = tuple(dict.fromkeys(int(t) for t in targets))
        bad = [c for c in (source, *targets) if not 0 <= int(c) < n_classes]
        if bad or not targets or source in targets:
            raise ValueError(f"source {source} and targets {list(targets)} must be distinct classes in "
                             f"0..{n_classes - 1}, with at least one target")
        if loss == "dlr" and n_classes < 4:
            raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {n_classes}; use "
                             "loss='ce'")
        xs = x[y == source]
        n = len(xs)
        pred = batched_logits(model, xs, batch_size).argmax(1) if n else torch.zeros(0, dtype=torch.long)
        correct = pred == source
        target_set = torch.tensor(targets)
        reached_by = torch.where(torch.isin(pred, target_set), pred, torch.full_like(pred, -1))
        devices = [device] if device.type == "cuda" else []
        total = len(targets) * -(-int(correct.sum()) // batch_size)
        with tqdm(total=total, desc=f"targeted {source}>{','.join(map(str, targets))}",
                  disable=not progress or total == 0, leave=False) as bar, \
                torch.random.fork_rng(devices=devices), torch.enable_grad():
            for ti, t in enumerate(targets):
                todo = (correct & (reached_by < 0)).nonzero().flatten()
                for b, first in enumerate(range(0, len(todo), batch_size)):
                    idx = todo[first:first + batch_size]
                    bx = xs[idx].to(device)
                    by = torch.full((len(idx),), source, dtype=torch.long, device=device)
                    attack = TargetedAPGD(model, t, "Linf" if threat.norm == "linf" else "L2", float(threat.eps),
                                          steps, seed=seed + 7919 * ti + 104_729 * b, loss=loss)
                    adv = attack(bx, by).detach()
                    with torch.no_grad():
                        hit = (model(adv).argmax(1) == t) & in_ball(adv, bx, threat)
                    reached_by[idx[hit.cpu()]] = t
                    bar.update(1)
    reached = reached_by >= 0
    attacked = int(correct.sum())
    return {
        "source": int(source), "targets": list(targets), "attack": "apgd-t (one target at a time)",
        "settings": {"norm": threat.norm, "eps": float(threat.eps), "eps_str": repr(threat.eps), "steps": steps,
                     "restarts": 1, "loss": loss, "rho": 0.75, "seed": seed, "batch_size": batch_size,
                     "impl": f"torchattacks {torchattacks.__version__} APGDT with a fixed target"},
        "n": n, "clean_correct": attacked, "clean_at_target": int((reached & ~correct).sum()),
        "success": rate(int(reached.sum()), n), "success_on_correct": rate(int((reached & correct).sum()), attacked),
        "per_target": {str(t): int(((reached_by == t) & correct).sum()) for t in targets},
        "seconds": time.perf_counter() - start,
    }
