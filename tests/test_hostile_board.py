"""Hostile-input corpus: leaderboard entries with wrong numbers ("numbers") and boards that one bad
row, a foreign table or an unrelated database would break ("board").

Every refused entry leaves the database byte-identical; every bad stored row is reported by id
on stderr and skipped while ``show`` and all four exports keep working for the rest; a SQLite
file robust did not create is refused before anything writes to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import warnings
from pathlib import Path

import pytest
from hostile import assert_refused, run, snapshot

from robust.base.stats import accuracy_record
from robust.leaderboard import EntryError, Store, StoreError, from_report, from_robustbench, validate
from robust.leaderboard.store import APPLICATION_ID, SkippedEntryWarning

LEGACY_DB = Path(__file__).resolve().parent / "data" / "legacy" / "leaderboard.db"
POSTGRES_URL = os.environ.get("ROBUST_TEST_POSTGRES_URL")
FORMATS = ("md", "csv", "json", "html")

# A RobustBench model_info record as published, with an honest 3.12% (RobustBench keeps percentages as text).
RECORD = {"name": "Weak", "dataset": "cifar10", "architecture": "WideResNet-28-10", "eps": "8/255",
          "clean_acc": "89.69", "autoattack_acc": "3.12", "external": "", "unreliable": False, "link": "",
          "footnote": ""}


def entry(**changes) -> dict:
    """A valid entry (robust 25/40, clean 27/40 at 8/255 L-inf, PGD) with ``changes`` applied."""
    fields = {"name": "honest", "architecture": "CNNSmall", "dataset": "digits", "threat": "Linf",
              "eps": 8 / 255, "eps_str": "8/255", "clean": accuracy_record(27, 40), "robust": accuracy_record(25, 40),
              "attack_protocol": {"name": "pgd", "version": "custom", "n_examples": 40},
              "sweep": [{"eps": 4 / 255, "accuracy": 0.65}, {"eps": 8 / 255, "accuracy": 0.625}],
              "timestamp": "2025-01-01T00:00:00+00:00"}
    fields.update(changes)
    return fields


def certified_entry(**changes) -> dict:
    fields = {"name": "certified", "dataset": "digits", "threat": "L2", "eps": 0.5, "clean": accuracy_record(30, 40),
              "certified": [{"method": "smoothing", "norm": "L2", "radius": 0.25, **accuracy_record(20, 40)}],
              "certified_curve": [{"radius": 0.0, "accuracy": 0.75}, {"radius": 0.25, "accuracy": 0.5}],
              "timestamp": "2025-01-01T00:00:00+00:00"}
    fields.update(changes)
    return fields


def report(robust_counts: tuple[int, int] = (1, 32), **changes) -> dict:
    """A ``robust evaluate`` report.json of the shape the command writes (clean 28/32; robust 1/32 = 3.12%)."""
    robust = accuracy_record(*robust_counts)
    fields = {"kind": "evaluation", "name": "cnn", "threat": {"norm": "linf", "eps": 8 / 255, "eps_str": "8/255"},
              "clean": accuracy_record(28, 32), "robust": robust, "n_examples": robust_counts[1],
              "per_attack": {"pgd": {"robust": robust}}, "audit": {"unreliable": False, "flags": []},
              "protocol": {"dataset": "digits", "seed": 0, "model": {"architecture": "CNNSmall"}}, "sweep": None}
    fields.update(changes)
    return fields


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def board(tmp_path) -> Path:
    """A SQLite board with one good entry on it."""
    db = tmp_path / "board.db"
    store = Store(db)
    store.add(entry())
    store.close()
    return db


# ====================================================================== numbers: entries validated whole on add


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize(("changes", "field"), [
    pytest.param({"clean_acc": True}, "clean_acc", id="clean_acc-true-not-1-percent"),
    pytest.param({"autoattack_acc": False}, "autoattack_acc", id="autoattack_acc-false"),
    pytest.param({"autoattack_acc": "95.00"}, "autoattack_acc", id="robust-above-clean"),
    pytest.param({"external": "99"}, "external", id="external-above-autoattack"),
    pytest.param({"clean_acc": "NaN"}, "clean_acc", id="clean_acc-nan"),
    pytest.param({"autoattack_acc": "inf"}, "autoattack_acc", id="autoattack_acc-inf"),
    pytest.param({"eps": "8"}, "eps", id="linf-eps-8-not-8/255"),
    pytest.param({"clean_acc": [89.69]}, "clean_acc", id="clean_acc-list"),
])
def test_robustbench_record_with_wrong_numbers_is_refused_and_the_board_unchanged(board, tmp_path, capsys,
                                                                                  changes, field):
    record = write_json(tmp_path / "model_info" / "cifar10" / "Linf" / "m.json", {**RECORD, **changes})
    before = snapshot(tmp_path)
    assert_refused(run(["leaderboard", "--db", board, "add", record], capsys), field)
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize("source", ["report", "robustbench"])
def test_external_above_the_protocols_robust_number_is_refused(tmp_path, capsys, source):
    """``--external 0.99`` against an honest 3.12% would rank at 99%; it is documented as a lower number."""
    if source == "report":
        path = write_json(tmp_path / "eval" / "report.json", report())
    else:
        path = write_json(tmp_path / "model_info" / "cifar10" / "Linf" / "weak.json", RECORD)
    db = tmp_path / "board.db"
    outcome = run(["leaderboard", "--db", db, "add", path, "--external", "0.99"], capsys)
    assert_refused(outcome, "external", "0.99")
    assert not db.exists()  # refused before the store was even opened
    assert run(["leaderboard", "--db", db, "add", path, "--external", "0.02"], capsys).code == 0
    shown = run(["leaderboard", "--db", db, "show"], capsys).out
    assert "2.00%" in shown and "99.00%" not in shown


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize(("changes", "field"), [
    pytest.param({"robust": accuracy_record(30, 32)}, "robust.accuracy", id="robust-above-clean"),
    pytest.param({"robust": {"accuracy": 0.5, "correct": 40, "n": 32}}, "correct 40 exceeds n 32",
                 id="correct-above-n"),
    pytest.param({"clean": {"accuracy": True, "correct": 28, "n": 32}}, "clean.accuracy", id="clean-true"),
    pytest.param({"clean": {**accuracy_record(28, 32), "ci95": [0.8]}}, "clean.ci95", id="one-value-ci95"),
    pytest.param({"robust": {"accuracy": 0.99, "correct": 1, "n": 32}}, "correct/n", id="accuracy-not-correct/n"),
])
def test_report_with_inconsistent_numbers_is_refused(board, tmp_path, capsys, changes, field):
    path = write_json(tmp_path / "eval" / "report.json", report(**changes))
    before = snapshot(board.parent)
    assert_refused(run(["leaderboard", "--db", board, "add", path], capsys), field)
    assert snapshot(board.parent) == before


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize(("changes", "field"), [
    pytest.param({"clean": {"accuracy": 1, "correct": 40.0, "n": 40}}, "clean.correct", id="float-count"),
    pytest.param({"robust": {"accuracy": 59.53, "n": 40}}, "robust.accuracy", id="percent-in-a-fraction-field"),
    pytest.param({"robust": {**accuracy_record(25, 40), "ci95": [0.7, 0.5]}}, "robust.ci95", id="ci95-reversed"),
    pytest.param({"robust": {**accuracy_record(25, 40), "ci95": [0.1, 0.2]}}, "does not contain",
                 id="ci95-misses-the-value"),
    pytest.param({"robust": {**accuracy_record(25, 40), "ci95": [0.5, 0.7, 0.9]}}, "robust.ci95", id="ci95-3-values"),
    pytest.param({"robust": {**accuracy_record(25, 40), "ci95": ["0.5", 0.7]}}, "robust.ci95[0]", id="ci95-text"),
    pytest.param({"external": True}, "external", id="external-true"),
    pytest.param({"external": 0.9}, "external", id="external-above-robust"),
    pytest.param({"robust": None, "external": 0.1, "certified": [{"method": "ibp", "radius": 0.01,
                                                                  **accuracy_record(1, 40)}]},
                 "external", id="external-without-robust"),
    pytest.param({"robust": accuracy_record(25, 50)}, "robust.n", id="robust-n-not-n_examples"),
    pytest.param({"eps": 8.0}, "eps", id="linf-eps-above-1"),
    pytest.param({"eps": float("nan")}, "eps", id="eps-nan"),
    pytest.param({"sweep": [{"eps": "a lot", "accuracy": 0.5}]}, "sweep[0].eps", id="sweep-eps-text"),
    pytest.param({"sweep": [{"eps": 0.1, "accuracy": 1.5}]}, "sweep[0].accuracy", id="sweep-accuracy-above-1"),
    pytest.param({"sweep": [{"eps": 0.01, "accuracy": 0.9}]}, "sweep[0].accuracy", id="sweep-above-clean"),
    pytest.param({"sweep": "[{\"eps\": 0.1}]"}, "sweep", id="sweep-as-text"),
    pytest.param({"sweep": [{"eps": 0.1}]}, "sweep[0]", id="sweep-point-without-accuracy"),
    pytest.param({"certified": [{"method": "ibp", "radius": "x", **accuracy_record(1, 40)}]},
                 "certified[0].radius", id="radius-text"),
    pytest.param({"certified": [{"method": "ibp", "radius": -0.1, **accuracy_record(1, 40)}]},
                 "certified[0].radius", id="radius-negative"),
    pytest.param({"certified": [{"method": "ibp", "radius": 0.1, **accuracy_record(39, 40)}]},
                 "certified[0].accuracy", id="certified-above-clean"),
    pytest.param({"certified_curve": [{"radius": float("inf"), "accuracy": 0.1}]}, "certified_curve[0].radius",
                 id="curve-radius-inf"),
    pytest.param({"attack_protocol": {"name": "pgd", "version": ["x"], "n_examples": 40}},
                 "attack_protocol.version", id="protocol-version-list"),
    pytest.param({"training": {"lr": float("nan")}}, "training", id="nan-in-a-free-form-field"),
])
def test_python_store_add_validates_the_entry_whole(board, changes, field):
    before = snapshot(board.parent)
    store = Store(board)
    with pytest.raises(EntryError) as err:
        store.add(entry(**changes))
    store.close()
    assert field.lower() in str(err.value).lower() and "\n" not in str(err.value)
    assert snapshot(board.parent) == before


@pytest.mark.hostile("numbers")
def test_n_examples_option_must_be_a_count(tmp_path, capsys):
    """``--n-examples 0`` used to fall back silently to the full test set."""
    record = write_json(tmp_path / "m.json", {**RECORD, "autoattack_acc": "59.53"})
    for bad in ("0", "-5"):
        assert_refused(run(["leaderboard", "--db", tmp_path / "b.db", "add", record, "--threat", "Linf",
                            "--n-examples", bad], capsys), "n_examples")
    assert not (tmp_path / "b.db").exists()


@pytest.mark.hostile("numbers")
def test_the_honest_entries_still_add_and_the_checks_accept_every_edge():
    """Edges that are right: robust == clean, external == robust, correct == n, 0 of 0, an L2 radius above 1."""
    validate(entry(robust={**accuracy_record(27, 40)}, clean=accuracy_record(27, 40), external=27 / 40))
    validate(entry(clean=accuracy_record(40, 40), robust=accuracy_record(40, 40)))
    validate(certified_entry(certified=[{"method": "smoothing", "norm": "L2", "radius": 3.0,
                                         **accuracy_record(0, 40)}]))
    assert from_robustbench({**RECORD, "external": "3.12"}, "Linf")["external"] == pytest.approx(0.0312)
    made = from_report(report((28, 32)))
    assert made["robust"]["accuracy"] == made["clean"]["accuracy"] == 28 / 32


# ====================================================================== board: one bad row never breaks it


def _insert_raw(db: Path, entry_id: str, data: str, dataset: str = "digits") -> None:
    """A row as an older version or a hand edit leaves it: straight into the table, no validation."""
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO robust_entries (id, fingerprint, name, dataset, threat, eps, source, created, data) "
                 "VALUES (?, ?, 'x', ?, 'Linf', 0.03, 'robust', 1e12, ?)", (entry_id, "fp-" + entry_id, dataset, data))
    conn.commit()
    conn.close()


def _bad(**changes) -> str:
    return json.dumps({k: v for k, v in entry(name="BAD-ROW", **changes).items()})


BAD_ROWS = [
    pytest.param(_bad(clean={"accuracy": 0.675, "correct": 27, "n": 40, "ci95": [0.5]}), id="one-value-ci95"),
    pytest.param(_bad(robust={"accuracy": 0.625, "correct": 45, "n": 40}), id="correct-above-n"),
    pytest.param(_bad(sweep="[{eps: 0.1"), id="sweep-malformed-json-text"),
    pytest.param(_bad(sweep=[{"eps": None, "accuracy": "x"}]), id="sweep-point-null"),
    pytest.param(_bad(certified=[{"method": "ibp", "radius": "0.1; DROP", "accuracy": 0.1}]), id="radius-text"),
    pytest.param(_bad(certified_curve=[{"radius": 0.1}]), id="curve-point-without-accuracy"),
    pytest.param(_bad(robust={"accuracy": 0.99, "n": 40}), id="robust-above-clean"),
    pytest.param(_bad(external=0.99), id="external-above-robust"),
    pytest.param(_bad().replace('"accuracy": 0.625', '"accuracy": NaN'), id="nan-accuracy"),
    pytest.param(_bad(attack_protocol={"name": "pgd", "version": {"v": 1}, "n_examples": 40}),
                 id="unhashable-protocol"),
    pytest.param('{"name": "BAD-ROW", "clean": ', id="data-not-json"),
    pytest.param('["BAD-ROW"]', id="data-a-list"),
    pytest.param(_bad()[:-1] + ', "colour": "red"}', id="unknown-field"),
]


@pytest.mark.hostile("board")
@pytest.mark.parametrize("data", BAD_ROWS)
def test_a_bad_stored_row_is_reported_by_id_and_skipped(board, tmp_path, capsys, data):
    _insert_raw(board, "badrow0001", data)
    shown = run(["leaderboard", "--db", board, "show"], capsys)
    assert shown.code == 0 and "honest" in shown.out and "BAD-ROW" not in shown.out
    warnings_ = [line for line in shown.err.splitlines() if line.strip()]
    assert len(warnings_) == 1 and warnings_[0].startswith("robust: warning: ") and "badrow0001" in warnings_[0]
    for fmt in FORMATS:
        out = tmp_path / f"board.{fmt}"
        done = run(["leaderboard", "--db", board, "export", "--format", fmt, "--out", out], capsys)
        assert done.code == 0 and "badrow0001" in done.err, done.err
        text = out.read_text()
        assert "honest" in text and "BAD-ROW" not in text


ONE_BAD_ENTRY = [
    pytest.param({"clean": {"accuracy": 0.675, "correct": 27, "n": 40, "ci95": [0.5]}}, "clean.ci95",
                 id="one-value-ci95"),
    pytest.param({"robust": {"accuracy": 0.625, "correct": 45, "n": 40}}, "exceeds n", id="correct-above-n"),
    pytest.param({"sweep": [{"eps": [0.1], "accuracy": 0.5}]}, "sweep[0].eps", id="malformed-sweep"),
    pytest.param({"certified": [{"method": "ibp", "radius": {"r": 1}, "accuracy": 0.1}]}, "certified[0].radius",
                 id="malformed-radius"),
]


@pytest.mark.hostile("board")
@pytest.mark.parametrize(("changes", "field"), ONE_BAD_ENTRY)
@pytest.mark.parametrize("way", ["python-add", "python-add_many", "cli-add-export-json"])
def test_the_entry_that_broke_a_board_is_refused_on_add(board, tmp_path, capsys, changes, field, way):
    """The whole batch is refused and the board stays byte-identical and whole."""
    batch = [entry(name="fine"), entry(name="breaks it", **changes)]
    before = snapshot(board.parent)
    if way == "cli-add-export-json":
        export = write_json(tmp_path / "import" / "board.json", {"format": "robust-leaderboard", "entries": batch})
        before = snapshot(board.parent)
        assert_refused(run(["leaderboard", "--db", board, "add", export], capsys), "entries[1]", field)
    else:
        store = Store(board)
        with pytest.raises(EntryError, match=re.escape(field)):
            store.add_many(batch) if way == "python-add_many" else store.add(batch[1])
        store.close()
    assert snapshot(board.parent) == before
    assert run(["leaderboard", "--db", board, "show"], capsys).err == ""


@pytest.mark.hostile("board")
def test_python_entries_warn_once_per_bad_row_and_get_names_it(board):
    _insert_raw(board, "badrow0002", BAD_ROWS[0].values[0])
    _insert_raw(board, "badrow0003", BAD_ROWS[1].values[0])
    store = Store(board)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [e["name"] for e in store.entries()]
    assert names == ["honest"]
    assert sorted(str(w.message).split()[3] for w in caught if w.category is SkippedEntryWarning) == \
        ["badrow0002", "badrow0003"]
    with pytest.raises(EntryError, match="badrow0002.*ci95"):
        store.get("badrow0002")
    seen: list[str] = []
    assert len(store.entries(warn=seen.append)) == 1 and len(seen) == 2
    store.close()


@pytest.mark.hostile("board")
def test_a_bad_row_does_not_hide_the_good_rows_of_a_filtered_board(board, capsys):
    _insert_raw(board, "badrow0004", BAD_ROWS[0].values[0], dataset="cifar10")
    store = Store(board)
    store.add(entry(name="second", dataset="cifar10"))
    store.close()
    shown = run(["leaderboard", "--db", board, "show", "--dataset", "cifar10"], capsys)
    assert shown.code == 0 and "second" in shown.out and "honest" not in shown.out and "badrow0004" in shown.err


def _foreign(db: Path, *statements: str, wal: bool = False, pragmas: tuple[str, ...] = ()) -> Path:
    conn = sqlite3.connect(db)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    for pragma in pragmas:
        conn.execute(pragma)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return db


FOREIGN = [
    pytest.param(("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)", "INSERT INTO notes VALUES (1, 'mine')"),
                 {}, "did not create", id="unrelated-tables"),
    pytest.param(("CREATE TABLE notes (x)",), {"wal": True}, "did not create", id="unrelated-wal-mode"),
    pytest.param(("CREATE TABLE robust_entries (x INTEGER)",), {}, "did not create", id="only-robust_entries-foreign"),
    pytest.param(("CREATE TABLE robust_meta (key TEXT, value TEXT)", "CREATE TABLE robust_entries (x INTEGER)",
                  "CREATE TABLE notes (y)"), {}, "did not create", id="our-names-plus-another-table"),
    pytest.param((), {"pragmas": ("PRAGMA user_version = 7",)}, "user_version 7", id="empty-with-user_version"),
    pytest.param(("CREATE TABLE t (x)",), {"pragmas": ("PRAGMA application_id = 1234",)}, "another application",
                 id="another-application_id"),
]


@pytest.mark.hostile("board")
@pytest.mark.parametrize(("statements", "options", "message"), FOREIGN)
@pytest.mark.parametrize("action", ["show", "add", "export"])
def test_an_unrelated_sqlite_file_is_refused_byte_identical(tmp_path, capsys, statements, options, message, action):
    db = _foreign(tmp_path / "theirs.db", *statements, **options)
    record = write_json(tmp_path / "in" / "Linf" / "m.json", {**RECORD, "autoattack_acc": "59.53"})
    before = snapshot(tmp_path)
    argv = {"show": ["show"], "add": ["add", record], "export": ["export", "--out", tmp_path / "b.md", "--format",
                                                               "md"]}[action]
    assert_refused(run(["leaderboard", "--db", db, *argv], capsys), str(db), message)
    assert snapshot(tmp_path) == before  # the file, and no -wal/-shm or export beside it


@pytest.mark.hostile("board")
@pytest.mark.parametrize("content", [b"hello, not a database\n", b"SQLite format 3\x00short"], ids=["text", "short"])
def test_a_file_that_is_not_a_database_is_refused(tmp_path, capsys, content):
    db = tmp_path / "notes.db"
    db.write_bytes(content)
    before = snapshot(tmp_path)
    assert_refused(run(["leaderboard", "--db", db, "show"], capsys), "not a SQLite database")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("board")
@pytest.mark.parametrize("table", ["robust_entries", "robust_meta"])
def test_a_foreign_table_of_our_name_is_one_line_not_a_traceback(tmp_path, capsys, table):
    """A board of ours whose table was replaced by one with other columns (same name)."""
    db = tmp_path / "board.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"CREATE TABLE {table} (k TEXT, v BLOB)")
    conn.commit()
    conn.close()
    for argv in (["show"], ["export", "--format", "csv", "--out", tmp_path / "b.csv"]):
        assert_refused(run(["leaderboard", "--db", db, *argv], capsys), table, "columns")
    assert not (tmp_path / "b.csv").exists()
    with pytest.raises(StoreError, match=table):
        Store(db)


@pytest.mark.hostile("board")
def test_our_boards_are_marked_and_the_legacy_board_is_accepted_and_ranks_the_same(tmp_path, capsys):
    new = tmp_path / "new.db"
    Store(new).close()
    conn = sqlite3.connect(new)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()
    legacy = tmp_path / "legacy.db"
    shutil.copyfile(LEGACY_DB, legacy)  # made before the mark: recognised by its tables
    first = run(["leaderboard", "--db", legacy, "show"], capsys)
    assert first.code == 0 and first.err == "" and "legacy PGD CNN-small" in first.out
    again = run(["leaderboard", "--db", legacy, "show"], capsys)
    assert again.out == first.out
    empty = tmp_path / "empty.db"
    empty.touch()  # an empty file holds nothing to protect
    assert run(["leaderboard", "--db", empty, "show"], capsys).code == 0


@pytest.mark.hostile("board")
def test_the_sqlite_url_form_is_checked_too(tmp_path):
    db = _foreign(tmp_path / "theirs.db", "CREATE TABLE notes (x)")
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="did not create"):
        Store(f"sqlite:///{db}")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("board")
def test_every_export_of_a_board_with_hostile_but_valid_entries_works(tmp_path, capsys):
    """Extremes that are valid (0/0, 0%, 100%, huge n, no counts, certified only) rank and export."""
    db = tmp_path / "board.db"
    store = Store(db)
    store.add(entry(name="zero", robust=accuracy_record(0, 40), sweep=[]))
    store.add(entry(name="perfect", clean=accuracy_record(40, 40), robust=accuracy_record(40, 40), sweep=[]))
    store.add(entry(name="no counts", clean={"accuracy": 0.9}, robust={"accuracy": 0.5}, sweep=[]))
    store.add(certified_entry())
    store.close()
    assert run(["leaderboard", "--db", db, "show"], capsys).code == 0
    for fmt in FORMATS:
        done = run(["leaderboard", "--db", db, "export", "--format", fmt, "--out", tmp_path / f"b.{fmt}"], capsys)
        assert done.code == 0 and done.err == ""
    assert len(json.loads((tmp_path / "b.json").read_text())["entries"]) == 4


WEIRD = [None, True, False, -1, 0, 1, 2, 0.5, 1.5, -0.0, float("nan"), float("inf"), 10**20, "", "x", "8/255",
         "0.5", [], [0.5], [0.4, 0.6], [0.6, 0.4], [0.1, 0.2, 0.3], {}, {"accuracy": 0.5}, {"eps": 0.1}, ["x"]]
PATHS = [("name",), ("dataset",), ("threat",), ("eps",), ("eps_str",), ("clean",), ("clean", "accuracy"),
         ("clean", "correct"), ("clean", "n"), ("clean", "ci95"), ("robust",), ("robust", "accuracy"),
         ("robust", "correct"), ("robust", "n"), ("robust", "ci95"), ("attack_protocol",),
         ("attack_protocol", "name"), ("attack_protocol", "version"), ("attack_protocol", "n_examples"),
         ("external",), ("certified",), ("unreliable",), ("audit_flags",), ("sweep",), ("sweep", 0),
         ("sweep", 0, "eps"), ("sweep", 0, "accuracy"), ("certified_curve",), ("training",), ("source",)]


def _holds(container, key) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and len(container) > key


@pytest.mark.hostile("board")
def test_whatever_validate_accepts_ranks_shows_and_exports(capsys):
    """Property: an entry either is refused with an EntryError, or every board, ``show`` and all four
    exports handle it (one or two fields of a valid entry replaced by odd values, derandomized)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from robust.cli.leaderboard import _print_boards
    from robust.leaderboard import boards
    from robust.leaderboard.formats import render

    base = entry(certified=[{"method": "ibp", "norm": "Linf", "radius": 0.01, **accuracy_record(10, 40)}],
                 certified_curve=[{"radius": 0.01, "accuracy": 0.25}])
    change = st.tuples(st.sampled_from(PATHS), st.sampled_from(WEIRD))

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(changes=st.lists(change, min_size=1, max_size=2))
    def check(changes):
        candidate = json.loads(json.dumps(base))
        for path, value in changes:  # a path that the first change made unreachable is skipped
            target = candidate
            for key in path[:-1]:
                if not _holds(target, key):
                    break
                target = target[key]
            else:
                if isinstance(target, dict) or _holds(target, path[-1]):
                    target[path[-1]] = value
        try:
            valid = validate(candidate)
        except EntryError as err:
            assert "\n" not in str(err)
            return
        entries = [valid, validate(base)]
        assert boards(entries)
        for fmt in FORMATS:
            assert render(entries, fmt)
        _print_boards(entries)
        capsys.readouterr()

    check()


# ---------------------------------------------------------------------------------- PostgreSQL (shared)


@pytest.fixture
def postgres():
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set ROBUST_TEST_POSTGRES_URL (.ci/run starts one on loopback)")
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS robust_entries, robust_meta, hostile_other_app"))
    yield engine
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS robust_entries, robust_meta, hostile_other_app"))
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.hostile("board")
def test_a_shared_postgres_database_with_other_tables_stays_usable(postgres, capsys):
    import sqlalchemy as sa

    with postgres.begin() as conn:
        conn.execute(sa.text("CREATE TABLE hostile_other_app (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO hostile_other_app VALUES (7)"))
    store = Store(POSTGRES_URL)
    store.add(entry())
    store.close()
    shown = run(["leaderboard", "--db", POSTGRES_URL, "show"], capsys)
    assert shown.code == 0 and "honest" in shown.out
    with postgres.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM hostile_other_app")).scalar() == 7


@pytest.mark.postgres
@pytest.mark.hostile("board")
def test_a_foreign_robust_entries_table_on_postgres_is_refused_without_creating_ours(postgres, capsys):
    import sqlalchemy as sa

    with postgres.begin() as conn:
        conn.execute(sa.text("CREATE TABLE robust_entries (k TEXT)"))
    assert_refused(run(["leaderboard", "--db", POSTGRES_URL, "show"], capsys), "robust_entries", "columns")
    assert not sa.inspect(postgres).has_table("robust_meta")


def test_corpus_helpers_build_valid_entries():
    """The corpus's base entries are themselves valid (so each refusal above is the change's doing)."""
    assert validate(entry())["robust"]["accuracy"] == 25 / 40
    assert validate(certified_entry())["certified"][0]["radius"] == 0.25
    assert math.isclose(from_report(report())["robust"]["accuracy"], 1 / 32)
