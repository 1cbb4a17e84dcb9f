"""Boards as Markdown, CSV, JSON (the entries themselves, lossless) or one self-contained HTML page."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robust.base.state import atomic_write_text
from robust.leaderboard.ranking import boards as rank_boards
from robust.reports.format import interval, percent

FORMATS = ("md", "csv", "json", "html")


def _rank(row: Mapping[str, Any]) -> str:
    if row["rank"] is None:
        return "unreliable"
    return f"={row['rank']}" if row["tied"] else str(row["rank"])


def _md_text(value: Any) -> str:
    """Text for a Markdown table cell: HTML escaped (Markdown renders raw HTML), pipes and newlines neutralised."""
    return html.escape(str(value if value is not None else ""), quote=True).replace("|", "\\|").replace("\n", " ")


def to_markdown(entries: Sequence[Mapping[str, Any]], title: str = "robust leaderboard") -> str:
    lines = [f"# {_md_text(title)}", "",
             "Entries are ranked only against entries measured under the same protocol; `=k` marks an entry whose "
             "95% interval overlaps the one above it (statistically tied). Unreliable entries (flagged by the "
             "gradient-masking audit) are listed last, unranked.", ""]
    for board in rank_boards(entries):
        metric = "robust" if board["kind"] == "empirical" else "certified"
        lines += [f"## {_md_text(board['title'])}", "",
                  f"| rank | model | architecture | {metric} accuracy | 95% CI | clean | source | notes |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in board["rows"]:
            notes = "; ".join(row["reasons"]) if row["unreliable"] else ("external (adaptive attack)"
                                                                            if row["external"] else "")
            lines.append(f"| {_rank(row)} | {_md_text(row['name'])} | {_md_text(row['architecture'])} | "
                         f"{percent(row['value'])} | {interval(row['ci95'])} | {percent(row['clean'])} | "
                         f"{_md_text(row['source'])} | {_md_text(notes)} |")
        lines.append("")
    return "\n".join(lines)


def _csv_cell(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas: prefix text ones with a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(entries: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["board", "kind", "rank", "tied", "model", "architecture", "accuracy", "ci95_low", "ci95_high",
                     "clean", "external", "unreliable", "reasons", "source", "id"])
    for board in rank_boards(entries):
        for row in board["rows"]:
            ci = row["ci95"] or ["", ""]
            writer.writerow([_csv_cell(v) for v in (
                board["title"], board["kind"], row["rank"] if row["rank"] is not None else "", row["tied"],
                row["name"], row["architecture"] or "", f"{row['value']:.6f}", ci[0], ci[1], f"{row['clean']:.6f}",
                row["external"], row["unreliable"], "; ".join(row["reasons"]), row["source"], row["id"] or "")])
    return buffer.getvalue()


def to_json(entries: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"format": "robust-leaderboard", "version": 1, "entries": list(entries)}, indent=2,
                      sort_keys=True) + "\n"


def render(entries: Sequence[Mapping[str, Any]], fmt: str, title: str = "robust leaderboard") -> str:
    if fmt == "md":
        return to_markdown(entries, title)
    if fmt == "csv":
        return to_csv(entries)
    if fmt == "json":
        return to_json(entries)
    if fmt == "html":
        from robust.leaderboard.html import render_html

        return render_html(rank_boards(entries), title=title)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def write(entries: Sequence[Mapping[str, Any]], fmt: str, path: str | os.PathLike,
          title: str = "robust leaderboard") -> Path:
    """Render and write atomically (a failure leaves an earlier file untouched)."""
    return atomic_write_text(path, render(entries, fmt, title))


def read_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries from a board written by :func:`to_json` (for import into another store)."""
    from robust.leaderboard.entry import EntryError

    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != "robust-leaderboard":
        raise EntryError(f"{path}: not a robust leaderboard JSON export")
    return list(data["entries"])
