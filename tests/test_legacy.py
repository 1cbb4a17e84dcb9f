"""Files written before the package layout of issue 13 still load, measure and rank the same.

``tests/data/legacy/`` was made by ``make_fixtures.py`` with the code of that time: a PGD-trained
CNN-small checkpoint whose hyperparameters name the old class path ``robust.threat.ThreatModel``,
a leaderboard database holding an evaluation, a certification and four RobustBench entries, and
``expected.json`` with what that code gave (logits on the first 16 digits test images, the ranked
boards). The fixtures are read only: the database is copied before anything opens it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
CHECKPOINT = LEGACY / "pgd_cnn_small_digits.ckpt"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((LEGACY / "expected.json").read_text())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    copy = tmp_path / "leaderboard.db"
    shutil.copyfile(LEGACY / "leaderboard.db", copy)
    return copy


def _entry(expected: dict, name: str) -> dict:
    return next(r["entry"] for board in expected["boards"] for r in board["rows"] if r["name"] == name)


def test_old_checkpoint_loads_and_gives_the_stored_logits(expected, digits):
    from robust.base.threat import ThreatModel
    from robust.methods import PGD
    from robust.module import RobustClassifier

    raw = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert raw["eval_threat"]["class_path"] == "robust.threat.ThreatModel"  # the class path of before the move
    assert raw == expected["hyper_parameters"]
    module = RobustClassifier.load_from_checkpoint(CHECKPOINT, map_location="cpu")
    assert module.eval_threat == ThreatModel("linf", "8/255")
    assert isinstance(module.method, PGD) and module.method.steps == 3 and module.method.threat == module.eval_threat
    x, y = digits.test_tensors()
    assert y[:16].tolist() == expected["labels_first16"]
    with torch.no_grad():
        logits = module.model.eval()(x[:16])
    torch.testing.assert_close(logits, torch.tensor(expected["logits_first16"]), rtol=0, atol=1e-6)


def test_old_checkpoint_is_measured_by_robust_evaluate_as_before(expected, tmp_path):
    # The command the fixtures were made with gives the counts the old code stored in the board.
    from robust.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(CHECKPOINT), "--data", "digits", "--n-examples", "40",
                 "--no-progress", "--attacks", "pgd", "--attack-options", '{"pgd": {"steps": 5}}', "--no-audit",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    before = _entry(expected, "legacy PGD CNN-small")
    assert report["threat"]["norm"] == "linf" and report["threat"]["eps_str"] == "8/255"
    assert (report["clean"]["correct"], report["robust"]["correct"], report["n_examples"]) == \
        (before["clean"]["correct"], before["robust"]["correct"], 40)
    assert report["protocol"]["checkpoint"]["sha256"] == before["checkpoint_sha256"]
    assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest() == before["checkpoint_sha256"]  # fixture untouched


def test_old_leaderboard_ranks_identically(expected, db):
    from robust.leaderboard import Store, boards

    ranked = json.loads(json.dumps(boards(Store(str(db)).entries()), default=str))

    def summary(bs: list[dict]) -> list:
        return [(b["kind"], b["protocol"], [(r["name"], r["rank"], r["tied"], r["value"]) for r in b["rows"]])
                for b in bs]

    assert summary(ranked) == summary(expected["boards"])  # names, order, ranks, tie markers, values
    assert ranked == expected["boards"]  # and every other field, entries included


def test_old_leaderboard_shows_from_the_command_line(expected, db):
    # `--db` belongs to `robust leaderboard` itself, before the action.
    done = subprocess.run([sys.executable, "-m", "robust.cli", "leaderboard", "--db", str(db), "show"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    names = [r["name"] for b in expected["boards"] for r in b["rows"]]
    where = [done.stdout.find(name) for name in names]
    assert -1 not in where, done.stdout
    for board in expected["boards"]:  # each board's rows print in rank order
        rows = [done.stdout.find(r["name"]) for r in board["rows"]]
        assert rows == sorted(rows), done.stdout


def test_class_paths_of_the_old_layout_still_build():
    """Specs stored before the move name modules that moved; they rebuild to the same classes."""
    from robust.base.spec import build
    from robust.base.threat import ThreatModel
    from robust.methods import IBP

    threat = build({"class_path": "robust.threat.ThreatModel", "init_args": {"norm": "linf", "eps": "8/255"}})
    assert isinstance(threat, ThreatModel) and threat == ThreatModel("linf", "8/255")
    method = build({"class_path": "robust.methods.ibp.IBP", "init_args": {"eps": 0.1}})
    assert isinstance(method, IBP) and float(method.threat.eps) == 0.1
