"""The Markdown pieces every document shares: tables, images, the per-class and protocol sections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robust.reports.format import MISSING, fmt_accuracy, percent, short_settings, threat_label

__all__ = ["table", "image", "class_name", "class_label", "per_class_rows", "weakest", "per_class_section",
           "protocol_section"]

# protocol fields with a line of their own; the rest go on one "other" line
_PROTOCOL_LINES = ("seed", "batch_size", "n_examples", "device")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table, one line per row; pipes and newlines inside cells are neutralised."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def image(name: str, file: str) -> list[str]:
    """An embedded figure: ``![eps sweep](eps_sweep.png)`` and a blank line."""
    return [f"![{name.replace('_', ' ')}]({file})", ""]


def class_name(index: int, class_names: Sequence[str] | None) -> str:
    if class_names and 0 <= index < len(class_names):
        return str(class_names[index])
    return ""


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """``"3 (stop)"`` with a name, ``"3"`` without."""
    name = class_name(index, class_names)
    return f"{index} ({name})" if name else str(index)


def per_class_rows(per_class: Mapping | None) -> list[tuple[int, Mapping]]:
    """A report's ``per_class`` (JSON keys are strings) as ``(index, record)`` sorted by index."""
    return sorted(((int(k), v) for k, v in (per_class or {}).items()), key=lambda item: item[0])


def weakest(rows: list[tuple[int, Mapping]], k: int = 3) -> set[int]:
    """Indices of the ``k`` classes with the lowest robust accuracy (never all of them)."""
    scored = [(r["robust"]["accuracy"], i) for i, r in rows if r.get("robust") and r.get("n", 1)]
    return {i for _, i in sorted(scored)[: min(k, len(scored) - 1)]}


def per_class_section(per_class: Mapping | None, class_names: Sequence[str] | None) -> list[str]:
    """``## Per class``: the weakest classes named first, then a table with them in bold."""
    rows = per_class_rows(per_class)
    if not rows:
        return []
    weak = weakest(rows)
    lines = ["## Per class", ""]
    if weak:
        by_index = dict(rows)
        ranked = sorted(weak, key=lambda i: (by_index[i]["robust"]["accuracy"], i))
        lines += ["Weakest classes (lowest robust accuracy, in bold): " + ", ".join(
            f"**{class_label(i, class_names)}** {percent(by_index[i]['robust']['accuracy'])}" for i in ranked), ""]

    def bold(text: str, on: bool) -> str:
        return f"**{text}**" if on else text

    lines += table(["class", "name", "n", "clean", "robust"],
                   [[bold(str(i), i in weak), class_name(i, class_names) or MISSING, r.get("n", MISSING),
                     fmt_accuracy(r.get("clean")), bold(fmt_accuracy(r.get("robust")), i in weak)]
                    for i, r in rows])
    return lines + [""]


def protocol_section(report: Mapping) -> list[str]:
    """``## Protocol``: versions, seed, sample, device, checkpoint sha256, threat, the other settings, time."""
    protocol = report.get("protocol") or {}
    lines = ["## Protocol", ""]
    versions = protocol.get("versions") or {}
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for key in _PROTOCOL_LINES:
        if protocol.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {protocol[key]}")
    checkpoint = protocol.get("checkpoint")
    if checkpoint:
        lines.append(f"- checkpoint: `{checkpoint.get('path', MISSING)}` sha256 `{checkpoint.get('sha256', MISSING)}`")
    elif "checkpoint" in protocol:
        lines.append("- checkpoint: none (weights not from a file)")
    if protocol.get("threat"):
        lines.append(f"- threat: {threat_label(protocol['threat'])}")
    rest = short_settings({k: v for k, v in protocol.items()
                           if k not in {"versions", *_PROTOCOL_LINES, "checkpoint", "threat", "attacks"}})
    if rest:
        lines.append(f"- other: {rest}")
    if report.get("seconds") is not None:
        lines.append(f"- total time: {report['seconds']:.1f} s")
    return lines + [""] if len(lines) > 2 else []
