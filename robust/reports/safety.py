"""The safety section that evaluation reports and audits lead with: the safety-critical classes' clean, robust
and (in an audit) certified accuracy with intervals, the worst class, the most harmful targeted attacks beside
the untargeted figure, and harm-weighted figures.

Reads the dict of :func:`robust.evaluation.safety.safety_view`; a proportion that is not an accuracy (a
``rate`` record) reads ``"12.50% [3.44, 28.99] (4/32)"`` like an accuracy does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust.reports.format import MISSING, fmt_accuracy, interval, percent, threat_label
from robust.reports.markdown import class_label, table

__all__ = ["fmt_rate", "plot_safety", "safety_lines", "safety_section"]


def fmt_rate(record: Mapping | None) -> str:
    """A ``rate`` record as ``"12.50% [3.44, 28.99] (4/32)"``."""
    if not record:
        return MISSING
    if not record.get("n"):
        return f"{MISSING} (0/0)"
    text = percent(record.get("rate"))
    ci = interval(record.get("ci95"))
    return text + (f" {ci}" if ci else "") + f" ({record.get('count', '?')}/{record.get('n', '?')})"


def _name(entry: Mapping, names: Sequence[str] | None) -> str:
    if entry.get("name"):
        return f"{entry['class']} ({entry['name']})"
    return class_label(int(entry["class"]), names)


def _targets(result: Mapping, names: Sequence[str] | None) -> str:
    given = result.get("target_names")
    if given:
        return ", ".join(f"{t} ({n})" for t, n in zip(result["targets"], given))
    return ", ".join(class_label(int(t), names) for t in result.get("targets") or [])


def _source(result: Mapping, names: Sequence[str] | None) -> str:
    return _name({"class": result["source"], "name": result.get("source_name")}, names)


def safety_lines(view: Mapping | None, names: Sequence[str] | None = None) -> list[str]:
    """The headline sentences (for the audit's statement and the command's summary)."""
    if not view:
        return []
    lines = []
    for e in view.get("classes") or []:
        if e.get("n"):
            cert = f", certified {fmt_accuracy(e['certified'])}" if e.get("certified") else ""
            lines.append(f"{_name(e, names)}: robust {fmt_accuracy(e['robust'])}{cert}")
    worst = view.get("worst_class")
    if worst:
        lines.append(f"worst class: {_name(worst, names)}, robust {fmt_accuracy(worst['robust'])}")
    for t in view.get("targeted") or []:
        untargeted = (t.get("untargeted") or {}).get("misread")
        lines.append(f"targeted {_source(t, names)} -> {{{', '.join(map(str, t['targets']))}}}: "
                     f"{fmt_rate(t['success'])} of the source images read as a target"
                     + (f" (untargeted: {fmt_rate(untargeted)} misread)" if untargeted else ""))
    adv = (view.get("harm") or {}).get("adversarial") or {}
    if adv:
        lines.append(f"mean harm per example under attack: {adv['mean']:.3f} (clean "
                     f"{view['harm']['clean']['mean']:.3f})")
    return lines


def safety_section(view: Mapping | None, names: Sequence[str] | None = None) -> list[str]:
    """``## Safety-critical classes`` in Markdown, or nothing when there is no safety view."""
    if not view:
        return []
    harm = view.get("harm") or {}
    matrix = harm.get("matrix") or {}
    severe = matrix.get("severe")
    lines = ["## Safety-critical classes", "",
             f"Threat: {threat_label(view.get('threat'))}. Harm matrix: {matrix.get('source', MISSING)}"
             + (f" (an error is severe at cost >= {severe:g})" if severe is not None else "") + ".", ""]
    certified = any(e.get("certified") is not None for e in view.get("classes") or [])
    header = ["class", "n", "clean", "robust"] + (["certified"] if certified else [])
    rows = [[_name(e, names), e.get("n", MISSING), fmt_accuracy(e.get("clean")), fmt_accuracy(e.get("robust"))]
            + ([fmt_accuracy(e.get("certified"))] if certified else []) for e in view.get("classes") or []]
    lines += table(header, rows) + [""]
    if certified and view.get("certified_by"):
        lines += [f"Certified by {view['certified_by']}.", ""]
    for key, label in (("worst_class", "Worst class"), ("worst_safety_class", "Worst safety-critical class")):
        e = view.get(key)
        if e and (key == "worst_class" or e["class"] != (view.get("worst_class") or {}).get("class")):
            cert = f", certified {fmt_accuracy(e['certified'])}" if e.get("certified") else ""
            lines.append(f"- {label} (lowest robust accuracy): **{_name(e, names)}**, robust "
                         f"{fmt_accuracy(e['robust'])}, clean {fmt_accuracy(e['clean'])}{cert}, n = {e['n']}")
    lines.append("")
    targeted = view.get("targeted") or []
    if targeted:
        lines += ["### Targeted attacks on the most harmful confusions", "",
                  "Read as a target: the share of the source class's images the model reads as one of the targets "
                  "under the targeted attack (a clean misreading into a target counts); untargeted: the share "
                  "misread under the report's untargeted attacks.", ""]
        rows = []
        for t in targeted:
            s = t.get("settings") or {}
            untargeted = t.get("untargeted") or {}
            rows.append([_source(t, names), _targets(t, names),
                         f"{t.get('attack', MISSING)}, {s.get('loss', '?')} loss, {s.get('steps', '?')} steps",
                         fmt_rate(t.get("success")), fmt_rate(t.get("success_on_correct")),
                         fmt_rate(untargeted.get("misread")), fmt_rate(untargeted.get("misread_of_correct"))])
        lines += table(["source", "targets", "attack", "read as a target", "of those read right clean",
                        "untargeted: misread", "of those read right clean"], rows) + [""]
    clean, adv = harm.get("clean"), harm.get("adversarial")
    if clean and adv:
        lines += ["### Harm-weighted errors", ""]
        rows = [["mean harm per example", f"{clean['mean']:.4f}", f"{adv['mean']:.4f}"],
                ["errors", clean["errors"], adv["errors"]]]
        if "severe_share_of_errors" in clean:
            rows += [["severe share of errors", fmt_rate(clean["severe_share_of_errors"]),
                      fmt_rate(adv["severe_share_of_errors"])],
                     ["severe share of examples", fmt_rate(clean["severe_share_of_examples"]),
                      fmt_rate(adv["severe_share_of_examples"])]]
        lines += table(["", "clean", "under attack"], rows) + [""]
        if adv.get("top"):
            lines.append("Costliest confusions under attack: " + "; ".join(
                f"{class_label(c['true'], names)} → {class_label(c['pred'], names)}: {c['count']} × {c['cost']:g}"
                for c in adv["top"]) + ".")
            lines.append("")
        if harm.get("note"):
            lines += [f"Under attack means {harm['note']}.", ""]
    return lines


def plot_safety(view: Mapping, path: str | os.PathLike, names: Sequence[str] | None = None,
                title: str | None = None) -> Path:
    """Bars of clean, robust (and certified, where present) accuracy per safety-critical class, 95% CI."""
    from robust.reports.plots import CERTIFIED_COLOR, CLEAN_COLOR, ROBUST_COLOR, figure, save, yerr

    entries = [e for e in view.get("classes") or [] if e.get("n")]
    kinds = [("clean", CLEAN_COLOR), ("robust", ROBUST_COLOR)]
    if any(e.get("certified") for e in entries):
        kinds.append(("certified", CERTIFIED_COLOR))
    width = 0.8 / len(kinds)
    x = np.arange(len(entries))
    fig = figure(max(6.0, 0.55 * len(entries) * len(kinds) + 2.0), 4.8)
    ax = fig.add_subplot()
    for k, (key, color) in enumerate(kinds):
        records: list[Any] = [e.get(key) or {"accuracy": 0.0, "ci95": [0.0, 0.0]} for e in entries]
        ax.bar(x + (k - (len(kinds) - 1) / 2) * width, [100 * r["accuracy"] for r in records], width=width,
               color=color, label=key, yerr=yerr(records), capsize=2, error_kw={"elinewidth": 0.8})
    labels = [_name(e, names) for e in entries]
    ax.set_xticks(x, labels, rotation=45 if len(entries) > 4 else 0, ha="right" if len(entries) > 4 else "center",
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", ncols=len(kinds), fontsize=8)
    ax.set_title(title or f"Safety-critical classes ({threat_label(view.get('threat'))}; bars: 95% CI)")
    return save(fig, path)
