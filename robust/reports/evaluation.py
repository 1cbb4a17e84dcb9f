"""The evaluation report of ``robust evaluate``: Markdown, PNG plots (matplotlib Agg, no pyplot) and wandb logging.

Reads the dict of :meth:`robust.evaluation.RobustnessReport.to_dict`; every accuracy reads
``"64.33% [58.61, 69.77] (193/300)"`` (:func:`robust.reports.format.fmt_accuracy`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust.reports.files import json_text, write_staged
from robust.reports.format import (
    MISSING, eps_label, fmt_accuracy, fmt_value, metric_key, norm_label, percent, short_settings, threat_label)
from robust.reports.markdown import (
    class_label, class_name, image, per_class_rows, per_class_section, protocol_section, table, weakest)
from robust.reports.plots import CLEAN_COLOR, RIGHT_COLOR, ROBUST_COLOR, WRONG_COLOR, figure, save, yerr

__all__ = ["plot_eps_sweep", "plot_per_class", "plot_examples", "plot_corruptions", "render_markdown", "write_report",
           "log_to_wandb", "plot_weather", "plot_weather_grid"]

_IMAGE_FILES = {"eps_sweep": "eps_sweep.png", "per_class": "per_class.png", "examples": "examples.png",
                "corruptions": "corruptions.png", "weather": "weather.png"}


def _acc(value: Mapping | float) -> float:
    """An accuracy given as a record or as a bare fraction (the corruption mean is one)."""
    return float(value["accuracy"]) if isinstance(value, Mapping) else float(value)


# --------------------------------------------------------------------------------------------- plots


def plot_eps_sweep(sweep: list[dict], path: str | os.PathLike, title: str | None = None,
                   clean: dict | None = None) -> Path:
    """Robust accuracy (%) against ε with its 95% CI band; clean accuracy as a dashed line."""
    points = sorted(sweep, key=lambda p: p["eps"])
    eps = np.array([p["eps"] for p in points], dtype=float)
    records = [p["robust"] for p in points]
    acc = 100 * np.array([r["accuracy"] for r in records])
    err = yerr(records)
    fig = figure(7, 4.5)
    ax = fig.add_subplot()
    ax.fill_between(eps, acc - err[0], acc + err[1], color=ROBUST_COLOR, alpha=0.25, label="95% CI")
    ax.errorbar(eps, acc, yerr=err, color=ROBUST_COLOR, marker="o", capsize=3, label="robust accuracy")
    clean = clean or next((p["clean"] for p in points if p.get("clean")), None)
    if clean:
        ax.axhline(100 * clean["accuracy"], color=CLEAN_COLOR, linestyle="--",
                   label=f"clean accuracy {percent(clean['accuracy'])}")
    ax.set_xticks(eps, [eps_label(p) for p in points],
                  rotation=45 if len(points) > 6 else 0)
    ax.set_xlabel("perturbation budget ε (input scale [0, 1])")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or "Robust accuracy vs perturbation budget ε")
    return save(fig, path)


def plot_per_class(per_class: dict, path: str | os.PathLike, class_names: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """Grouped bars of clean and robust accuracy per class (sorted by index) with 95% CI error bars."""
    rows = per_class_rows(per_class)
    labels = [class_label(i, class_names) for i, _ in rows]
    x = np.arange(len(rows))
    many = len(rows) > 12 or max((len(s) for s in labels), default=0) > 10
    fig = figure(max(7.0, 0.32 * len(rows) + 2.5), 5.5 if many else 4.5)
    ax = fig.add_subplot()
    for offset, key, color in ((-0.2, "clean", CLEAN_COLOR), (0.2, "robust", ROBUST_COLOR)):
        records = [r.get(key) or {"accuracy": 0.0, "ci95": [0.0, 0.0]} for _, r in rows]
        ax.bar(x + offset, [100 * r["accuracy"] for r in records], width=0.4, color=color, label=key,
               yerr=yerr(records), capsize=2 if len(rows) > 20 else 3, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, labels, rotation=60 if many else 0, ha="right" if many else "center",
                  fontsize=7 if len(rows) > 20 else 9)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", ncols=2, fontsize=8)
    ax.set_title(title or "Per-class accuracy (bars: 95% CI)")
    return save(fig, path)


def _image(t) -> np.ndarray:
    """(C,H,W) tensor or array in [0,1] → (H,W) or (H,W,3) numpy array."""
    a = t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=float)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_examples(x, x_adv, y, pred_clean, pred_adv, path: str | os.PathLike,
                  class_names: Sequence[str] | None = None, n: int = 8, title: str | None = None) -> Path:
    """Rows clean / adversarial / amplified perturbation (0.5 = unchanged); one column per example."""
    n = max(1, min(n, len(x)))
    delta = (x_adv[:n] - x[:n]).detach().cpu().float()
    peak = float(delta.abs().max())
    amp = 0.5 / peak if peak > 0 else 1.0
    y, pred_clean, pred_adv = ([int(v) for v in t[:n]] for t in (y, pred_clean, pred_adv))

    def name(i: int) -> str:
        return _short(class_names[i]) if class_names and 0 <= i < len(class_names) else str(i)

    height, width = x.shape[-2:]
    kw = {"interpolation": "nearest" if max(height, width) < 64 else "antialiased", "vmin": 0.0, "vmax": 1.0}
    if x.shape[1] == 1:
        kw["cmap"] = "gray"
    fig = figure(max(4.0, 1.7 * n + 1.2), 6.2)
    axes = fig.subplots(3, n, squeeze=False)
    rows = ((x[:n], "clean"), (x_adv[:n], "adversarial"), (0.5 + amp * delta, f"perturbation ×{amp:.3g}\n(0.5 = none)"))
    for r, (images, label) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(np.clip(_image(images[c]), 0.0, 1.0), **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                fooled = pred_adv[c] != y[c]
                ax.set_title(f"y={name(y[c])} → {name(pred_adv[c])}\nclean pred: {name(pred_clean[c])}",
                             fontsize=8, color=WRONG_COLOR if fooled else RIGHT_COLOR)
            if r == 2 and c == 0:
                ax.set_xlabel(f"max |δ| = {peak:.3g}", fontsize=8)
    fig.suptitle(title or "Adversarial examples (red title: prediction changed to a wrong class)")
    return save(fig, path)


def _severities(corr: Mapping) -> list[str]:
    listed = (corr.get("threat") or {}).get("severities")
    if listed:
        return [str(s) for s in listed]
    keys = {k for v in (corr.get("per_corruption") or {}).values() for k in (v.get("per_severity") or {})}
    return sorted(keys, key=int)


def plot_corruptions(corr: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Heatmap of accuracy (%) per corruption × severity, with each corruption's mean and the clean reference."""
    per = corr.get("per_corruption") or {}
    names = [c for c in (corr.get("threat") or {}).get("corruptions") or [] if c in per] or list(per)
    severities = _severities(corr)
    grid = np.full((len(names), len(severities) + 1), np.nan)
    for i, c in enumerate(names):
        for j, s in enumerate(severities):
            record = (per[c].get("per_severity") or {}).get(s)
            if record:
                grid[i, j] = 100 * record["accuracy"]
        mean = per[c].get("mean")
        grid[i, -1] = np.nan if mean is None else 100 * mean
    fig = figure(7.5, max(3.0, 0.38 * len(names) + 1.8))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    ax.axvline(len(severities) - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(len(severities) + 1), severities + ["mean"])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    bar = fig.colorbar(im, ax=ax, label="accuracy (%)")
    clean = corr.get("clean")
    if clean:
        bar.ax.axhline(100 * clean["accuracy"], color="red", linewidth=2)
        bar.ax.text(1.1, 100 * clean["accuracy"], " clean", color="red", va="center", fontsize=7,
                    transform=bar.ax.get_yaxis_transform())
    head = f"clean {percent(clean['accuracy'])}" if clean else ""
    mca = corr.get("mean_corruption_accuracy")
    if mca:
        head += (", " if head else "") + f"mean corruption {percent(_acc(mca))}"
    ax.set_title(title or f"Accuracy under common corruptions ({head or 'no reference'})", fontsize=10)
    return save(fig, path)


def plot_weather(report: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Accuracy (%) against severity, one line per weather with 95% CI bars; clean accuracy dashed
    (the dict of :func:`robust.evaluation.weather.evaluate_weather`)."""
    per = report.get("per_weather") or {}
    names = [w for w in (report.get("threat") or {}).get("weather") or [] if w in per] or list(per)
    fig = figure(7, 4.5)
    ax = fig.add_subplot()
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    for i, name in enumerate(names):
        points = sorted((per[name].get("per_severity") or {}).items(), key=lambda kv: int(kv[0]))
        if not points:
            continue
        records = [r for _, r in points]
        ax.errorbar([int(s) for s, _ in points], [100 * r["accuracy"] for r in records], yerr=yerr(records),
                    marker="o", capsize=3, color=colors[i % len(colors)],
                    label=f"{name} (mean {percent(per[name].get('mean'))})")
    clean = report.get("clean")
    if clean:
        ax.axhline(100 * clean["accuracy"], color="black", linestyle="--", linewidth=1,
                   label=f"clean {percent(clean['accuracy'])}")
    severities = [int(s) for s in _severities({"threat": report.get("threat"), "per_corruption": per})]
    ax.set_xticks(severities)
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    mean = report.get("mean_weather_accuracy")
    ax.set_title(title or "Accuracy under driving weather and light"
                 + (f" (mean {percent(_acc(mean))})" if mean is not None else ""), fontsize=10)
    return save(fig, path)


def plot_weather_grid(image, path: str | os.PathLike, names: Sequence[str] | None = None,
                      severities: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0, index: int = 0,
                      title: str | None = None) -> Path:
    """A preview of the weather group on one image ((C, H, W) in [0, 1]): one row per weather, the clean
    image then each severity, as :func:`robust.evaluation.weather.weather` makes them for data-set index
    ``index``; each title gives the mean absolute change."""
    import torch

    from robust.evaluation.weather import WEATHER, weather

    names = list(names or WEATHER)
    x = torch.as_tensor(image, dtype=torch.float32)[None]
    height, width = x.shape[-2:]
    kw = {"interpolation": "nearest" if max(height, width) < 64 else "antialiased", "vmin": 0.0, "vmax": 1.0}
    if x.shape[1] == 1:
        kw["cmap"] = "gray"
    fig = figure(1.3 * (len(severities) + 1) + 0.6, 1.35 * len(names) + 0.6)
    axes = fig.subplots(len(names), len(severities) + 1, squeeze=False)
    for r, name in enumerate(names):
        shown = [(x[0], "clean")] + [(w[0], f"{s}: Δ {float((w - x).abs().mean()):.3f}") for s, w in
                                     ((s, weather(x, name, s, seed=seed, start=index)) for s in severities)]
        for c, (img, label) in enumerate(shown):
            ax = axes[r][c]
            ax.imshow(np.clip(_image(img), 0.0, 1.0), **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label if r == 0 or c > 0 else "", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title or f"Weather severities 1-5 (seed {seed}; Δ = mean absolute change)", fontsize=10)
    return save(fig, path)


# ------------------------------------------------------------------------------------------- markdown


def _verdict(audit: Mapping | None) -> str:
    if not audit or not audit.get("ran"):
        return "not audited"
    if not audit.get("unreliable"):
        return "reliable"
    reasons = [f.get("name", "?") for f in audit.get("flags") or []]
    return "**UNRELIABLE**: " + (", ".join(reasons) or "no reason given")


def _md_audit(audit: Mapping | None) -> list[str]:
    lines = ["## Audit", ""]
    if not audit or not audit.get("ran"):
        return lines + ["The gradient-masking audit did not run.", ""]
    flags = audit.get("flags") or []
    if flags:
        lines += ["Flags:", ""]
        lines += [f"- **{f.get('name')}**: {f.get('message', '')} (threshold: {f.get('threshold', '—')}, "
                  f"value: {fmt_value(f.get('value'))})" for f in flags]
        lines.append("")
    checks = audit.get("checks") or []
    if checks:
        lines += table(["check", "result", "threshold", "value", "message"],
                        [[c.get("name"), "pass" if c.get("passed") else "**FLAG**", c.get("threshold", "—"),
                          fmt_value(c.get("value")), c.get("message", "")] for c in checks])
        lines.append("")
    share = audit.get("zero_gradient_share")
    lines += [f"Zero-gradient share: {percent(share) if share is not None else 'not measured'}", ""]
    return lines


def _md_attacks(per_attack: Mapping | None) -> list[str]:
    if not per_attack:
        return []
    lines = ["## Attacks", ""]
    rows = [[name, short_settings(a.get("settings")) or "—", fmt_accuracy(a.get("robust")),
             "—" if a.get("seconds") is None else f"{a['seconds']:.1f} s"] for name, a in per_attack.items()]
    lines += table(["attack", "settings", "robust accuracy", "time"], rows) + [""]
    for name, a in per_attack.items():
        components = a.get("components")
        if components:
            lines += [f"### {name} components (in order)", ""]
            lines += table(["component", "examples broken", "settings"],
                            [[c, v.get("broken", "—"), short_settings(v.get("settings")) or "—"]
                             for c, v in components.items()]) + [""]
    return lines


def _md_confusion(confusion: Sequence[Mapping] | None, class_names: Sequence[str] | None) -> list[str]:
    if confusion is None:
        return []
    lines = ["## Where adversarial examples land", ""]
    top = sorted(confusion, key=lambda c: -c.get("count", 0))[:10]
    if not top:
        return lines + ["No adversarial example changed a prediction.", ""]
    lines += [f"- {class_label(c['true'], class_names)} → {class_label(c['adversarial'], class_names)}: "
              f"{c['count']}" for c in top]
    return lines + [""]


def _md_sweep(sweep: Sequence[Mapping] | None) -> list[str]:
    if not sweep:
        return []
    lines = ["## ε sweep", ""]
    lines += table(["ε", "clean", "robust"],
                    [[eps_label(p), fmt_accuracy(p.get("clean")),
                      fmt_accuracy(p.get("robust"))] for p in sorted(sweep, key=lambda p: p.get("eps") or 0)])
    return lines + [""]


def _md_corruptions(corr: Mapping | None) -> list[str]:
    if not corr:
        return []
    severities = _severities(corr)
    lines = ["## Common corruptions", "",
             f"- clean accuracy: {fmt_accuracy(corr.get('clean'))}",
             f"- mean corruption accuracy: {fmt_accuracy(corr.get('mean_corruption_accuracy'))}", ""]
    rows = []
    for name, c in (corr.get("per_corruption") or {}).items():
        per = c.get("per_severity") or {}
        rows.append([name, percent(c.get("mean"))] + [percent((per.get(s) or {}).get("accuracy")) for s in severities])
    lines += table(["corruption", "mean"] + [f"severity {s}" for s in severities], rows)
    return lines + [""]


def _md_weather(report: Mapping | None) -> list[str]:
    """The weather group (:func:`robust.evaluation.weather.evaluate_weather`), apart from the corruptions."""
    if not report:
        return []
    per_weather = report.get("per_weather") or {}
    severities = _severities({"threat": report.get("threat"), "per_corruption": per_weather})
    lines = ["## Driving weather and light", "",
             f"Rain, snow, fog, sun flare, shadow and night ({(report.get('protocol') or {}).get('library', '?')}, "
             "severity tables of robust.evaluation.weather); not part of the common-corruption mean.", "",
             f"- clean accuracy: {fmt_accuracy(report.get('clean'))}",
             f"- mean weather accuracy: {fmt_accuracy(report.get('mean_weather_accuracy'))}", ""]
    rows = [[name, percent(w.get("mean"))] + [fmt_accuracy((w.get("per_severity") or {}).get(s)) for s in severities]
            for name, w in per_weather.items()]
    lines += table(["weather", "mean"] + [f"severity {s}" for s in severities], rows)
    return lines + [""]


def _md_physical(physical: Mapping | None, class_names: Sequence[str] | None) -> list[str]:
    present = {k: v for k, v in (physical or {}).items() if v}
    if not present:
        return []
    lines = ["## Physical threats", ""]
    rows = [[name, threat_label(p.get("threat")), fmt_accuracy(p.get("clean"), p.get("clean_accuracy")),
             fmt_accuracy(p.get("robust"), p.get("robust_accuracy"))] for name, p in present.items()]
    lines += table(["threat", "threat model", "clean", "robust"], rows) + [""]
    for name, p in present.items():
        rows = per_class_rows(p.get("per_class"))
        weak = weakest(rows)
        if weak:
            lines.append(f"- {name}: weakest classes " + ", ".join(
                f"**{class_label(i, class_names)}** {fmt_accuracy(r['robust'])}" for i, r in rows if i in weak))
    return lines + [""]


def render_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    """A complete human-readable report; ``images`` maps a plot name to a filename relative to the report."""
    pending = dict(images or {})

    def embed(name: str) -> list[str]:
        return image(name, pending.pop(name)) if name in pending else []

    names = report.get("class_names")
    audit = report.get("audit")
    lines = [f"# Robustness report: {threat_label(report.get('threat'))}", ""]
    if report.get("safety"):  # the safety-critical classes lead (issue 15)
        from robust.reports.safety import safety_section

        lines += safety_section(report["safety"], names) + embed("safety")
    lines += table(["", "value"], [
        ["clean accuracy", fmt_accuracy(report.get("clean"), report.get("clean_accuracy"))],
        ["robust accuracy", fmt_accuracy(report.get("robust"), report.get("robust_accuracy"))],
        ["examples", report.get("n_examples", MISSING)],
        ["verdict", _verdict(audit)],
    ]) + [""]
    lines += _md_attacks(report.get("per_attack"))
    lines += _md_audit(audit)
    lines += _md_sweep(report.get("sweep")) + embed("eps_sweep")
    lines += per_class_section(report.get("per_class"), names) + embed("per_class")
    lines += _md_confusion(report.get("confusion"), names)
    if "examples" in pending:
        lines += ["## Examples", ""] + embed("examples")
    lines += _md_corruptions(report.get("corruptions")) + embed("corruptions")
    lines += _md_weather(report.get("weather")) + embed("weather")
    lines += _md_physical(report.get("physical"), names)
    lines += protocol_section(report)
    if pending:
        lines += ["## Figures", ""] + [line for name in list(pending) for line in embed(name)]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ files, wandb


def write_report(report: dict, out_dir: str | os.PathLike, examples: dict | None = None) -> dict[str, Path]:
    """Write ``report.json``, the plots that apply and ``report.md`` into ``out_dir``; return name → path.

    Everything is rendered in a staging folder first (:func:`write_staged`), ``report.json`` last; a report
    whose numbers contradict each other (:func:`robust.evaluation.results.check_report`) is refused first.
    """
    from robust.evaluation.results import check_report

    check_report(report)
    label = threat_label(report.get("threat"))
    text = json_text(report)  # fails before anything is drawn

    def render(stage: Path) -> dict[str, Path]:
        made: dict[str, Path] = {}
        sweep = report.get("sweep") or []
        if len(sweep) >= 2:
            made["eps_sweep"] = plot_eps_sweep(sweep, stage / _IMAGE_FILES["eps_sweep"], clean=report.get("clean"),
                                               title=f"Robust accuracy vs ε ({norm_label(report.get('threat'))})")
        if report.get("per_class"):
            made["per_class"] = plot_per_class(report["per_class"], stage / _IMAGE_FILES["per_class"],
                                               report.get("class_names"), title=f"Per-class accuracy ({label})")
        if examples:
            made["examples"] = plot_examples(
                examples["x"], examples["x_adv"], examples["y"], examples["pred_clean"], examples["pred_adv"],
                stage / _IMAGE_FILES["examples"], class_names=report.get("class_names"),
                title=f"Adversarial examples ({label})")
        if report.get("corruptions"):
            made["corruptions"] = plot_corruptions(report["corruptions"], stage / _IMAGE_FILES["corruptions"])
        if report.get("weather"):
            made["weather"] = plot_weather(report["weather"], stage / _IMAGE_FILES["weather"])
        if (report.get("safety") or {}).get("classes"):
            from robust.reports.safety import plot_safety

            made["safety"] = plot_safety(report["safety"], stage / "safety.png", report.get("class_names"))
        (stage / "report.md").write_text(render_markdown(report, {k: p.name for k, p in made.items()}),
                                         encoding="utf-8")
        (stage / "report.json").write_text(text, encoding="utf-8")
        return {**made, "markdown": stage / "report.md", "json": stage / "report.json"}

    return write_staged(out_dir, render)


def log_to_wandb(report: dict, run, images: dict[str, Path] | None = None) -> None:
    """Log headline metrics to ``run.summary``, per-class and audit tables, and the PNG plots."""
    import wandb

    summary: dict[str, Any] = {}
    for key in ("clean", "robust"):
        record = report.get(key)
        value = record["accuracy"] if record else report.get(f"{key}_accuracy")
        if value is not None:
            summary[f"eval/{key}_accuracy"] = value
    if report.get("robust"):
        summary["eval/robust_ci95_low"], summary["eval/robust_ci95_high"] = report["robust"]["ci95"]
    if report.get("n_examples") is not None:
        summary["eval/n_examples"] = report["n_examples"]
    for name, attack in (report.get("per_attack") or {}).items():
        if attack.get("robust"):
            summary[f"eval/{metric_key(name)}_accuracy"] = attack["robust"]["accuracy"]
    audit = report.get("audit")
    if audit and audit.get("ran"):
        summary["eval/unreliable"] = bool(audit.get("unreliable"))
        if audit.get("zero_gradient_share") is not None:
            summary["eval/zero_gradient_share"] = audit["zero_gradient_share"]
    mca = (report.get("corruptions") or {}).get("mean_corruption_accuracy")
    if mca:
        summary["eval/mean_corruption_accuracy"] = _acc(mca)
    for name, w in ((report.get("weather") or {}).get("per_weather") or {}).items():
        summary[f"eval/weather_{metric_key(name)}_accuracy"] = w["mean"]
    if (report.get("weather") or {}).get("mean_weather_accuracy") is not None:
        summary["eval/mean_weather_accuracy"] = _acc(report["weather"]["mean_weather_accuracy"])
    for name, p in (report.get("physical") or {}).items():
        if p and p.get("robust"):
            summary[f"eval/physical_{metric_key(name)}_accuracy"] = p["robust"]["accuracy"]
    run.summary.update(summary)

    logged: dict[str, Any] = {}
    rows = per_class_rows(report.get("per_class"))
    if rows:
        names = report.get("class_names")
        logged["eval/per_class"] = wandb.Table(
            columns=["class", "name", "n", "clean", "robust"],
            data=[[i, class_name(i, names), int(r.get("n") or 0),
                   float((r.get("clean") or {}).get("accuracy", float("nan"))),
                   float((r.get("robust") or {}).get("accuracy", float("nan")))] for i, r in rows])
    if audit and audit.get("checks"):
        logged["eval/audit"] = wandb.Table(
            columns=["check", "passed", "threshold", "value", "message"],
            data=[[str(c.get("name")), bool(c.get("passed")), str(c.get("threshold", "")), fmt_value(c.get("value")),
                   str(c.get("message", ""))] for c in audit["checks"]])
    for name, path in (images or {}).items():
        if Path(path).suffix.lower() == ".png":
            logged[f"eval/plots/{metric_key(name)}"] = wandb.Image(str(path), caption=name)
    if logged:
        run.log(logged)
