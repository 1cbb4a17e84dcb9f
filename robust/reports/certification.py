"""The certification report of ``robust certify``: Markdown, plots, the per-example TSV and wandb logging.

Reads the dicts of :func:`robust.certify.report.smoothing_report` (an L2 certified-accuracy curve),
:func:`robust.certify.report.verification_report` (verified / inconclusive / falsified per eps) and
:func:`robust.certify.patchcleanser.patchcleanser_report` (one patch anywhere, per class).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robust.reports.files import write_json, write_staged, write_tsv
from robust.reports.format import eps_label, fmt_accuracy, fmt_value, metric_key, percent, short_settings, threat_label
from robust.reports.markdown import image, protocol_section, table
from robust.reports.plots import CERTIFIED_COLOR, CLEAN_COLOR, ROBUST_COLOR, WRONG_COLOR, figure, save, yerr

__all__ = ["METHOD_NAMES", "STATUS_COLORS", "plot_certified_radius", "plot_verification", "plot_patchcleanser",
           "render_markdown", "write_certification", "headline", "log_certification"]

STATUS_COLORS = {"verified": CERTIFIED_COLOR, "inconclusive": "#c8c8c8", "falsified": ROBUST_COLOR,
                 "misclassified": WRONG_COLOR}
METHOD_NAMES = {"smoothing": "randomized smoothing", "ibp": "interval bound propagation",
                "crown": "CROWN ∩ IBP", "patchcleanser": "PatchCleanser double masking"}


# -------------------------------------------------------------------------------------------- plots


def plot_certified_radius(report: Mapping, path: str | os.PathLike) -> Path:
    """Certified accuracy (%) against L2 radius: the full step curve from the per-example radii,
    the requested radii with 95% CIs, the largest certifiable radius, and the attack's point."""
    rows = report["per_example"]
    total = max(len(rows), 1)
    top = float(report["max_certifiable_radius"])
    marks = report["certified_accuracy"]
    empirical = report.get("empirical")
    asked = [m["radius"] for m in marks] + ([empirical["radius"]] if empirical else [])
    # radii far beyond the largest certifiable one are 0% by construction: the axis stops at 4x that radius
    grid = np.linspace(0.0, min(max([top, *asked]), 4 * top if top > 0 else 1.0) * 1.05, 400)
    radii = np.array([r["radius"] for r in rows if r["correct"]], dtype=float)
    curve = 100 * np.array([(radii >= g).sum() / total for g in grid])
    fig = figure(7, 4.5)
    ax = fig.add_subplot()
    ax.plot(grid, curve, color=CERTIFIED_COLOR, label=f"certified accuracy (σ = {report['sigma']:g})")
    records = [m["certified"] for m in marks]
    ax.errorbar([m["radius"] for m in marks], [100 * r["accuracy"] for r in records], yerr=yerr(records),
                fmt="o", color=CERTIFIED_COLOR, capsize=3, label="requested radii, 95% CI")
    ax.axvline(top, color="grey", linestyle=":", label=f"largest certifiable radius {top:.3g}")
    if empirical:
        ax.errorbar([empirical["radius"]], [100 * empirical["robust"]["accuracy"]], yerr=yerr([empirical["robust"]]),
                    fmt="s", color=ROBUST_COLOR, capsize=3,
                    label=f"empirical (attack on g, {empirical['n_examples']} examples)")
    ax.axhline(100 * report["base_clean"]["accuracy"], color=CLEAN_COLOR, linestyle="--",
               label=f"base model clean accuracy {percent(report['base_clean']['accuracy'])}")
    ax.set_xlabel("L2 radius (input scale [0, 1])")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(0, grid[-1] if grid[-1] > 0 else 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"Randomized smoothing: certified accuracy vs radius ({report['n_examples']} examples)")
    return save(fig, path)


def _status_shares(entry: Mapping) -> dict[str, float]:
    counts = entry["status_counts"]
    n = max(sum(counts.values()), 1)
    misclassified = n - int(entry["clean"]["correct"])
    return {"verified": counts["verified"] / n, "inconclusive": counts["inconclusive"] / n,
            "falsified": (counts["falsified"] - misclassified) / n, "misclassified": misclassified / n}


def plot_verification(report: Mapping, path: str | os.PathLike) -> Path:
    """One stacked bar per eps: verified, inconclusive, falsified by the attack, misclassified."""
    sweep = report.get("sweep") or [report]
    labels = [eps_label(s["threat"]) for s in sweep]
    fig = figure(max(5.0, 1.1 * len(sweep) + 3), 4.5)
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
    return save(fig, path)


def plot_patchcleanser(report: Mapping, path: str | os.PathLike) -> Path:
    """Per class: double masking's clean accuracy and its certified accuracy (%), with 95% CIs."""
    rows = report["per_class"]
    labels = [str(r["class"]) for r in rows]
    pos = np.arange(len(rows))
    fig = figure(max(7.0, 0.28 * len(rows) + 3), 4.5)
    ax = fig.add_subplot()
    for shift, key, color, name in ((-0.2, "clean", CLEAN_COLOR, "clean (double masking)"),
                                    (0.2, "certified", CERTIFIED_COLOR, "certified")):
        records = [r[key] for r in rows]
        ax.bar(pos + shift, [100 * r["accuracy"] for r in records], width=0.4, color=color, label=name,
               yerr=yerr(records), capsize=2, error_kw={"elinewidth": 0.8})
    ax.axhline(100 * report["certified"]["accuracy"], color=CERTIFIED_COLOR, linestyle=":",
               label=f"certified, all classes {percent(report['certified']['accuracy'])}")
    ax.set_xticks(pos, labels, fontsize=7 if len(rows) > 20 else 9)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8)
    side = report["threat"]["side_px"]
    ax.set_title(f"PatchCleanser, a {side[0]}x{side[1]} px patch anywhere: per class ({report['n_examples']} "
                 "examples)", fontsize=10)
    return save(fig, path)


# ----------------------------------------------------------------------------------------- markdown


def _md_consistency(check: Mapping | None) -> list[str]:
    if not check:
        return []
    verdict = "consistent" if check["ok"] else "**INCONSISTENT** (a bug or an unsound bound: do not trust the numbers)"
    lines = ["## Consistency: certified <= robust <= clean", "", f"{check.get('what', '')}: {verdict}", ""]
    return lines + table(["check", "passed", "numbers"],
                          [[c["name"], "yes" if c["passed"] else "**no**", c["message"]] for c in check["checks"]]) + [""]


def _md_smoothing(report: Mapping) -> list[str]:
    s = report["settings"]
    lines = [
        f"# Certification report: randomized smoothing, σ = {report['sigma']:g} (L2)", "",
        f"- smoothed classifier clean accuracy: {fmt_accuracy(report['clean'])} (abstentions count as wrong)",
        f"- base model clean accuracy: {fmt_accuracy(report['base_clean'])}",
        f"- average certified radius (ACR): {report['acr']:.4f}",
        f"- abstention rate: {percent(report['abstention_rate'])}",
        f"- time per example: {report['seconds_per_example']:.3f} s",
        f"- n0 = {s['n0']}, n = {s['n']}, alpha = {s['alpha']}: no radius above "
        f"{report['max_certifiable_radius']:.4f} can be certified", "",
        "## Certified accuracy", "",
    ]
    lines += table(["L2 radius", "certified accuracy [95% CI] (correct/n)"],
                    [[f"{m['radius']:g}", fmt_accuracy(m["certified"])] for m in report["certified_accuracy"]])
    lines.append("")
    for note in report.get("warnings") or []:
        lines += [f"> warning: {note}", ""]
    emp = report.get("empirical")
    if emp:
        lines += ["## Attack on the smoothed classifier", "",
                  f"SmoothAdv PGD at L2 radius {emp['radius']:g} on the first {emp['n_examples']} examples "
                  f"({', '.join(f'{k}={fmt_value(v)}' for k, v in emp['settings'].items())}), then PREDICT at the "
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
        settings = ", ".join(f"{k}={fmt_value(v)}" for k, v in attack["settings"].items() if not isinstance(v, Mapping))
        lines += [f"Falsification attack: {attack['name']} ({settings}), {attack['seconds']:.1f} s.", ""]
    header = ["ε", "clean", "certified", "empirical robust", "verified", "inconclusive", "falsified"]
    if report["method"] == "crown":
        header += ["IBP alone", "CROWN alone"]
    rows = []
    for s in report.get("sweep") or [report]:
        c = s["status_counts"]
        row = [eps_label(s["threat"]), percent(s["clean"]["accuracy"]),
               percent(s["certified"]["accuracy"]), percent(s["robust"]["accuracy"]), c["verified"], c["inconclusive"],
               c["falsified"]]
        if report["method"] == "crown":
            row += [s["verified_by"]["ibp"], s["verified_by"]["crown"]]
        rows.append(row)
    return lines + ["## Verification", ""] + table(header, rows) + [""]


def _class_rows(report: Mapping, classes: list[Mapping], weak: set[int]) -> list[str]:
    def bold(text: str, on: bool) -> str:
        return f"**{text}**" if on else text

    return table(["class", "name", "n", "clean (double masking)", "certified"],
                 [[bold(str(r["class"]), r["class"] in weak), r.get("name") or "—", r["n"], fmt_accuracy(r["clean"]),
                   bold(fmt_accuracy(r["certified"]), r["class"] in weak)] for r in classes])


def _md_patchcleanser(report: Mapping) -> list[str]:
    t, m, s = report["threat"], report["mask_set"], report["settings"]
    side = f"{t['side_px'][0]}x{t['side_px'][1]} px"
    lines = [
        f"# Certification report: PatchCleanser, a {side} patch anywhere ({percent(t['area_fraction'])} of the image)",
        "",
        f"- certified accuracy: {fmt_accuracy(report['certified'])} (every two-mask prediction is the label: no "
        f"patch of at most {side} anywhere in the image can change double masking's output)",
        f"- clean accuracy of double masking: {fmt_accuracy(report['clean'])}",
        f"- clean accuracy of the undefended model: {fmt_accuracy(report['base_clean'])}",
        f"- mask set: {m['masks']} masks ({m['positions'][0]}x{m['positions'][1]} positions, k = "
        f"{m['masks_per_axis']} per axis) of {m['mask_size_px'][0]}x{m['mask_size_px'][1]} px "
        f"({percent(m['mask_area_fraction'])} of the image) with stride {m['stride_px'][0]}x{m['stride_px'][1]} px "
        f"on {m['image_size'][0]}x{m['image_size'][1]} images; masked pixels = {s['fill']:g}; {m['pairs']} "
        "mask pairs per certificate",
        "- double masking's cases: " + ", ".join(f"{k} {v}" for k, v in report["cases"].items()),
        f"- {report['forward_passes']} forward passes, {report['seconds_per_example']:.3f} s per example", "",
        f"The patch of {side} is what the mask set covers (stride s = ceil((n - p + 1) / k), mask m = p + s - 1, "
        f"{s.get('reference', 'Xiang et al. 2022')}); a fraction of the image area becomes a square of side "
        "round(sqrt(fraction x H x W)) px.", "",
    ]
    classes = list(report.get("per_class") or [])
    by_class = {r["class"]: r for r in classes}
    safety = [by_class[c] for c in report.get("safety") or [] if c in by_class]
    if safety:
        lines += ["## Safety-critical classes", ""] + _class_rows(report, safety, set()) + [""]
    if classes:
        ranked = sorted(classes, key=lambda r: (r["certified"]["accuracy"], r["class"]))
        weak = {r["class"] for r in ranked[:min(3, len(ranked) - 1)]}
        worst = ranked[0]
        name = f" ({worst['name']})" if worst.get("name") else ""
        lines += ["## Per class", "",
                  f"Worst class: **{worst['class']}{name}**, certified {fmt_accuracy(worst['certified'])}; the "
                  "three lowest in bold.", ""]
        lines += _class_rows(report, classes, weak) + [""]
    emp = report.get("empirical")
    if emp:
        lines += ["## Patch attack on double masking", "",
                  f"An adaptive patch of {side} optimised at each of {emp['settings']['positions']} positions "
                  f"({short_settings(emp['settings'])}) on the first {emp['n_examples']} examples, then double "
                  f"masking predicts the patched image ({emp['seconds']:.1f} s):", "",
                  f"- certified: {fmt_accuracy(emp['certified'])}",
                  f"- empirical robust (no position broke it): {fmt_accuracy(emp['robust'])}",
                  f"- clean (double masking): {fmt_accuracy(emp['clean'])}", ""]
    return lines


def render_markdown(report: Mapping, images: Mapping[str, str] | None = None, table_file: str | None = None) -> str:
    """The complete ``report.md``; ``images`` maps a plot name to its file, ``table_file`` names the TSV."""
    if report["method"] == "patchcleanser":
        lines = _md_patchcleanser(report)
    else:
        lines = _md_smoothing(report) if report["method"] == "smoothing" else _md_verification(report)
    for name, file in (images or {}).items():
        lines += image(name, file)
    lines += _md_consistency(report.get("consistency"))
    if table_file:
        lines += [f"Per-example results: `{table_file}`.", ""]
    lines += protocol_section(report)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------- files, wandb


def write_certification(report: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, the per-example TSV and the plot into ``out_dir`` atomically."""
    smoothing = report["method"] == "smoothing"

    def render(stage: Path) -> dict[str, Path]:
        made = {}
        if report["method"] == "patchcleanser":
            made["per_class"] = plot_patchcleanser(report, stage / "patchcleanser_per_class.png")
            made["table"] = write_tsv(report["per_example"],
                                      ("idx", "label", "predict", "base_predict", "certified", "case"),
                                      stage / "patchcleanser.tsv")
        elif smoothing:
            made["certified_accuracy"] = plot_certified_radius(report, stage / "certified_accuracy.png")
            made["table"] = write_tsv(report["per_example"], ("idx", "label", "predict", "radius", "correct", "time"),
                                      stage / "certify.tsv")
        else:
            made["verification"] = plot_verification(report, stage / "verification.png")
            made["table"] = write_tsv(report["per_example"], ("idx", "label", "predict", "status"),
                                      stage / "verify.tsv")
        images = {k: p.name for k, p in made.items() if p.suffix == ".png"}
        (stage / "report.md").write_text(render_markdown(report, images, made["table"].name), encoding="utf-8")
        return {**made, "markdown": stage / "report.md", "json": write_json(report, stage / "report.json")}

    return write_staged(out_dir, render)


def headline(report: Mapping) -> dict[str, float]:
    """The numbers a dashboard shows, named by radius or ε as written: clean, certified (and empirical)
    accuracy, ACR and abstention rate for smoothing, whether the consistency checks passed."""
    out = {"clean_accuracy": report["clean"]["accuracy"]}
    if report["method"] == "patchcleanser":
        side = "x".join(str(v) for v in report["threat"]["side_px"])
        out[f"certified_accuracy_patch{side}"] = report["certified"]["accuracy"]
        out["base_clean_accuracy"] = report["base_clean"]["accuracy"]
        if report.get("empirical"):
            out["empirical_robust_accuracy"] = report["empirical"]["robust"]["accuracy"]
    elif report["method"] == "smoothing":
        for m in report["certified_accuracy"]:
            out[f"certified_accuracy_r{m['radius']:g}"] = m["certified"]["accuracy"]
        out["acr"] = report["acr"]
        out["abstention_rate"] = report["abstention_rate"]
        if report.get("empirical"):
            out["empirical_robust_accuracy"] = report["empirical"]["robust"]["accuracy"]
    else:
        for s in report.get("sweep") or [report]:
            eps = eps_label(s["threat"])
            out[f"certified_accuracy_eps{eps}"] = s["certified"]["accuracy"]
            out[f"empirical_robust_accuracy_eps{eps}"] = s["robust"]["accuracy"]
    out["consistent"] = float(bool((report.get("consistency") or {}).get("ok", True)))
    return out


def log_certification(report: Mapping, run: Any, images: Mapping[str, Path] | None = None) -> None:
    """Headline numbers to ``run.summary`` (prefix ``certify/``), the certified-accuracy table and the plots."""
    import wandb

    run.summary.update({f"certify/{metric_key(k)}": v for k, v in headline(report).items()})
    logged: dict[str, Any] = {}
    if report["method"] == "patchcleanser":
        logged["certify/per_class"] = wandb.Table(
            columns=["class", "name", "n", "clean", "certified", "certified_ci95_low", "certified_ci95_high"],
            data=[[r["class"], r.get("name") or "", r["n"], r["clean"]["accuracy"], r["certified"]["accuracy"],
                   *r["certified"]["ci95"]] for r in report["per_class"]])
    elif report["method"] == "smoothing":
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
            logged[f"certify/plots/{metric_key(name)}"] = wandb.Image(str(path), caption=name)
    run.log(logged)
