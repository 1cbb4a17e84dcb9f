"""2-process DDP (gloo, CPU) through `robust fit`: it finishes, the device-resident loader shards
evenly, and its validation metrics match a 1-process run with the same global batch (2 x 32 vs 1 x 64).

Both loader paths cut one order into fixed batches of 32 and give batch ``b`` to rank ``b % 2``,
so at every step the two ranks together train on exactly the examples the single process trains
on with batch 64. What still differs: each rank draws the PGD random starts from its own copy of
the seeded stream (rank 1 does not continue rank 0's draws), the last, partial batch of an epoch
(45 = 32 + 13 examples) is averaged per rank, and floating-point sums run in another order. The
tolerance is therefore statistical: 0.05 absolute on validation accuracies over 300 images (an
accuracy near 0.8 has a binomial standard error of 0.023 there; the two runs are far more alike
than two independent ones, so 0.05 is a loose bound that a wrong reduction or a wrong shard
exceeds: a rank-0-only metric is measured on half the set, a duplicated shard trains on half the data).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _helpers import tiny_fit_config
from conftest import REPO

TOLERANCE = 0.05
EPOCHS = 2
STEPS_PER_EPOCH = 19  # 1197 digits: 19 batches of 64, or 38 of 32 shared by 2 ranks

SCRIPT = """
import os, sys

import torch

torch.set_num_threads(1)

from robust.cli.lightning import build_cli
from robust.module import RobustClassifier

_log = RobustClassifier.log
def _log_also_unreduced(self, name, value, *args, **kwargs):
    # the module reduces validation metrics over ranks (sync_dist=True: a mean weighted by batch
    # size); the unreduced value, rank 0's shard alone, is kept as rank0/<name> for comparison
    if name.startswith("val/"):
        _log(self, "rank0/" + name, value, *args, **{**kwargs, "sync_dist": False})
    return _log(self, name, value, *args, **kwargs)
RobustClassifier.log = _log_also_unreduced

out = sys.argv[1]
cli = build_cli(sys.argv[2:])
if cli.trainer.is_global_zero:
    torch.save({"state_dict": cli.model.state_dict(), "global_step": cli.trainer.global_step,
                "metrics": {k: float(v) for k, v in cli.trainer.callback_metrics.items()}}, out)
"""


def _config(tmp_path: Path) -> Path:
    return tiny_fit_config(tmp_path / "ddp.yaml", epochs=EPOCHS, num_sanity_val_steps=0)


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]


DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
       "--data.init_args.batch_size", "32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 64, and two processes with batch 32 each (plain DataLoader path)."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "fit.py"
    script.write_text(textwrap.dedent(SCRIPT))
    config = _config(tmp)
    results = {}
    for name, extra in (("single", []), ("ddp", DDP)):
        _run([sys.executable, str(script), str(tmp / f"{name}.pt"), "fit", "--config", str(config),
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp / name), *extra], tmp)
        results[name] = torch.load(tmp / f"{name}.pt", weights_only=True)
    return results, tmp


def _val_accuracy(state_dict: dict, rows: slice = slice(None)) -> float:
    from robust.data import Digits
    from robust.models import CNNSmall

    model = CNNSmall(num_classes=10, input_size=8)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state_dict.items()})
    x, y = Digits().val_tensors()
    with torch.no_grad():
        return float((model.eval()(x[rows]).argmax(1) == y[rows]).float().mean())


def test_ddp_matches_one_process_within_tolerance(runs):
    results, _ = runs
    single, ddp = results["single"], results["ddp"]
    assert single["global_step"] == ddp["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for name in ("val/clean_acc", "val/robust_acc"):
        assert abs(single["metrics"][name] - ddp["metrics"][name]) <= TOLERANCE, (name, single["metrics"], ddp["metrics"])
    assert single["metrics"]["val/clean_acc"] > 0.5  # trained: chance is 0.1


def test_ddp_validation_metrics_are_reduced_over_both_ranks(runs):
    """The logged clean accuracy is the accuracy on all 300 validation images (each rank holds 150:
    Lightning's DistributedSampler, every other image); unreduced, it would be rank 0's half alone."""
    results, _ = runs
    ddp = results["ddp"]
    assert ddp["metrics"]["val/clean_acc"] == pytest.approx(_val_accuracy(ddp["state_dict"]), abs=1e-6)
    assert ddp["metrics"]["rank0/val/clean_acc"] == pytest.approx(
        _val_accuracy(ddp["state_dict"], slice(0, None, 2)), abs=1e-6)


def test_ddp_device_resident_through_the_robust_command(runs, tmp_path):
    """`robust fit ... --trainer.strategy ddp --trainer.devices 2` relaunches the `robust` command
    itself; the device-resident loader gives both ranks 19 batches per epoch (unequal counts would
    hang DDP) and the same batches as the DataLoader path."""
    from robust.data import Digits
    from robust.data.resident import ResidentLoader

    images, labels = Digits().train_tensors()
    assert [len(ResidentLoader(images, labels, 32, shuffle=True, rank=r, world_size=2)) for r in (0, 1)] == [19, 19]

    results, tmp = runs
    robust = Path(sys.executable).with_name("robust")
    _run([str(robust), "fit", "--config", str(_config(tmp)), "--no-wandb", "--data.init_args.device_resident", "true",
          "--trainer.default_root_dir", str(tmp_path / "resident"), *DDP], tmp_path)
    (last,) = (tmp_path / "resident").rglob("last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert len(saved["callbacks"]["ResumeState"]["rng"]) == 2  # every rank's RNG states, for an exact resume
    # same batches as the DataLoader path, but validation shards differ (160/140 images per rank here,
    # 150/150 there), so the attacks' random starts draw differently from the second epoch on
    assert abs(_val_accuracy(saved["state_dict"]) - _val_accuracy(results["ddp"]["state_dict"])) <= TOLERANCE
