"""Boards as Markdown, CSV, JSON (the entries themselves, lossless) or one self-contained HTML page."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robust.base.state import atomic_write_text
from robust.leaderboard.ranking import boards as rank_boards
from robust.leaderboard.text import plain
from robust.reports.format import interval, percent

FORMATS = ("md", "csv", "json", "html")
_MD_SPECIAL = re.compile(r"[\\`*_{}\[\]!|~:]")  # escaping [ ] ! and : leaves no link, image or autolink
_FORMULA = ("=", "+", "-", "@", "\u2212")  # and U+2212 MINUS SIGN, which NFKC keeps
_CSV_BLANK = "".join(chr(c) for c in range(33)) + "\x7f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005" \
    "\u2006\u2007\u2008\u2009\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"


def _rank(row: Mapping[str, Any]) -> str:
    if row["rank"] is None:
        return "unreliable"
    return f"={row['rank']}" if row["tied"] else str(row["rank"])


def _md_text(value: Any) -> str:
    """Text for a Markdown table cell that renders as the text it is and nothing else: control
    characters removed, HTML escaped (Markdown renders raw HTML), and the characters that make
    links, images, autolinks, emphasis, code and table cells backslash-escaped."""
    text = html.escape(plain(value), quote=True)
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


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
    """Spreadsheets run a cell that starts with = + - @ (also after spaces or control characters, and
    in their full-width or small forms such as ＝), a tab or a line break as a formula: such text
    cells get a leading quote."""
    if isinstance(value, str):
        start = value.lstrip(_CSV_BLANK)[:1]
        if value[:1] in ("\t", "\r", "\n") or start in _FORMULA or unicodedata.normalize("NFKC", start)[:1] in _FORMULA:
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
