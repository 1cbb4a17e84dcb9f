"""``robust evaluate`` and ``robust certify`` under torchrun: two CPU processes (gloo) give the
report and per-example table of one process, except for timings and timestamps, on 37 examples
in batches of 8 (neither divides evenly); a resume state written by one process is finished by
two; batch b goes to rank b % world_size, every example exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import (
    fit_checkpoint,
    one_thread,  # noqa: F401  (autouse)
)

from robust.base import distributed
from robust.base.state import read_journal
from robust.base.threat import ThreatModel
from robust.cli import main
from robust.methods import Standard

N, BATCH = 37, 8
VOLATILE = {"seconds", "time", "timestamp", "seconds_per_example"}  # timings and the clock


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits) -> Path:
    """A registry CNN-small trained for 2 epochs on digits (81% clean on the first 37 test images)."""
    return fit_checkpoint(Standard(), digits, tmp_path_factory.mktemp("dist") / "model.ckpt", epochs=2)


def _torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "robust.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=150)


def _stable(value):
    """``value`` without timings and timestamps, and with the same keys in the same order."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _table(path: Path) -> list[list[str]]:
    """A per-example TSV without its ``time`` column."""
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != "time"]
    return [[row[i] for i in keep] for row in rows]


def _same_outputs(one: Path, two: Path, table: str | None = None) -> dict:
    a, b = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert _stable(a) == _stable(b)
    if table is not None:
        assert _table(one / table) == _table(two / table)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    return a


def _both(argv: list[str], tmp_path: Path, capsys) -> tuple[Path, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*argv, "--out", str(one)]) in (0, 1), capsys.readouterr().err
    proc = _torchrun([*argv, "--out", str(two)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr
    return one, two


def test_evaluate_two_processes_equal_one(checkpoint, tmp_path, capsys):
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", "--norm", "linf", "--eps", "0.1",
            "--attacks", "pgd,fgsm", "--attack-options", '{"pgd": {"steps": 5}}', "--sweep", "0.05,0.2",
            "--spatial", "--n-examples", str(N), "--batch-size", str(BATCH), "--no-wandb", "--no-progress"]
    one, two = _both(argv, tmp_path, capsys)
    report = _same_outputs(one, two)
    # the comparison covers the main attack pass, the sweep, the audit and the spatial pass
    assert report["n_examples"] == N and len(report["per_example"]["label"]) == N
    assert [s["eps"] for s in report["sweep"]] == [0.05, 0.1, 0.2] and report["audit"]["ran"]
    assert report["physical"]["spatial"]["n_examples"] == N
    assert 0 < report["robust"]["correct"] < report["clean"]["correct"]  # attacks broke some, not all


def test_evaluate_state_of_one_process_resumes_under_two(checkpoint, tmp_path, capsys):
    from robust.data import Digits
    from robust.evaluation.core import evaluate
    from robust.module import RobustClassifier

    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", "--norm", "linf", "--eps", "0.1",
            "--attacks", "pgd", "--attack-options", '{"pgd": {"steps": 5}}', "--no-audit",
            "--n-examples", str(N), "--batch-size", str(BATCH), "--no-wandb", "--no-progress"]
    fresh = tmp_path / "fresh"
    assert main([*argv, "--out", str(fresh)]) == 0, capsys.readouterr().err

    class Interrupted(Exception):
        pass

    def stop_after_two(b: int, n_batches: int) -> None:
        if b == 1:
            raise Interrupted

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    dm = Digits()
    dm.setup("test")
    model = RobustClassifier.load_from_checkpoint(checkpoint, map_location="cpu").model
    with pytest.raises(Interrupted):
        evaluate(model, dm.test_tensors(), ThreatModel("linf", "0.1"), ["pgd"], n_examples=N, batch_size=BATCH, audit=False,
                 attack_options={"pgd": {"steps": 5}}, state_path=resumed / "evaluate_state.pt", progress=False,
                 on_batch=stop_after_two)
    _, rounds = read_journal(resumed / "evaluate_state.pt")
    assert sorted(rounds) == [0, 1]
    proc = _torchrun([*argv, "--out", str(resumed)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and not (resumed / "evaluate_state.pt").exists()
    _same_outputs(fresh, resumed)


def test_certify_smoothing_two_processes_equal_one(checkpoint, tmp_path, capsys):
    # --n-samples, not --n: torchrun's parser reads --n as an ambiguous abbreviation of its own options
    argv = ["certify", "--method", "smoothing", "--checkpoint", str(checkpoint), "--data", "digits",
            "--sigma", "0.25", "--n0", "10", "--n-samples", "200", "--alpha", "0.01", "--radii", "0,0.1",
            "--batch-size", "64", "--n-examples", str(N), "--no-wandb", "--no-progress"]
    one, two = _both(argv, tmp_path, capsys)
    report = _same_outputs(one, two, "certify.tsv")
    assert [r["idx"] for r in report["per_example"]] == list(range(N))
    assert report["settings"]["n"] == 200 and 0 < report["acr"]


def test_certify_ibp_two_processes_equal_one(checkpoint, tmp_path, capsys):
    argv = ["certify", "--method", "ibp", "--checkpoint", str(checkpoint), "--data", "digits", "--eps", "0.01,0.05",
            "--attack-options", '{"steps": 5}', "--batch-size", str(BATCH), "--n-examples", str(N), "--no-wandb",
            "--no-progress"]
    one, two = _both(argv, tmp_path, capsys)
    report = _same_outputs(one, two, "verify.tsv")
    assert [r["idx"] for r in report["per_example"]] == list(range(N))
    assert len(report["sweep"]) == 2 and sum(report["status_counts"].values()) == N


@pytest.mark.parametrize("n_batches, world_size", [(5, 2), (5, 3), (2, 4), (1, 1), (7, 7), (16, 4)])
def test_every_batch_and_example_goes_to_exactly_one_rank(n_batches, world_size, monkeypatch):
    n = n_batches * BATCH - 3  # the last batch is short
    owners = {}
    for rank in range(world_size):
        mine = list(distributed.my_batches(n_batches, rank, world_size))
        assert all(b % world_size == rank for b in mine)
        for b in mine:
            assert b not in owners
            owners[b] = rank
    assert sorted(owners) == list(range(n_batches))
    examples = sorted(i for b in owners for i in range(b * BATCH, min(n, (b + 1) * BATCH)))
    assert examples == list(range(n))

    # map_batches computes each batch on its owner once, skipping finished ones, with no process group
    computed = []
    for rank in range(world_size):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, world_size))
        monkeypatch.setattr(distributed, "gather_by_index", lambda local: dict(local))
        distributed.map_batches(n_batches, lambda b, rank=rank: computed.append((b, rank)), skip={0})
    assert sorted(computed) == sorted((b, owners[b]) for b in range(1, n_batches))


def test_a_single_process_initialises_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") == torch.device("cpu")
    assert not torch.distributed.is_initialized() and distributed.world() == (0, 1) and distributed.is_main()
    assert distributed.gather_by_index({3: "c", 1: "a"}) == {1: "a", 3: "c"}
    assert distributed.run_on_main(lambda: 5) == 5
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env("cpu") == torch.device("cpu") and not torch.distributed.is_initialized()


def test_bad_launch_environment_is_refused_before_any_collective(monkeypatch, checkpoint, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT is not set"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="ROBUST_DIST_TIMEOUT_S"):
        distributed.timeout()
    # robust audit runs whole in each process, so it refuses a torchrun launch
    assert main(["audit", "--checkpoint", str(checkpoint), "--data", "digits", "--no-wandb"]) == 2
    assert "robust audit runs in one process" in capsys.readouterr().err
