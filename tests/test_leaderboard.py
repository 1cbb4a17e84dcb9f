"""The leaderboard: entries from real reports, RobustBench records, the SQLite (and PostgreSQL)
store under concurrent writers, ranking rules, exports with hostile strings, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import fit_checkpoint

from robust.base.threat import ThreatModel
from robust.cli import main
from robust.leaderboard import EntryError, Store, StoreError, boards, from_report, from_robustbench, to_robustbench
from robust.leaderboard.formats import read_json, render, write
from robust.leaderboard.store import META
from robust.methods import PGD

# A RobustBench model_info record as published (cifar10/Linf/Gowal2020Uncovering_28_10_extra.json)
GOWAL = {
    "link": "https://arxiv.org/abs/2010.03593",
    "name": "Uncovering the Limits of Adversarial Training against Norm-Bounded Adversarial Examples",
    "authors": "Sven Gowal, Chongli Qin, Jonathan Uesato, Timothy Mann, Pushmeet Kohli",
    "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "arXiv, Oct 2020",
    "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.76",
    "autoattack_acc": "59.53", "external": "", "unreliable": False, "footnote": "",
}
POSTGRES_URL = os.environ.get("ROBUST_TEST_POSTGRES_URL")


def record(**changes) -> dict:
    return {**GOWAL, **changes}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "board.db")
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set ROBUST_TEST_POSTGRES_URL (.ci/run starts one on loopback)")
    import sqlalchemy as sa

    url = POSTGRES_URL
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a clean board for each test
        conn.execute(sa.text("DROP TABLE IF EXISTS robust_entries, robust_meta"))
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def reports(tmp_path_factory, digits) -> dict[str, dict]:
    """A real evaluate report and a real certify (IBP) report of a tiny PGD-trained digits model."""
    tmp = tmp_path_factory.mktemp("reports")
    ckpt = fit_checkpoint(PGD(ThreatModel("linf", 0.1), steps=3), digits, tmp / "model.ckpt", epochs=2)
    common = ["--checkpoint", str(ckpt), "--data", "digits", "--n-examples", "60", "--no-progress"]
    assert main(["evaluate", *common, "--attacks", "pgd", "--attack-options", '{"pgd": {"steps": 5}}',
                 "--sweep", "0.05", "--out", str(tmp / "eval")]) == 0
    assert main(["certify", "--method", "ibp", *common, "--eps", "0.02,0.05", "--attack", "none",
                 "--out", str(tmp / "cert")]) == 0
    return {k: json.loads((tmp / k / "report.json").read_text()) for k in ("eval", "cert")} | {
        "paths": {k: tmp / k / "report.json" for k in ("eval", "cert")}}


def test_entry_from_an_evaluation_report_has_everything(reports):
    report = reports["eval"]
    entry = from_report(report, name="tiny PGD")
    assert entry["threat"] == "Linf" and entry["eps"] == 0.1 and entry["dataset"] == "digits"
    assert entry["architecture"] == "CNNSmall" and entry["training"]["method"].startswith("PGD(")
    assert entry["clean"] == report["clean"] and entry["robust"] == report["robust"]
    assert entry["attack_protocol"] == {"name": "pgd", "version": "custom", "n_examples": 60, "seed": 0,
                                        "torchattacks": report["protocol"]["versions"]["torchattacks"]}
    assert entry["checkpoint_sha256"] == report["protocol"]["checkpoint"]["sha256"]
    assert entry["model_sha256"] == report["protocol"]["model_sha256"]
    assert entry["unreliable"] == report["audit"]["unreliable"]
    assert [p["eps"] for p in entry["sweep"]] == [0.05, 0.1]
    assert entry["timestamp"] == report["protocol"]["timestamp"]


def test_entry_from_a_certification_report(reports):
    entry = from_report(reports["cert"], name="tiny PGD, IBP")
    assert entry["robust"] is None and [c["radius"] for c in entry["certified"]] == [0.02, 0.05]
    assert entry["certified"][0]["correct"] == reports["cert"]["sweep"][0]["certified"]["correct"]
    assert all(c["method"] == "ibp" and c["norm"] == "Linf" for c in entry["certified"])


def test_round_trip_report_entry_store_export_import_is_lossless(reports, store_url, tmp_path):
    store = Store(store_url)
    entries = [from_report(reports["eval"], name="a"), from_report(reports["cert"], name="b"),
               from_robustbench(GOWAL, "Linf")]
    ids = [store.add(e)[0] for e in entries]
    stored = store.entries()
    assert [e["id"] for e in stored] == ids
    assert [{k: v for k, v in e.items() if k != "id"} for e in stored] == entries
    path = write(stored, "json", tmp_path / "board.json")
    second = Store(tmp_path / "second.db")
    second.add_many(read_json(path))
    again = second.entries()
    assert [{k: v for k, v in e.items() if k != "id"} for e in again] == entries
    assert store.add(entries[0]) == (ids[0], False)  # the same measurement is not added twice
    assert len(store) == 3


def test_robustbench_record_imports_ranks_and_exports_back():
    entry = from_robustbench(GOWAL, "Linf")
    assert entry["clean"]["accuracy"] == pytest.approx(0.8969) and entry["robust"]["accuracy"] == pytest.approx(0.5953)
    assert entry["eps"] == pytest.approx(8 / 255) and entry["attack_protocol"]["n_examples"] == 10_000
    assert to_robustbench(entry) == GOWAL
    others = [
        from_robustbench(record(name="close", autoattack_acc="59.80"), "Linf"),  # within the interval: tied
        from_robustbench(record(name="weaker", autoattack_acc="55.00"), "Linf"),
        from_robustbench(record(name="external", autoattack_acc="65.00", external="50.00"), "Linf"),
        from_robustbench(record(name="masked", autoattack_acc="80.00", unreliable=True), "Linf"),
        from_robustbench(record(name="other eps", eps="4/255", autoattack_acc="70.00"), "Linf"),
    ]
    (board, small_eps) = sorted(boards([entry, *others]), key=lambda b: -len(b["rows"]))
    names = [r["name"] for r in board["rows"]]
    assert names == ["close", GOWAL["name"], "weaker", "external", "masked"]
    ranks = [(r["rank"], r["tied"]) for r in board["rows"]]
    assert ranks == [(1, False), (1, True), (3, False), (4, False), (None, False)]
    assert board["rows"][3]["value"] == pytest.approx(0.5) and board["rows"][3]["external"]
    assert [r["name"] for r in small_eps["rows"]] == ["other eps"]  # another protocol, another board


def test_different_protocols_are_never_ranked_together(reports):
    ours = from_report(reports["eval"], name="ours")
    theirs = from_robustbench(record(dataset="digits", eps="0.1", autoattack_acc="10.00"), "Linf", n_examples=300)
    result = boards([ours, theirs])
    assert len(result) == 2 and all(len(b["rows"]) == 1 and b["rows"][0]["rank"] == 1 for b in result)
    assert {b["protocol"]["n_examples"] for b in result} == {60, 300}


@pytest.mark.parametrize(("change", "field"), [
    ({"clean_acc": "eighty"}, "clean_acc"), ({"clean_acc": "120"}, "clean_acc"), ({"eps": "a lot"}, "eps"),
    ({"autoattack_acc": None}, "autoattack_acc"), ({"unreliable": "no"}, "unreliable"), ({"colour": 1}, "colour"),
    ({"dataset": ""}, "dataset"),
])
def test_bad_robustbench_records_name_the_field(change, field):
    with pytest.raises(EntryError, match=field):
        from_robustbench(record(**change), "Linf")


def test_concurrent_writers_lose_and_duplicate_nothing(store_url, tmp_path):
    """8 processes add 50 entries each at the same moment: exactly 400 entries, all distinct."""
    Store(store_url).close()  # schema created before the race, as a first user would
    script = textwrap.dedent(f"""
        import sys
        from robust.leaderboard import Store, from_robustbench
        rec = {GOWAL!r}
        store = Store(sys.argv[1])
        worker = int(sys.argv[2])
        for i in range(50):
            store.add(from_robustbench({{**rec, "name": f"w{{worker}}-{{i}}"}}, "Linf"))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, store_url, str(w)], env=env, stderr=subprocess.PIPE)
             for w in range(8)]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    entries = Store(store_url).entries()
    assert len(entries) == 400 and len({e["name"] for e in entries}) == 400


def test_newer_schema_is_refused(tmp_path):
    import sqlalchemy as sa

    store = Store(tmp_path / "board.db")
    with store.engine.begin() as conn:
        conn.execute(META.update().where(META.c.key == "schema_version").values(value="99"))
    store.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        Store(tmp_path / "board.db")
    assert sa  # imported for the engine above


def test_markdown_and_csv_escape_hostile_strings():
    hostile = from_robustbench(record(name="<script>alert(1)</script>|x", architecture="=HYPERLINK(\"x\")"), "Linf")
    md = render([hostile], "md")
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;\\|x" in md
    csv_text = render([hostile], "csv")
    assert "'=HYPERLINK" in csv_text


def test_cli_add_show_export(reports, tmp_path, capsys):
    db = str(tmp_path / "board.db")
    rb = tmp_path / "model_info" / "cifar10" / "Linf" / "Gowal2020Uncovering_28_10_extra.json"
    rb.parent.mkdir(parents=True)
    rb.write_text(json.dumps(GOWAL))
    assert main(["leaderboard", "--db", db, "add", str(reports["paths"]["eval"]), str(rb), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("added:") == 2 and "2 entries" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(record(clean_acc="high")))
    assert main(["leaderboard", "--db", db, "add", str(reports["paths"]["cert"]), str(bad), "--threat", "Linf"]) == 2
    assert "clean_acc" in capsys.readouterr().err and len(Store(db)) == 2  # refused whole: nothing added
    assert main(["leaderboard", "--db", db, "show"]) == 0
    shown = capsys.readouterr().out
    assert "cifar10 · Linf ε = 8/255 · autoattack (standard) · n = 10000" in shown and "59.53%" in shown
    for fmt in ("md", "csv", "json", "html"):
        assert main(["leaderboard", "--db", db, "export", "--format", fmt, "--out", str(tmp_path / f"b.{fmt}")]) == 0
        assert (tmp_path / f"b.{fmt}").stat().st_size > 200
    assert main(["leaderboard", "--db", db, "add", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
