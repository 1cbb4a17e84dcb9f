"""Certification reports: randomized smoothing (L2) and bound-based verification (L-inf, IBP or
CROWN) as dicts, and their check against an evaluation report. :mod:`robust.reports.certification`
writes them (``report.json``, ``report.md``, a per-example TSV, plots) and logs them to wandb.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from robust.base.batching import collect
from robust.base.provenance import describe_run
from robust.base.runtime import batched_logits, eval_mode, num_classes
from robust.base.safe_load import check_finite_weights
from robust.base.stats import accuracy_record
from robust.certify.smoothing import ABSTAIN, Smooth, attack_smoothed, certify_dataset
from robust.certify.verify import consistency, smoothing_tolerance, verify

__all__ = ["smoothing_report", "verification_report", "compare_with_evaluation", "check_evaluation"]

# A smoothing certificate is an L2 ball whose radius varies per example: the report lists radii, no one eps.
SMOOTHING_THREAT = {"kind": "l2", "norm": "l2"}


# ----------------------------------------------------------------------------------------- building


def smoothing_report(
    model: torch.nn.Module,
    data: Any,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    n_examples: int | None = None,
    seed: int = 0,
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
    attack_radius: float | None = None,
    attack_examples: int = 100,
    attack_options: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Certify ``data`` with :class:`Smooth` (Cohen et al. 2019) and summarise it as a report.

    ``clean`` is the smoothed classifier's accuracy (its CERTIFY prediction, abstentions count
    as wrong), ``base_clean`` the base model's. With ``attack_radius``, the first
    ``attack_examples`` examples are also attacked at that L2 radius with
    :func:`attack_smoothed`, which gives an empirical upper bound to check the certificates
    against: certified <= robust <= clean, allowing the few failures that ``alpha`` permits.
    Under torchrun the examples are certified across ranks (:func:`certify_dataset`); the attack,
    whose noise is one stream over all attacked examples, runs whole on every rank.
    """
    if attack_radius is not None:
        _check_attack(attack_radius, attack_examples)
    x, y = collect(data, n_examples)
    check_finite_weights(model, "certify")
    start = time.perf_counter()
    with eval_mode(model):
        classes = num_classes(model, x)
        base = batched_logits(model, x, min(batch_size, 1024)).argmax(1)
    smooth = Smooth(model, classes, sigma, seed=seed, precision=precision)
    result = certify_dataset(smooth, x, y, n0=n0, n=n, alpha=alpha, batch_size=batch_size, radii=radii,
                             progress=progress, state_path=state_path)
    rows = result["rows"]
    total = len(rows)
    report: dict[str, Any] = {
        "kind": "certification",
        "method": "smoothing",
        "threat": dict(SMOOTHING_THREAT),
        "sigma": float(sigma),
        "settings": {"n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size, "seed": seed,
                     "precision": smooth.precision},
        "n_examples": total,
        "clean": accuracy_record(sum(r["correct"] for r in rows), total),
        "base_clean": accuracy_record(int((base == y).sum()), total),
        "certified_accuracy": [{"radius": r, "certified": rec} for r, rec in result["certified_accuracy"].items()],
        "acr": result["acr"],
        "abstention_rate": result["abstention_rate"],
        "seconds_per_example": result["seconds_per_example"],
        "max_certifiable_radius": result["max_certifiable_radius"],
        "warnings": result["warnings"],
        "per_example": rows,
        "empirical": None,
    }
    bounds = {"radii": [r["radius"] for r in rows], "max_radius": result["max_certifiable_radius"]}
    if attack_radius is not None:
        report["empirical"], report["consistency"] = _smoothing_attack(
            smooth, x, y, rows, float(attack_radius), attack_examples, alpha, batch_size, seed, attack_options or {},
            bounds)
    else:
        report["consistency"] = consistency(report["clean"], None, report["certified_accuracy"][0]["certified"],
                                            what="smoothed classifier", **bounds)
    report["seconds"] = time.perf_counter() - start
    report["protocol"] = {"n_examples": total, "seed": seed, "batch_size": batch_size, "num_classes": classes,
                          **describe_run(model, checkpoint)}
    return report


def _smoothing_attack(smooth: Smooth, x: torch.Tensor, y: torch.Tensor, rows: list[dict], radius: float,
                      count: int, alpha: float, batch_size: int, seed: int,
                      options: Mapping[str, Any], bounds: Mapping[str, Any]) -> tuple[dict, dict]:
    m = min(count, len(rows))
    settings = {"steps": 20, "samples": 16, "n": 1_000, **options}
    start = time.perf_counter()
    adv = attack_smoothed(smooth, x[:m], y[:m], radius, alpha=alpha, batch_size=batch_size, seed=seed, **settings)
    sub = rows[:m]
    wrong = [(int(p) != ABSTAIN and int(p) != r["label"]) for p, r in zip(adv.tolist(), sub)]
    robust = [bool(r["correct"]) and not w for r, w in zip(sub, wrong)]
    certified = [bool(r["correct"]) and r["radius"] >= radius for r in sub]
    violations = [r["idx"] for r, c, w in zip(sub, certified, wrong) if c and w]
    empirical = {
        "radius": radius, "n_examples": m, "attack": "smoothadv-pgd", "settings": settings,
        "robust": accuracy_record(sum(robust), m), "certified": accuracy_record(sum(certified), m),
        "clean": accuracy_record(sum(bool(r["correct"]) for r in sub), m),
        "seconds": time.perf_counter() - start,
    }
    # each certificate fails with probability <= alpha and each PREDICT answer is wrong with <= alpha
    check = consistency(empirical["clean"], empirical["robust"], empirical["certified"], violations=violations,
                        tolerance=smoothing_tolerance(m, 2 * alpha),
                        what=f"smoothed classifier on the first {m} examples at L2 radius {radius:g}", **bounds)
    return empirical, check


def _check_attack(radius: Any, count: Any) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius < 0:
        raise ValueError(f"attack_radius must be a finite L2 radius >= 0, got {radius!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"attack_examples must be an integer >= 1, got {count!r}")


def verification_report(
    model: torch.nn.Module,
    data: Any,
    eps: Sequence[float | str],
    method: str = "crown",
    attack: str | None = "pgd",
    attack_options: Mapping[str, Any] | None = None,
    n_examples: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """:func:`robust.certify.verify.verify` at each eps; the first eps is the headline, all of them
    form the ``sweep`` (verified / inconclusive / falsified per eps)."""
    if not eps:
        raise ValueError("give at least one eps")
    x, y = collect(data, n_examples)
    check_finite_weights(model, "certify")
    start = time.perf_counter()
    reports = [verify(model, (x, y), e, method, attack, attack_options, batch_size=batch_size, seed=seed,
                      progress=progress) for e in eps]
    report = dict(reports[0])
    report["sweep"] = [{k: r[k] for k in ("threat", "clean", "certified", "robust", "status_counts", "verified_by",
                                          "consistency")} for r in reports]
    report["consistency"] = {"ok": all(r["consistency"]["ok"] for r in reports), "what": f"{method} at {len(reports)} eps value(s)",
                             "checks": [{**c, "name": f"{c['name']} (eps {r['threat']['eps_str']})"}
                                        for r in reports for c in r["consistency"]["checks"]]}
    report["consistency"]["flags"] = [c for c in report["consistency"]["checks"] if not c["passed"]]
    report["seconds"] = time.perf_counter() - start
    with eval_mode(model):
        classes = num_classes(model, x)
    report["protocol"] = {"n_examples": report["n_examples"], "seed": seed, "batch_size": batch_size,
                          "num_classes": classes, **describe_run(model, checkpoint)}
    return report


def compare_with_evaluation(report: dict, evaluation: Mapping) -> dict:
    """Check a verification report against a ``robust evaluate`` report of the same model and threat.

    Both must measure the same L-inf eps; per example where both carry the same examples
    (the evaluation's ``robust_mask``), else on the totals. Adds the checks to
    ``report["consistency"]`` and returns it.
    """
    rows = report["per_example"]
    masks = check_evaluation(evaluation, report["threat"], [r["label"] for r in rows])
    violations: list[int] = []
    if masks is not None:
        broken = [any(bits[i] == "0" for bits in masks) for i in range(len(rows))]
        violations = [r["idx"] for r, b in zip(rows, broken) if r["status"] == "verified" and b]
    check = consistency(report["clean"], evaluation["robust"], report["certified"], violations=violations,
                        what="against the evaluation report ("
                        + ", ".join((evaluation.get("per_attack") or {}).keys()) + ")")
    merged = report["consistency"]
    merged["checks"] = merged["checks"] + [{**c, "name": f"{c['name']} (evaluation report)"} for c in check["checks"]]
    merged["flags"] = [c for c in merged["checks"] if not c["passed"]]
    merged["ok"] = not merged["flags"]
    return merged


def check_evaluation(evaluation: Mapping, threat: Mapping, labels: Sequence[int]) -> list[str] | None:
    """Refuse an evaluation report that cannot be compared with a certification of the examples with
    ``labels`` under ``threat`` (``norm``, ``eps``): another threat model, other examples, damaged
    masks. Returns its per-example robust masks (one ``"0"``/``"1"`` string per attack) when they
    cover these examples, ``None`` when only the totals can be compared."""
    other = evaluation.get("threat")
    other = other if isinstance(other, Mapping) else {}
    try:
        same = other.get("norm") == threat["norm"] and math.isclose(float(other.get("eps") or -1),
                                                                    float(threat["eps"]), rel_tol=1e-6)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"the evaluation report measures {_describe(other)}, this certification "
                         f"{_describe(threat)}: compare reports of the same threat model")
    per_example = evaluation.get("per_example")
    per_example = per_example if isinstance(per_example, Mapping) else {}
    masks = per_example.get("robust")
    if per_example.get("label") == list(labels) and isinstance(masks, Mapping) and masks:
        if any(not isinstance(bits, str) or len(bits) != len(labels) or not set(bits) <= {"0", "1"}
               for bits in masks.values()):
            raise ValueError(f"the evaluation report's per-example robust masks do not cover its {len(labels)} "
                             "examples: a damaged or edited report")
        return list(masks.values())
    robust = evaluation.get("robust")
    total = robust.get("n") if isinstance(robust, Mapping) else None
    if total != len(labels):
        raise ValueError(f"the evaluation report covers {total} examples, this certification {len(labels)}: "
                         "evaluate the same examples")
    return None


def _describe(threat: Mapping) -> str:
    """``"linf eps 8/255"`` for an error message; the evaluation report's threat is read from a file."""
    if "norm" not in threat:  # patch, spatial, corruptions: no norm ball
        return f"a {threat.get('kind', 'unknown')} threat"
    return f"{threat['norm']} eps {threat.get('eps_str') or threat.get('eps')}"
