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
from robust.base.stats import accuracy_record
from robust.certify.smoothing import ABSTAIN, Smooth, attack_smoothed, certify_dataset
from robust.certify.verify import consistency, smoothing_tolerance, verify

__all__ = ["smoothing_report", "verification_report", "compare_with_evaluation"]

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
    x, y = collect(data, n_examples)
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
    if attack_radius is not None:
        report["empirical"], report["consistency"] = _smoothing_attack(
            smooth, x, y, rows, float(attack_radius), attack_examples, alpha, batch_size, seed, attack_options or {})
    else:
        report["consistency"] = consistency(report["clean"], None, report["certified_accuracy"][0]["certified"],
                                            what="smoothed classifier")
    report["seconds"] = time.perf_counter() - start
    report["protocol"] = {"n_examples": total, "seed": seed, "batch_size": batch_size, "num_classes": classes,
                          **describe_run(model, checkpoint)}
    return report


def _smoothing_attack(smooth: Smooth, x: torch.Tensor, y: torch.Tensor, rows: list[dict], radius: float,
                      count: int, alpha: float, batch_size: int, seed: int,
                      options: Mapping[str, Any]) -> tuple[dict, dict]:
    if count < 1:
        raise ValueError(f"attack_examples must be >= 1, got {count}")
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
                        what=f"smoothed classifier on the first {m} examples at L2 radius {radius:g}")
    return empirical, check


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
    threat, other = report["threat"], evaluation.get("threat") or {}
    if other.get("norm") != threat["norm"] or not math.isclose(float(other.get("eps") or -1), float(threat["eps"]),
                                                               rel_tol=1e-6):
        raise ValueError(f"the evaluation report measures {_describe(other)}, this certification "
                         f"{_describe(threat)}: compare reports of the same threat model")
    robust = evaluation.get("robust")
    per_example = evaluation.get("per_example") or {}
    rows = report["per_example"]
    violations: list[int] = []
    if per_example.get("label") == [r["label"] for r in rows] and per_example.get("robust"):
        broken = [any(bits[i] == "0" for bits in per_example["robust"].values()) for i in range(len(rows))]
        violations = [r["idx"] for r, b in zip(rows, broken) if r["status"] == "verified" and b]
    elif robust is None or robust.get("n") != report["n_examples"]:
        raise ValueError(f"the evaluation report covers {None if robust is None else robust.get('n')} examples, "
                         f"this certification {report['n_examples']}: evaluate the same examples")
    check = consistency(report["clean"], robust, report["certified"], violations=violations,
                        what="against the evaluation report ("
                        + ", ".join((evaluation.get("per_attack") or {}).keys()) + ")")
    merged = report["consistency"]
    merged["checks"] = merged["checks"] + [{**c, "name": f"{c['name']} (evaluation report)"} for c in check["checks"]]
    merged["flags"] = [c for c in merged["checks"] if not c["passed"]]
    merged["ok"] = not merged["flags"]
    return merged


def _describe(threat: Mapping) -> str:
    """``"linf eps 8/255"`` for an error message; the evaluation report's threat is read from a file."""
    if "norm" not in threat:  # patch, spatial, corruptions: no norm ball
        return f"a {threat.get('kind', 'unknown')} threat"
    return f"{threat['norm']} eps {threat.get('eps_str') or threat.get('eps')}"
