"""Certification reports: randomized smoothing (L2) and bound-based verification (L-inf, IBP or
CROWN), as dicts written to ``report.json``, ``report.md``, a per-example TSV and plots, and
logged to wandb, in the same way as :mod:`robust.evaluation.render` does for attack reports.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust.certify.smoothing import ABSTAIN, Smooth, attack_smoothed, certify_dataset
from robust.certify.verify import consistency, smoothing_tolerance, verify
from robust.evaluation.core import collect, describe_run
from robust.evaluation.render import (
    CLEAN_COLOR, ROBUST_COLOR, _figure, _md_protocol, _metric_key, _pct, _save, _table, _value, _yerr, fmt_accuracy,
    threat_label, write_json, write_staged,
)
from robust.evaluation.stats import accuracy_record
from robust.runtime import batched_logits, eval_mode, num_classes

CERTIFIED_COLOR = "#55a868"
STATUS_COLORS = {"verified": CERTIFIED_COLOR, "inconclusive": "#c8c8c8", "falsified": ROBUST_COLOR,
                 "misclassified": "#c44e52"}
METHOD_NAMES = {"smoothing": "randomized smoothing", "ibp": "interval bound propagation",
                "crown": "CROWN ∩ IBP"}


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
        "threat": {"kind": "l2", "norm": "l2"},
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
    threat, other = report.get("threat") or {}, evaluation.get("threat") or {}
    if other.get("norm") != threat.get("norm") or not math.isclose(float(other.get("eps", -1)),
                                                                    float(threat.get("eps", -2)), rel_tol=1e-6):
        raise ValueError(f"the evaluation report measures {threat_label(other)}, this certification "
                         f"{threat_label(threat)}: compare reports of the same threat model")
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


# -------------------------------------------------------------------------------------------- plots


def plot_certified_radius(report: Mapping, path: str | os.PathLike) -> Path:
    """Certified accuracy (%) against L2 radius: the full step curve from the per-example radii,
    the requested radii with 95% CIs, the largest certifiable radius, and the attack's point."""
    rows = report["per_example"]
    total = max(len(rows), 1)
    top = float(report["max_certifiable_radius"])
    marks = report["certified_accuracy"]
    grid = np.linspace(0.0, max(top, max((m["radius"] for m in marks), default=0.0)) * 1.05, 400)
    radii = np.array([r["radius"] for r in rows if r["correct"]], dtype=float)
    curve = 100 * np.array([(radii >= g).sum() / total for g in grid])
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    ax.plot(grid, curve, color=CERTIFIED_COLOR, label=f"certified accuracy (σ = {report['sigma']:g})")
    records = [m["certified"] for m in marks]
    ax.errorbar([m["radius"] for m in marks], [100 * r["accuracy"] for r in records], yerr=_yerr(records),
                fmt="o", color=CERTIFIED_COLOR, capsize=3, label="requested radii, 95% CI")
    ax.axvline(top, color="grey", linestyle=":", label=f"largest certifiable radius {top:.3g}")
    empirical = report.get("empirical")
    if empirical:
        ax.errorbar([empirical["radius"]], [100 * empirical["robust"]["accuracy"]], yerr=_yerr([empirical["robust"]]),
                    fmt="s", color=ROBUST_COLOR, capsize=3,
                    label=f"empirical (attack on g, {empirical['n_examples']} examples)")
    ax.axhline(100 * report["base_clean"]["accuracy"], color=CLEAN_COLOR, linestyle="--",
               label=f"base model clean accuracy {_pct(report['base_clean']['accuracy'])}")
    ax.set_xlabel("L2 radius (input scale [0, 1])")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(0, grid[-1] if grid[-1] > 0 else 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"Randomized smoothing: certified accuracy vs radius ({report['n_examples']} examples)")
    return _save(fig, path)


def _status_shares(entry: Mapping) -> dict[str, float]:
    counts = entry["status_counts"]
    n = max(sum(counts.values()), 1)
    misclassified = n - int(entry["clean"]["correct"])
    return {"verified": counts["verified"] / n, "inconclusive": counts["inconclusive"] / n,
            "falsified": (counts["falsified"] - misclassified) / n, "misclassified": misclassified / n}


def plot_verification(report: Mapping, path: str | os.PathLike) -> Path:
    """One stacked bar per eps: verified, inconclusive, falsified by the attack, misclassified."""
    sweep = report.get("sweep") or [report]
    labels = [s["threat"].get("eps_str") or _value(s["threat"]["eps"]) for s in sweep]
    fig = _figure(max(5.0, 1.1 * len(sweep) + 3), 4.5)
    ax = fig.add_subplot()
    bottom = np.zeros(len(sweep))
    for status, color in STATUS_COLORS.items():
        share = 100 * np.array([_status_shares(s)[status] for s in sweep])
        ax.bar(labels, share, bottom=bottom, color=color, label=status, width=0.6)
        for i, (b, v) in enumerate(zip(bottom, share)):
            if v >= 6:
                ax.text(i, b + v / 2, f"{v:.1f}%", ha="center", va="center", fontsize=8)
        bottom += share
    ax.set_xlabel("L∞ ε (input scale [0, 1])")
    ax.set_ylabel("share of examples (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(f"Verification with {METHOD_NAMES.get(report['method'], report['method'])}")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------- markdown


def _md_consistency(check: Mapping | None) -> list[str]:
    if not check:
        return []
    verdict = "consistent" if check["ok"] else "**INCONSISTENT** (a bug or an unsound bound: do not trust the numbers)"
    lines = ["## Consistency: certified <= robust <= clean", "", f"{check.get('what', '')}: {verdict}", ""]
    return lines + _table(["check", "passed", "numbers"],
                          [[c["name"], "yes" if c["passed"] else "**no**", c["message"]] for c in check["checks"]]) + [""]


def _md_smoothing(report: Mapping) -> list[str]:
    s = report["settings"]
    lines = [
        f"# Certification report: randomized smoothing, σ = {report['sigma']:g} (L2)", "",
        f"- smoothed classifier clean accuracy: {fmt_accuracy(report['clean'])} (abstentions count as wrong)",
        f"- base model clean accuracy: {fmt_accuracy(report['base_clean'])}",
        f"- average certified radius (ACR): {report['acr']:.4f}",
        f"- abstention rate: {_pct(report['abstention_rate'])}",
        f"- time per example: {report['seconds_per_example']:.3f} s",
        f"- n0 = {s['n0']}, n = {s['n']}, alpha = {s['alpha']}: no radius above "
        f"{report['max_certifiable_radius']:.4f} can be certified", "",
        "## Certified accuracy", "",
    ]
    lines += _table(["L2 radius", "certified accuracy [95% CI] (correct/n)"],
                    [[f"{m['radius']:g}", fmt_accuracy(m["certified"])] for m in report["certified_accuracy"]])
    lines.append("")
    for note in report.get("warnings") or []:
        lines += [f"> warning: {note}", ""]
    emp = report.get("empirical")
    if emp:
        lines += ["## Attack on the smoothed classifier", "",
                  f"SmoothAdv PGD at L2 radius {emp['radius']:g} on the first {emp['n_examples']} examples "
                  f"({', '.join(f'{k}={_value(v)}' for k, v in emp['settings'].items())}), then PREDICT at the "
                  "perturbed point:", "",
                  f"- certified at this radius: {fmt_accuracy(emp['certified'])}",
                  f"- empirical robust (attack failed): {fmt_accuracy(emp['robust'])}",
                  f"- clean (smoothed): {fmt_accuracy(emp['clean'])}", ""]
    return lines


def _md_verification(report: Mapping) -> list[str]:
    name = METHOD_NAMES.get(report["method"], report["method"])
    attack = report.get("attack")
    lines = [f"# Certification report: {name}, {threat_label(report['threat'])}", "",
             f"- clean accuracy: {fmt_accuracy(report['clean'])}",
             f"- certified (verified) accuracy: {fmt_accuracy(report['certified'])}",
             f"- empirical robust accuracy (not falsified): {fmt_accuracy(report['robust'])}"
             + (f" under {attack['name']}" if attack else " (no attack run)"),
             "- statuses: " + ", ".join(f"{k} {v}" for k, v in report["status_counts"].items()), ""]
    if attack:
        settings = ", ".join(f"{k}={_value(v)}" for k, v in attack["settings"].items() if not isinstance(v, Mapping))
        lines += [f"Falsification attack: {attack['name']} ({settings}), {attack['seconds']:.1f} s.", ""]
    header = ["ε", "clean", "certified", "empirical robust", "verified", "inconclusive", "falsified"]
    if report["method"] == "crown":
        header += ["IBP alone", "CROWN alone"]
    rows = []
    for s in report.get("sweep") or [report]:
        c = s["status_counts"]
        row = [s["threat"].get("eps_str") or _value(s["threat"]["eps"]), _pct(s["clean"]["accuracy"]),
               _pct(s["certified"]["accuracy"]), _pct(s["robust"]["accuracy"]), c["verified"], c["inconclusive"],
               c["falsified"]]
        if report["method"] == "crown":
            row += [s["verified_by"]["ibp"], s["verified_by"]["crown"]]
        rows.append(row)
    return lines + ["## Verification", ""] + _table(header, rows) + [""]


def render_markdown(report: Mapping, images: Mapping[str, str] | None = None, table: str | None = None) -> str:
    lines = _md_smoothing(report) if report["method"] == "smoothing" else _md_verification(report)
    for name, file in (images or {}).items():
        lines += [f"![{name.replace('_', ' ')}]({file})", ""]
    lines += _md_consistency(report.get("consistency"))
    if table:
        lines += [f"Per-example results: `{table}`.", ""]
    lines += _md_protocol(report)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------- files, wandb


def _tsv(rows: Sequence[Mapping], columns: Sequence[str], path: Path) -> Path:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(cell(r[c]) for c in columns) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def write_certification(report: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, the per-example TSV and the plot into ``out_dir`` atomically."""
    smoothing = report["method"] == "smoothing"

    def render(stage: Path) -> dict[str, Path]:
        made = {}
        if smoothing:
            made["certified_accuracy"] = plot_certified_radius(report, stage / "certified_accuracy.png")
            made["table"] = _tsv(report["per_example"], ("idx", "label", "predict", "radius", "correct", "time"),
                                 stage / "certify.tsv")
        else:
            made["verification"] = plot_verification(report, stage / "verification.png")
            made["table"] = _tsv(report["per_example"], ("idx", "label", "predict", "status"), stage / "verify.tsv")
        images = {k: p.name for k, p in made.items() if p.suffix == ".png"}
        (stage / "report.md").write_text(render_markdown(report, images, made["table"].name), encoding="utf-8")
        return {**made, "markdown": stage / "report.md", "json": write_json(report, stage / "report.json")}

    return write_staged(out_dir, render)


def headline(report: Mapping) -> dict[str, float]:
    """The numbers a dashboard shows: clean, certified (and empirical) accuracy, ACR for smoothing."""
    out = {"clean_accuracy": report["clean"]["accuracy"]}
    if report["method"] == "smoothing":
        for m in report["certified_accuracy"]:
            out[f"certified_accuracy_r{m['radius']:g}"] = m["certified"]["accuracy"]
        out["acr"] = report["acr"]
        out["abstention_rate"] = report["abstention_rate"]
        if report.get("empirical"):
            out["empirical_robust_accuracy"] = report["empirical"]["robust"]["accuracy"]
    else:
        for s in report.get("sweep") or [report]:
            eps = s["threat"].get("eps_str") or _value(s["threat"]["eps"])
            out[f"certified_accuracy_eps{eps}"] = s["certified"]["accuracy"]
            out[f"empirical_robust_accuracy_eps{eps}"] = s["robust"]["accuracy"]
    out["consistent"] = float(bool((report.get("consistency") or {}).get("ok", True)))
    return out


def log_certification(report: Mapping, run: Any, images: Mapping[str, Path] | None = None) -> None:
    """Headline numbers to ``run.summary`` (prefix ``certify/``), the certified-accuracy table and the plots."""
    import wandb

    run.summary.update({f"certify/{_metric_key(k)}": v for k, v in headline(report).items()})
    logged: dict[str, Any] = {}
    if report["method"] == "smoothing":
        logged["certify/certified_accuracy"] = wandb.Table(
            columns=["radius", "certified_accuracy", "ci95_low", "ci95_high"],
            data=[[m["radius"], m["certified"]["accuracy"], *m["certified"]["ci95"]]
                  for m in report["certified_accuracy"]])
    else:
        logged["certify/verification"] = wandb.Table(
            columns=["eps", "clean", "certified", "empirical_robust", "verified", "inconclusive", "falsified"],
            data=[[s["threat"]["eps"], s["clean"]["accuracy"], s["certified"]["accuracy"], s["robust"]["accuracy"],
                   *(s["status_counts"][k] for k in ("verified", "inconclusive", "falsified"))]
                  for s in report.get("sweep") or [report]])
    for name, path in (images or {}).items():
        if Path(path).suffix.lower() == ".png":
            logged[f"certify/plots/{_metric_key(name)}"] = wandb.Image(str(path), caption=name)
    run.log(logged)
