"""A self-contained HTML leaderboard page: one sortable, filterable table per board.

:func:`render_html` takes what :func:`robust.leaderboard.ranking.boards` returns and gives one
HTML document with inline CSS and JavaScript only (no fonts, scripts or images fetched from
anywhere), so the file works when opened from disk. Curves (robust accuracy vs eps, certified
accuracy vs radius) are drawn in Python as small inline SVG charts.

Every string that comes from an entry is escaped with :func:`html.escape` (``quote=True``);
entry data never goes into a script block or an event handler, links are only made clickable
when they are ``http://`` or ``https://``, and a Content-Security-Policy allows only the page's
own script (by its sha256), so even a mistake in escaping would not let an entry run code.
The output is a function of the input only (no clock, no randomness).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from robust.reports.format import percent

__all__ = ["render_html", "svg_chart", "safe_href"]

TIED_TIP = ("Statistically tied with the row above: their 95% Clopper-Pearson intervals overlap, "
            "so the difference is not significant and they share a rank.")
UNRELIABLE_TIP = ("The gradient-masking audit flagged this evaluation: the robust accuracy may be "
                  "overestimated, so the entry is listed apart and not ranked.")
EXTERNAL_TIP = ("Robust accuracy from an adaptive attack (external), lower than the attack "
                "protocol's number; it takes precedence, as in RobustBench.")

_SAFE_URL = re.compile(r"^https?://[^\s]+$", re.IGNORECASE)


def _e(value: Any) -> str:
    """Escaped text (``&``, ``<``, ``>``, ``"`` and ``'``)."""
    return html.escape("" if value is None else str(value), quote=True)


def safe_href(link: Any) -> str | None:
    """``link`` when it is an http(s) URL (to be escaped by the caller), else None."""
    if isinstance(link, str) and _SAFE_URL.match(link):
        return link
    return None


def _num(value: float) -> str:
    """A compact, deterministic number for SVG coordinates."""
    out = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if out in ("-0", "") else out


def _tick(value: float) -> str:
    return f"{value:.3g}"


def _nice_ticks(hi: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``hi``."""
    if hi <= 0 or not math.isfinite(hi):
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


def svg_chart(points: Sequence[Mapping[str, Any]], x_key: str, x_label: str, y_label: str, title: str,
              marker: float | None = None, width: int = 272, height: int = 180) -> str:
    """A small line chart of ``accuracy`` (fraction, drawn in %) against ``points[i][x_key]``.

    ``marker`` draws a dashed vertical line at that x (the board's eps or radius)."""
    pts = sorted(((float(p[x_key]), float(p["accuracy"])) for p in points
                  if math.isfinite(float(p[x_key])) and math.isfinite(float(p["accuracy"]))),
                 key=lambda t: t)
    left, right, top, bottom = 46, 12, 22, 40
    pw, ph = width - left - right, height - top - bottom
    xmax = max([x for x, _ in pts] + ([marker] if marker is not None and math.isfinite(marker) else []) + [0.0])
    xticks = _nice_ticks(xmax)
    x_hi = xticks[-1] if xticks[-1] > 0 else 1.0

    def sx(x: float) -> float:
        return left + pw * (x / x_hi)

    def sy(y: float) -> float:
        return top + ph * (1 - min(max(y, 0.0), 1.0))

    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>',
           f'<text class="chart-title" x="{left}" y="14">{_e(title)}</text>']
    for y in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line class="grid" x1="{left}" y1="{_num(sy(y))}" x2="{left + pw}" y2="{_num(sy(y))}"/>'
                   f'<text class="tick" x="{left - 4}" y="{_num(sy(y) + 3)}" text-anchor="end">{int(y * 100)}</text>')
    for x in xticks:
        out.append(f'<line class="axis" x1="{_num(sx(x))}" y1="{top + ph}" x2="{_num(sx(x))}" y2="{top + ph + 3}"/>'
                   f'<text class="tick" x="{_num(sx(x))}" y="{top + ph + 13}" text-anchor="middle">{_e(_tick(x))}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>'
               f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>')
    out.append(f'<text class="label" x="{_num(left + pw / 2)}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
               f'<text class="label" x="12" y="{_num(top + ph / 2)}" text-anchor="middle" '
               f'transform="rotate(-90 12 {_num(top + ph / 2)})">{_e(y_label)}</text>')
    if marker is not None and math.isfinite(marker) and 0 <= marker <= x_hi:
        out.append(f'<line class="marker" x1="{_num(sx(marker))}" y1="{top}" x2="{_num(sx(marker))}" y2="{top + ph}">'
                   f'<title>board: {_e(_tick(marker))}</title></line>')
    if len(pts) > 1:
        path = " ".join(f"{_num(sx(x))},{_num(sy(y))}" for x, y in pts)
        out.append(f'<polyline class="curve" points="{path}"/>')
    for x, y in pts:
        out.append(f'<circle class="dot" cx="{_num(sx(x))}" cy="{_num(sy(y))}" r="2.5">'
                   f'<title>{_e(_tick(x))}: {percent(y, unit=" %")}</title></circle>')
    if not pts:
        out.append(f'<text class="tick" x="{_num(left + pw / 2)}" y="{_num(top + ph / 2)}" '
                   f'text-anchor="middle">no points</text>')
    out.append("</svg>")
    return "".join(out)


def _accuracy_cell(value: float | None, ci: Sequence[float] | None, extra: str = "") -> str:
    data = "" if value is None else f"{float(value):.6f}"
    interval = (f'<span class="ci" title="95% Clopper-Pearson interval">[{percent(ci[0], unit="")}, '
                f'{percent(ci[1], unit="")}]</span>'
                if ci else '<span class="ci" title="no sample size recorded: no interval">no CI</span>')
    return (f'<td class="num" data-value="{data}"><span class="acc">{percent(value, unit="")}</span>{extra} '
            f'{interval}</td>')


def _kv(value: Any) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "—"
        return "<ul class=\"kv\">" + "".join(f"<li><span class=\"k\">{_e(k)}</span> {_kv(v)}</li>"
                                             for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "</ul>"
    if isinstance(value, (list, tuple)):
        return _e(json.dumps(value, sort_keys=True, default=str)) if value else "—"
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    return "—" if value is None or value == "" else _e(value)


def _certificate(c: Mapping[str, Any]) -> str:
    counts = f" ({c['correct']}/{c['n']})" if c.get("correct") is not None and c.get("n") else ""
    return (f"{c.get('method')} {c.get('norm') or ''} radius {_tick(float(c['radius']))}: "
            f"{percent(c.get('accuracy'), unit=' %')}{counts}")


def _details(row: Mapping[str, Any], board: Mapping[str, Any]) -> str:
    entry = row.get("entry") or {}
    protocol = board.get("protocol") or {}
    charts = []
    sweep = entry.get("sweep") or []
    curve = entry.get("certified_curve") or []
    threat = entry.get("threat") or ""
    if sweep:
        marker = protocol.get("eps") if board.get("kind") == "empirical" else None
        charts.append(svg_chart(sweep, "eps", f"ε ({threat}, pixel scale [0, 1])", "robust acc. (%)",
                                "Robust accuracy vs ε", marker=marker))
    if curve:
        marker = protocol.get("radius") if board.get("kind") == "certified" else None
        charts.append(svg_chart(curve, "radius", f"radius ({protocol.get('threat') or threat})", "certified acc. (%)",
                                "Certified accuracy vs radius", marker=marker))
    parts = [f'<div class="charts">{"".join(charts)}</div>' if charts
             else '<p class="muted">No accuracy curve recorded.</p>']
    rb = dict(entry.get("robustbench") or {})
    link = rb.pop("link", None)
    href = safe_href(link)
    items = [
        ("id", entry.get("id")), ("dataset", entry.get("dataset")), ("threat", entry.get("threat")),
        ("eps", entry.get("eps_str") or entry.get("eps")),
        ("attack protocol", entry.get("attack_protocol")),
        ("protocol's robust accuracy", None if entry.get("robust") is None
         else percent(entry["robust"].get("accuracy"), unit=" %")),
        ("adaptive attack (external)", None if entry.get("external") is None else percent(entry["external"], unit=" %")),
        ("certificates", "; ".join(_certificate(c) for c in entry.get("certified") or []) or None),
        ("training", entry.get("training")), ("checkpoint sha256", entry.get("checkpoint_sha256")),
        ("model sha256", entry.get("model_sha256")), ("versions", entry.get("versions")),
        ("hardware", entry.get("hardware")), ("wandb run", entry.get("wandb_run")),
        ("timestamp", entry.get("timestamp")),
    ]
    dl = []
    for key, value in items:
        if value is None or value == "" or value == {}:
            continue
        dl.append(f"<dt>{_e(key)}</dt><dd>{_kv(value)}</dd>")
    if link is not None:
        shown = (f'<a href="{_e(href)}" rel="noopener noreferrer" target="_blank">{_e(link)}</a>' if href
                 else f'<span class="unsafe-link" title="not an http(s) link: not made clickable">{_e(link)}</span>')
        dl.append(f"<dt>RobustBench link</dt><dd>{shown}</dd>")
    if rb:
        dl.append(f"<dt>RobustBench</dt><dd>{_kv(rb)}</dd>")
    flags = entry.get("audit_flags") or []
    if flags:
        dl.append("<dt>audit flags</dt><dd><ul class=\"kv\">" + "".join(
            f"<li><span class=\"k\">{_e(f.get('name'))}</span> {_e(f.get('message'))}</li>" for f in flags)
                  + "</ul></dd>")
    parts.append(f'<dl class="prov">{"".join(dl)}</dl>')
    return (f'<td class="details"><details><summary>curves &amp; provenance</summary>'
            f'<div class="details-body">{"".join(parts)}</div></details></td>')


def _row(row: Mapping[str, Any], board: Mapping[str, Any], order: int) -> str:
    rank, tied, unreliable = row.get("rank"), bool(row.get("tied")), bool(row.get("unreliable"))
    if unreliable or rank is None:
        rank_cell = '<td class="num rank" data-value=""><span class="muted" title="not ranked">—</span></td>'
    else:
        marker = (f' <span class="tied" tabindex="0" title="{_e(TIED_TIP)}" aria-label="{_e(TIED_TIP)}">tied</span>'
                  if tied else "")
        rank_cell = f'<td class="num rank" data-value="{int(rank)}">{"=" if tied else ""}{int(rank)}{marker}</td>'
    name = row.get("name") or ""
    badges = ""
    if unreliable:
        badges += f' <span class="badge unreliable" title="{_e(UNRELIABLE_TIP)}">unreliable</span>'
    reasons = row.get("reasons") or []
    reason_list = ('<ul class="reasons">' + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>"
                   if reasons and unreliable else "")
    arch = row.get("architecture")
    external = (f' <span class="badge external" title="{_e(EXTERNAL_TIP)}">adaptive</span>'
                if row.get("external") else "")
    source = row.get("source") or ""
    rb_link = safe_href(((row.get("entry") or {}).get("robustbench") or {}).get("link"))
    source_html = (f'<a href="{_e(rb_link)}" rel="noopener noreferrer" target="_blank">{_e(source)}</a>'
                   if rb_link else _e(source))
    classes = "entry" + (" is-unreliable" if unreliable else "") + (" is-tied" if tied else "")
    return (f'<tr class="{classes}" data-order="{order}">{rank_cell}'
            f'<td class="name" data-value="{_e(name)}"><span class="model">{_e(name)}</span>{badges}{reason_list}</td>'
            f'<td data-value="{_e(arch or "")}">{_e(arch) if arch else "<span class=muted>—</span>"}</td>'
            f'{_accuracy_cell(row.get("value"), row.get("ci95"), external)}'
            f'{_accuracy_cell(row.get("clean"), row.get("clean_ci95"))}'
            f'<td data-value="{_e(source)}">{source_html}</td>'
            f'{_details(row, board)}</tr>')


def _protocol_line(protocol: Mapping[str, Any]) -> str:
    return " · ".join(f'<span class="k">{_e(k)}</span> {_e(_tick(v) if isinstance(v, float) else v)}'
                      for k, v in protocol.items() if v is not None)


def _board(board: Mapping[str, Any], index: int) -> str:
    kind = board.get("kind") or "empirical"
    rows = list(board.get("rows") or [])
    ranked = [r for r in rows if not r.get("unreliable")]
    apart = [r for r in rows if r.get("unreliable")]
    value_label = "Certified acc. (%)" if kind == "certified" else "Robust acc. (%)"
    head = ("<thead><tr>"
            '<th data-sort="num" scope="col" title="Sort by rank">Rank</th>'
            '<th data-sort="text" scope="col" title="Sort by model name">Model</th>'
            '<th data-sort="text" scope="col" title="Sort by architecture">Architecture</th>'
            f'<th data-sort="num" scope="col" title="Sort by {value_label.lower()}; 95% interval in brackets">'
            f'{value_label}</th>'
            '<th data-sort="num" scope="col" title="Sort by clean accuracy; 95% interval in brackets">Clean acc. (%)</th>'
            '<th data-sort="text" scope="col" title="Sort by source">Source</th>'
            '<th scope="col">Details</th></tr></thead>')
    body = '<tbody class="ranked">' + "".join(_row(r, board, i) for i, r in enumerate(ranked)) + "</tbody>"
    if apart:
        body += ('<tbody class="apart"><tr class="apart-heading"><th colspan="7" scope="rowgroup">'
                 f'Unreliable — flagged by the gradient-masking audit, not ranked ({len(apart)})</th></tr>'
                 + "".join(_row(r, board, len(ranked) + i) for i, r in enumerate(apart)) + "</tbody>")
    bid = f"board-{index + 1}"
    return (f'<section class="board {_e(kind)}" id="{bid}">'
            f'<h2><span class="kind">{_e(kind)}</span> {_e(board.get("title") or "")}</h2>'
            f'<p class="protocol">{_protocol_line(board.get("protocol") or {})}</p>'
            f'<div class="tools"><label>Filter <input type="search" class="filter" data-table="{bid}-table" '
            f'placeholder="name, architecture, source…" aria-label="Filter rows of this table"></label> '
            f'<span class="count" aria-live="polite">{len(rows)} of {len(rows)} rows</span></div>'
            f'<div class="scroll"><table class="board-table" id="{bid}-table">{head}{body}</table></div>'
            f'<p class="empty" hidden>No rows match the filter.</p></section>')


_CSS = """
:root { --fg:#1d232a; --muted:#6a737d; --line:#d8dee4; --bg:#fff; --head:#f3f5f7; --accent:#0b63c5;
        --bad:#b3261e; --badbg:#fdecea; --tie:#7a5c00; --tiebg:#fff4ce; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; padding: 1.2rem; max-width: 1440px; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
h2 { font-size: 1.1rem; margin: 1.8rem 0 .2rem; }
.kind { font-size: .72rem; text-transform: uppercase; letter-spacing: .04em; background: var(--head);
        border: 1px solid var(--line); border-radius: 3px; padding: 1px 5px; vertical-align: middle; }
.muted, .protocol, .ci { color: var(--muted); }
.protocol { margin: 0 0 .5rem; font-size: .85rem; }
.k { font-weight: 600; }
nav ul { padding-left: 1.2rem; margin: .3rem 0; }
.tools { margin: .3rem 0 .5rem; }
.filter { font: inherit; padding: 3px 6px; min-width: 18rem; border: 1px solid var(--line); border-radius: 4px; }
.count { color: var(--muted); margin-left: .5rem; font-size: .85rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--head); white-space: nowrap; position: sticky; top: 0; }
thead th[data-sort] { cursor: pointer; user-select: none; }
thead th[data-sort]:hover, thead th[data-sort]:focus { color: var(--accent); }
thead th[data-sort]::after { content: " \\2195"; color: var(--muted); font-size: .8em; }
thead th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--accent); }
thead th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--accent); }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
.ci { font-size: .8rem; }
.rank { font-weight: 600; }
.tied { font-weight: 400; font-size: .72rem; color: var(--tie); background: var(--tiebg); border-radius: 3px;
        padding: 0 4px; cursor: help; border-bottom: 1px dotted var(--tie); }
.badge { font-size: .72rem; border-radius: 3px; padding: 0 5px; cursor: help; white-space: nowrap; }
.badge.unreliable { color: #fff; background: var(--bad); }
.badge.external { color: var(--accent); border: 1px solid var(--accent); }
.apart-heading th { background: var(--badbg); color: var(--bad); font-weight: 600; border-top: 2px solid var(--bad); }
tr.is-unreliable td { background: #fffafa; }
tr.is-unreliable .model { color: var(--bad); }
.reasons { margin: .2rem 0 0; padding-left: 1.1rem; font-size: .8rem; color: var(--bad); }
details summary { cursor: pointer; color: var(--accent); white-space: nowrap; }
.details-body { padding: .4rem 0; width: 560px; max-width: 85vw; }
.charts { display: flex; flex-wrap: wrap; gap: .5rem; }
.chart { background: #fcfcfd; border: 1px solid var(--line); border-radius: 4px; }
.chart .grid { stroke: #eceff2; stroke-width: 1; }
.chart .axis { stroke: #8a939c; stroke-width: 1; }
.chart .curve { fill: none; stroke: var(--accent); stroke-width: 1.8; }
.chart .dot { fill: var(--accent); }
.chart .marker { stroke: var(--bad); stroke-width: 1; stroke-dasharray: 3 3; }
.chart text { font: 10px system-ui, sans-serif; fill: #444; }
.chart .chart-title { font-weight: 600; font-size: 11px; }
.chart .label { fill: var(--fg); }
dl.prov { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 10px; font-size: .8rem; margin: .4rem 0 0; }
dl.prov dt { font-weight: 600; color: var(--muted); }
dl.prov dd { margin: 0; overflow-wrap: anywhere; }
ul.kv { list-style: none; margin: 0; padding: 0; }
.unsafe-link { text-decoration: line-through; color: var(--muted); }
a { color: var(--accent); }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 2rem; color: var(--muted); font-size: .8rem; }
"""

# Entry data never goes in here: the script only reads the DOM (data-value attributes, text).
_JS = """
(function () {
  "use strict";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };
  function key(cell, numeric) {
    var v = cell.getAttribute("data-value");
    if (numeric) { return v === null || v === "" ? null : parseFloat(v); }
    v = (v === null ? cell.textContent : v).trim().toLowerCase();
    return v === "" ? null : v;
  }
  function sortTable(table, col, th) {
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    each(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var numeric = th.getAttribute("data-sort") === "num", sign = dir === "ascending" ? 1 : -1;
    each(table.tBodies, function (tb) {
      var rows = Array.prototype.filter.call(tb.rows, function (r) { return r.classList.contains("entry"); });
      rows.sort(function (a, b) {
        var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
        var tie = (+a.getAttribute("data-order")) - (+b.getAttribute("data-order"));
        if (x === null || y === null) { return x === y ? tie : (x === null ? 1 : -1); }
        if (x < y) { return -sign; }
        if (x > y) { return sign; }
        return tie;
      });
      each(rows, function (r) { tb.appendChild(r); });
    });
  }
  function filterTable(table, query, section) {
    var q = query.trim().toLowerCase(), shown = 0, total = 0;
    each(table.tBodies, function (tb) {
      var visible = 0;
      each(tb.rows, function (r) {
        if (!r.classList.contains("entry")) { return; }
        var text = "";
        for (var i = 0; i < r.cells.length - 1; i++) { text += " " + r.cells[i].textContent; }
        var ok = q === "" || text.toLowerCase().indexOf(q) !== -1;
        r.hidden = !ok;
        total += 1;
        if (ok) { visible += 1; }
      });
      each(tb.querySelectorAll("tr.apart-heading"), function (h) { h.hidden = visible === 0; });
      shown += visible;
    });
    var count = section.querySelector(".count");
    if (count) { count.textContent = shown + " of " + total + " rows"; }
    var empty = section.querySelector(".empty");
    if (empty) { empty.hidden = shown !== 0; }
  }
  each(document.querySelectorAll("section.board"), function (section) {
    var table = section.querySelector("table.board-table");
    if (!table) { return; }
    each(table.tHead.rows[0].cells, function (th, col) {
      if (!th.hasAttribute("data-sort")) { return; }
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, col, th); });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortTable(table, col, th); }
      });
    });
    var input = section.querySelector("input.filter");
    if (input) {
      input.addEventListener("input", function () { filterTable(table, input.value, section); });
      if (input.value) { filterTable(table, input.value, section); }
    }
  });
})();
"""


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'")


def render_html(boards: list[dict], title: str = "robust leaderboard") -> str:
    """The leaderboard as one self-contained HTML document (a string).

    ``boards`` is what :func:`robust.leaderboard.ranking.boards` returns. The same input gives
    the same output, byte for byte."""
    boards = list(boards or [])
    n_entries = len({(r.get("id"), r.get("name")) for b in boards for r in b.get("rows") or []})
    nav = ""
    if len(boards) > 1:
        nav = ("<nav><ul>" + "".join(
            f'<li><a href="#board-{i + 1}">{_e(b.get("title") or "")}</a> '
            f'<span class="muted">({len(b.get("rows") or [])})</span></li>' for i, b in enumerate(boards))
               + "</ul></nav>")
    sections = "".join(_board(b, i) for i, b in enumerate(boards)) or '<p class="empty">No entries.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_csp(_JS))}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><header><h1>{_e(title)}</h1>"
        f'<p class="muted">{len(boards)} board{"s" if len(boards) != 1 else ""}, {n_entries} '
        f'model{"s" if n_entries != 1 else ""}. One table per protocol; accuracies in % with their 95% '
        "Clopper-Pearson intervals in brackets. Rows whose interval overlaps the one above are "
        '<span class="tied" title="' + _e(TIED_TIP) + '">tied</span> and share its rank (shown as =N). '
        'Entries flagged by the gradient-masking audit are marked <span class="badge unreliable" title="'
        + _e(UNRELIABLE_TIP) + '">unreliable</span> and listed apart. Click a column header to sort; '
        "type in a filter box to narrow a table.</p>"
        f"{nav}</header>\n<main>{sections}</main>\n"
        "<footer>Generated by robust.leaderboard.html — a self-contained page: no network requests.</footer>\n"
        f"<script>{_JS}</script></body></html>\n"
    )
