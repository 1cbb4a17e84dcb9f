"""Hostile-input corpus, class "injection": entry text that would act on a terminal, a Markdown
renderer or a spreadsheet, and exports that leave odd modes or temporary files behind.

``leaderboard show`` prints no escape sequence, control character or bidi control from any field;
the Markdown export leaves no link, image, autolink or raw HTML; the CSV export neutralises every
formula form; exports get the umask's mode, and a failed one leaves the earlier file byte-identical
and no temporary file.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import assert_refused, run, snapshot

from robust.base.stats import accuracy_record
from robust.leaderboard import Store
from robust.leaderboard.formats import render
from robust.leaderboard.text import BIDI_CONTROLS, plain

FORMATS = ("md", "csv", "json", "html")
# What a terminal must never receive from an entry: C0 (but the newlines of the layout), DEL, C1, bidi controls.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f" + BIDI_CONTROLS + "]")


def entry(name: str = "Model", **changes) -> dict:
    fields = {"name": name, "architecture": "CNNSmall", "dataset": "digits", "threat": "Linf", "eps": 8 / 255,
              "eps_str": "8/255", "clean": accuracy_record(30, 40), "robust": accuracy_record(20, 40),
              "attack_protocol": {"name": "pgd", "version": "custom", "n_examples": 40},
              "timestamp": "2025-01-01T00:00:00+00:00"}
    fields.update(changes)
    return fields


def board(tmp_path: Path, *entries: dict) -> Path:
    db = tmp_path / "board.db"
    store = Store(db)
    store.add(entry("honest neighbour"))
    for e in entries:
        store.add(e)
    store.close()
    return db


# ============================================================================== the terminal (show)

TERMINAL = [
    pytest.param("\x1b[2J\x1b[HEvil", id="csi-clear-screen"),
    pytest.param("\x1b]0;pwned title\x07Evil", id="osc-window-title-bel"),
    pytest.param("\x1b]2;pwned title\x1b\\Evil", id="osc-window-title-st"),
    pytest.param("\x1b]8;;http://attacker.example/\x1b\\Evil\x1b]8;;\x1b\\", id="osc-8-hyperlink"),
    pytest.param("\x1b]52;c;cm0gLXJmIH4=\x07Evil", id="osc-52-clipboard"),
    pytest.param("\x07\x07Evil\x07", id="bel"),
    pytest.param("XXXXXXX\x08\x08\x08\x08\x08\x08\x08Evil", id="backspace-overwrite"),
    pytest.param("first line\rEvil", id="carriage-return-overwrite"),
    pytest.param("\x9b2J\x9d0;pwned\x9cEvil", id="c1-csi-and-osc"),
    pytest.param("Evil\u202etxt.exe\u202c\u2066x\u2069\u200f", id="bidi-overrides"),
    pytest.param("\x1bP+q544e\x1b\\\x1b_apc\x1b\\Evil", id="dcs-and-apc-strings"),
    pytest.param("Evil\x1bc\x1b(0\x1b#8", id="reset-and-charset-escapes"),
    pytest.param("Evil\x00\x7f\x85\n\x0b\x0c", id="nul-del-nel-line-breaks"),
    pytest.param("\x1b[31;1;4mEvil\x1b[0m\x1b[", id="sgr-colours-and-a-torn-csi"),
]


@pytest.mark.hostile("injection")
@pytest.mark.parametrize("payload", TERMINAL)
def test_show_prints_no_control_characters_from_an_entry_name(tmp_path, capsys, payload):
    db = board(tmp_path, entry(payload))
    shown = run(["leaderboard", "--db", db, "show"], capsys)
    assert shown.code == 0 and "Evil" in shown.out and "honest neighbour" in shown.out
    assert not FORBIDDEN.findall(shown.out), repr(shown.out)
    assert "pwned" not in shown.out and "attacker.example" not in shown.out  # escape payloads go, not only ESC


@pytest.mark.hostile("injection")
@pytest.mark.parametrize("field", ["dataset", "eps_str", "attack", "audit_flag", "architecture-and-source"])
def test_show_strips_every_printed_field(tmp_path, capsys, field):
    """The board title (data set, eps as written, attack name) and the audit's reasons are entry text too."""
    evil = "\x1b]0;pwned\x07\x1b[2J\u202eEvil"
    changes = {"dataset": {"dataset": "digits" + evil}, "eps_str": {"eps_str": "8/255" + evil},
               "attack": {"attack_protocol": {"name": "pgd" + evil, "version": "custom", "n_examples": 40}},
               "audit_flag": {"unreliable": True, "audit_flags": [{"name": "masking" + evil, "message": evil}]},
               "architecture-and-source": {"architecture": evil, "source": evil}}[field]
    db = board(tmp_path, entry("target", **changes))
    shown = run(["leaderboard", "--db", db, "show"], capsys)
    assert shown.code == 0 and "target" in shown.out
    assert not FORBIDDEN.findall(shown.out) and "pwned" not in shown.out


@pytest.mark.hostile("injection")
def test_the_warning_for_a_bad_row_strips_a_hostile_id(tmp_path, capsys):
    import sqlite3

    db = board(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO robust_entries VALUES (?, 'fp', 'x', 'digits', 'Linf', 0.03, 'robust', 1e12, '[]')",
                 ("\x1b]0;pwned\x07\x1b[2Jrow",))
    conn.commit()
    conn.close()
    shown = run(["leaderboard", "--db", db, "show"], capsys)
    assert shown.code == 0 and "row" in shown.err and not FORBIDDEN.findall(shown.err.replace("\n", ""))


@pytest.mark.hostile("injection")
def test_an_error_line_never_carries_raw_escapes_from_the_input(tmp_path, capsys):
    record = tmp_path / "Linf" / "m.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"name": "m", "dataset": "cifar10", "eps": "8/255",
                                  "clean_acc": "\x1b]0;pwned\x07\x1b[2J", "autoattack_acc": "50"}))
    outcome = run(["leaderboard", "--db", tmp_path / "b.db", "add", record], capsys)
    assert_refused(outcome, "clean_acc")
    assert "\x1b" not in outcome.err and "\x07" not in outcome.err


# ============================================================================== Markdown

MARKDOWN = [
    pytest.param("![t](http://attacker.example/pixel.png)", id="remote-image"),
    pytest.param("[x](javascript:alert(1))", id="javascript-link"),
    pytest.param("[click](data:text/html;base64,PHNjcmlwdD4=)", id="data-link"),
    pytest.param("[x][1] and [1]: http://attacker.example", id="reference-link"),
    pytest.param("<http://attacker.example>", id="angle-autolink"),
    pytest.param("https://attacker.example/login", id="bare-autolink"),
    pytest.param("<img src=x onerror=alert(1)>", id="raw-html-img"),
    pytest.param("<script>alert(1)</script>", id="raw-html-script"),
    pytest.param("&#x3C;script&#x3E;alert(1)&#x3C;/script&#x3E;", id="html-entities"),
    pytest.param("a | b | c | d", id="pipes-add-columns"),
    pytest.param("x\n\n# Heading\n\n![i](http://attacker.example/i.png)", id="newline-breaks-the-table"),
    pytest.param("`code` **bold** _em_ ~~strike~~", id="inline-markup"),
    pytest.param("\\[x\\](javascript:alert(1))", id="pre-escaped-brackets"),
]


def _unescaped(cell: str) -> str:
    """What Markdown would read as syntax in ``cell``: the text without its backslash escapes."""
    return re.sub(r"\\.", "", cell)


@pytest.mark.hostile("injection")
@pytest.mark.parametrize("payload", MARKDOWN)
def test_markdown_export_leaves_no_link_image_or_html(tmp_path, capsys, payload):
    db = board(tmp_path, entry(payload, architecture=payload, audit_flags=[{"name": payload, "message": payload}],
                               unreliable=True))
    out = tmp_path / "board.md"
    assert run(["leaderboard", "--db", db, "export", "--format", "md", "--out", out], capsys).code == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header and the two entries: the payload started no line of its own
    assert not [line for line in text.splitlines() if line.startswith(("#", "![", "[", "<")) and "Heading" in line]
    for row in rows:
        assert _unescaped(row).count("|") == 9, row  # 8 cells, whatever the payload held
    cells = re.split(r"(?<!\\)\|", next(row for row in rows if "honest" not in row and "rank" not in row))
    for cell in (cells[2], cells[3], cells[8]):  # model, architecture, notes: where the payload went
        for token in ("[", "]", "<", ">", "`", "*", "_", "~", "://"):
            assert token not in _unescaped(cell), (token, cell)
    assert "![t](" not in text and "](javascript:" not in text and "<img" not in text and "<script" not in text


@pytest.mark.hostile("injection")
def test_markdown_escaping_keeps_the_text_readable():
    """Escapes are only backslashes and HTML entities: a renderer shows the name as it was written."""
    name = "Gowal2020 [extra data] (WRN-70-16) | 8/255: <best>"
    md = render([entry(name)], "md")
    cell = next(line for line in md.splitlines() if "Gowal" in line).split(" | ")[1]
    import html

    assert html.unescape(re.sub(r"\\(.)", r"\1", cell)) == name


# ============================================================================== CSV

FORMULAS = [
    pytest.param("=HYPERLINK(\"http://attacker.example\",\"x\")", id="equals"),
    pytest.param("+1+cmd|' /C calc'!A0", id="plus"),
    pytest.param("-2+3", id="minus"),
    pytest.param("@SUM(A1:A2)", id="at"),
    pytest.param("\t=1+1", id="leading-tab"),
    pytest.param("\r=1+1", id="leading-cr"),
    pytest.param("\n=1+1", id="leading-lf"),
    pytest.param(" =1+1", id="space-then-equals"),
    pytest.param("   @SUM(A1)", id="spaces-then-at"),
    pytest.param("\u00a0\u3000+1", id="nbsp-ideographic-space-then-plus"),
    pytest.param("\uff1dcmd|' /C calc'!A0", id="full-width-equals"),
    pytest.param("\uff0b1", id="full-width-plus"),
    pytest.param("\uff0d1", id="full-width-minus"),
    pytest.param("\uff20SUM(A1)", id="full-width-at"),
    pytest.param("\ufe66 1", id="small-equals"),
    pytest.param("\u2212 1", id="minus-sign"),
    pytest.param("\ufeff=1", id="bom-then-equals"),
]


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.hostile("injection")
@pytest.mark.parametrize("formula", FORMULAS)
def test_csv_export_neutralises_every_formula_form(tmp_path, capsys, formula):
    db = board(tmp_path, entry(formula, architecture=formula, dataset="digits", unreliable=True,
                               audit_flags=[{"name": formula, "message": ""}]))
    out = tmp_path / "board.csv"
    assert run(["leaderboard", "--db", db, "export", "--format", "csv", "--out", out], capsys).code == 0
    with open(out, encoding="utf-8", newline="") as handle:
        row = next(r for r in _csv_rows(handle.read()) if r["model"] != "honest neighbour")
    for column in ("model", "architecture", "reasons"):
        assert row[column] == "'" + formula, (column, row[column])


@pytest.mark.hostile("injection")
def test_csv_leaves_harmless_text_and_numbers_alone():
    rows = _csv_rows(render([entry("a=b"), entry(" spaced", robust=accuracy_record(10, 40))], "csv"))
    assert {r["model"] for r in rows} == {"a=b", " spaced"}
    assert all(float(r["accuracy"]) >= 0 and not r["accuracy"].startswith("'") for r in rows)


# ============================================================================== files: modes, failures

@pytest.mark.hostile("injection")
@pytest.mark.parametrize("fmt", FORMATS)
def test_exports_get_the_umasks_mode_not_0600(tmp_path, capsys, fmt):
    db = board(tmp_path)
    old = os.umask(0o022)
    try:
        out = tmp_path / f"board.{fmt}"
        assert run(["leaderboard", "--db", db, "export", "--format", fmt, "--out", out], capsys).code == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.hostile("injection")
def test_a_strict_umask_is_honoured_too(tmp_path, capsys):
    db = board(tmp_path)
    old = os.umask(0o077)
    try:
        done = run(["leaderboard", "--db", db, "export", "--format", "md", "--out", tmp_path / "b.md"], capsys)
    finally:
        os.umask(old)
    assert done.code == 0 and (tmp_path / "b.md").stat().st_mode & 0o777 == 0o600


def _fail(monkeypatch, target: str) -> None:
    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target, boom)


@pytest.mark.hostile("injection")
@pytest.mark.parametrize("failure", ["replace", "fsync", "write"])
@pytest.mark.parametrize("fmt", ["md", "html"])
def test_a_failed_export_leaves_the_earlier_one_and_no_temporary_file(tmp_path, capsys, monkeypatch, failure, fmt):
    db = board(tmp_path)
    folder = tmp_path / "site"
    out = folder / f"board.{fmt}"
    assert run(["leaderboard", "--db", db, "export", "--format", fmt, "--out", out], capsys).code == 0
    Store(db).add(entry("newer entry"))
    before = snapshot(folder)
    if failure == "write":  # the disk fills after 256 bytes of the new file
        real = os.fdopen

        class Full(io.BufferedWriter):
            def write(self, data):
                if self.tell() + len(data) > 256:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(data)

        monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real(fd, "wb", buffering=0)))
    else:
        _fail(monkeypatch, f"os.{failure}")
    outcome = run(["leaderboard", "--db", db, "export", "--format", fmt, "--out", out], capsys)
    monkeypatch.undo()
    assert_refused(outcome, str(out), "no space left")
    assert snapshot(folder) == before  # the earlier export byte-identical, nothing left beside it


@pytest.mark.hostile("injection")
@pytest.mark.parametrize("where", ["out-is-a-folder", "parent-is-a-file"])
def test_an_unwritable_target_is_one_line_and_leaves_nothing(tmp_path, capsys, where):
    db = board(tmp_path)
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    out = folder / "board.md" if where == "out-is-a-folder" else folder / "notes.txt" / "board.md"
    if where == "out-is-a-folder":
        out.mkdir()
    before = snapshot(folder)
    outcome = run(["leaderboard", "--db", db, "export", "--format", "md", "--out", out], capsys)
    assert outcome.code == 2 and outcome.last_line.startswith("robust: error: ") and "board.md" in outcome.last_line
    assert snapshot(folder) == before


@pytest.mark.hostile("injection")
def test_a_killed_writers_temporary_file_is_tidied_and_a_live_ones_kept(tmp_path, capsys):
    db = board(tmp_path)
    out = tmp_path / "board.md"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    killed = tmp_path / f".board.md.{int(dead.stdout)}-0badc0de.tmp"
    older = tmp_path / ".board.md.1a2b3c4d.tmp"  # the name before the writer's pid was in it
    live = tmp_path / f".board.md.{os.getppid()}-feedf00d.tmp"
    unrelated = tmp_path / ".board.md.notes.tmp"
    for path in (killed, older, live, unrelated):
        path.write_bytes(b"x" * 1024)
    assert run(["leaderboard", "--db", db, "export", "--format", "md", "--out", out], capsys).code == 0
    assert not killed.exists() and not older.exists() and live.exists() and unrelated.exists()


@pytest.mark.hostile("injection")
def test_json_export_carries_hostile_text_escaped(tmp_path, capsys):
    evil = "\x1b]0;pwned\x07\u202e</script><script>alert(1)</script>"
    db = board(tmp_path, entry(evil))
    out = tmp_path / "board.json"
    assert run(["leaderboard", "--db", db, "export", "--format", "json", "--out", out], capsys).code == 0
    raw = out.read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw and "\u202e".encode() not in raw
    assert evil in [e["name"] for e in json.loads(raw)["entries"]]  # lossless all the same


def test_plain_keeps_ordinary_text():
    assert plain("Gowal2020 · WRN-70-16 ε = 8/255 (extra data) — 日本語") == \
        "Gowal2020 · WRN-70-16 ε = 8/255 (extra data) — 日本語"
    assert plain(None) == "" and plain("a\tb\r\nc") == "a b c"
