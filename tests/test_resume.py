"""Fault tolerance and determinism of `robust fit`: a run killed with SIGKILL mid-epoch and resumed
with the same command plus `--ckpt_path last` ends with exactly the weights and metrics of a run
that was never interrupted; a kill while a checkpoint is written leaves the previous one loadable;
two runs with one seed agree exactly (CPU).

Each run is a subprocess (`robust fit` through the CLI) with one intra-op thread, so that every run
sums in the same order. The tiny setting: CNN-small on the 8x8 digits, PGD-2 with a one-epoch eps
ramp, batch 64 (19 steps per epoch), 2 epochs, a checkpoint every 7 steps; the kill comes at step
31, three steps after the checkpoint of step 28 (epoch 1, 9 of its 19 batches trained).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _helpers import tiny_fit_config
from conftest import REPO

STEPS_PER_EPOCH = 19  # ceil(1197 / 64)
CKPT_EVERY = 7
KILL_AT = 31
RESUMED_FROM = 28  # the last checkpoint before the kill

SCRIPT = """
import json, os, signal, sys

import torch

torch.set_num_threads(1)

from robust.callbacks.resume import ResumeState
from robust.cli.lightning import build_cli
from robust.data.resident import ResidentLoader

kill_at = int(os.environ.get("ROBUST_TEST_KILL_AT", "0"))
if kill_at:  # after the optimiser step of `kill_at`, before anything else happens
    def _kill(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    ResumeState.on_train_batch_end = _kill

restored = []  # whether Lightning itself hands the saved loader state back (issue #20550)
_load = ResidentLoader.load_state_dict
def _record(self, state):
    restored.append(dict(state))
    _load(self, state)
ResidentLoader.load_state_dict = _record

out = sys.argv[1]
cli = build_cli(sys.argv[2:])
metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
torch.save({"state_dict": cli.model.state_dict(), "metrics": metrics, "global_step": cli.trainer.global_step,
            "restored_loader_states": restored}, out)
"""


def _config(tmp_path: Path, resident: bool, scheduler: str) -> Path:
    return tiny_fit_config(tmp_path / f"{'resident' if resident else 'loader'}-{scheduler}.yaml", scheduler=scheduler,
                           checkpoint={"every_n_train_steps": CKPT_EVERY}, data={"device_resident": resident},
                           logger=False)


def _fit(tmp_path: Path, config: Path, root: str, *extra: str, kill_at: int = 0) -> tuple[int, dict | None]:
    """Run `robust fit --config config` in a subprocess; returns its exit status and its final state."""
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / f"{root}.pt"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "ROBUST_TEST_KILL_AT": str(kill_at),
           "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(script), str(out), "fit", "--config", str(config),
               "--trainer.default_root_dir", str(tmp_path / root), *extra]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"robust fit failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.returncode, (torch.load(out, weights_only=True) if out.exists() else None)


_references: dict[tuple[bool, str], dict] = {}


def _reference(tmp_path_factory: pytest.TempPathFactory, resident: bool, scheduler: str) -> dict:
    """The uninterrupted run of a setting (run once per session)."""
    key = (resident, scheduler)
    if key not in _references:
        tmp = tmp_path_factory.mktemp("reference")
        code, result = _fit(tmp, _config(tmp, resident, scheduler), "run")
        assert code == 0 and result["global_step"] == 2 * STEPS_PER_EPOCH
        _references[key] = result
    return _references[key]


def _exact(metrics: dict[str, float], resumed: bool) -> dict[str, float]:
    """The metrics a resumed run must reproduce: all but, after a resume, the training metrics'
    epoch means (Lightning does not checkpoint its running epoch aggregates, so the resumed epoch's
    means cover the batches after the resume only; per-step values and validation are exact)."""
    return {k: v for k, v in metrics.items()
            if not resumed or not k.startswith("train/") or k.endswith("_step")}


def _assert_same_run(a: dict, b: dict, resumed: bool = False) -> None:
    assert a["global_step"] == b["global_step"]
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    exact_a, exact_b = _exact(a["metrics"], resumed), _exact(b["metrics"], resumed)
    assert {"val/clean_acc", "val/robust_acc", "train/loss_step"} <= set(exact_a)
    assert exact_a == exact_b, json.dumps({"a": exact_a, "b": exact_b}, indent=1)


@pytest.mark.parametrize(("resident", "scheduler"), [(False, "onecycle"), (True, "onecycle"), (True, "none")],
                         ids=["dataloader-onecycle", "resident-onecycle", "resident-constant"])
def test_killed_and_resumed_run_matches_the_uninterrupted_one(resident, scheduler, tmp_path, tmp_path_factory):
    reference = _reference(tmp_path_factory, resident, scheduler)
    config = _config(tmp_path, resident, scheduler)
    code, _ = _fit(tmp_path, config, "run", kill_at=KILL_AT)
    assert code == -signal.SIGKILL
    last = tmp_path / "run/checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain data: RNG states and all
    assert saved["global_step"] == RESUMED_FROM
    assert len(saved["callbacks"]["ResumeState"]["rng"]) == 1
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert (saved["epoch"], progress["processed"]) == (1, RESUMED_FROM - STEPS_PER_EPOCH)
    if resident:
        # Lightning 2.6 fetches no batch ahead from a loader with a length: the loader's own count of
        # batches handed out equals the batches trained (the resume reads the loop counters anyway)
        (loader_state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        assert loader_state["position"] == RESUMED_FROM - STEPS_PER_EPOCH

    code, resumed = _fit(tmp_path, config, "run", "--ckpt_path", "last")
    assert code == 0
    _assert_same_run(reference, resumed, resumed=True)
    if resident:
        # Lightning issue #20550: when configure_optimizers calls trainer.estimated_stepping_batches
        # (one-cycle and cosine do), the saved loader state is silently not handed back
        assert bool(resumed["restored_loader_states"]) == (scheduler == "none"), resumed["restored_loader_states"]


def test_two_runs_with_one_seed_agree_exactly(tmp_path, tmp_path_factory):
    reference = _reference(tmp_path_factory, False, "onecycle")
    code, again = _fit(tmp_path, _config(tmp_path, False, "onecycle"), "again")
    assert code == 0
    _assert_same_run(reference, again)
    assert 0.3 < reference["metrics"]["val/clean_acc"] <= 1.0  # it trained: chance is 0.1


KILL_WHILE_SAVING = """
import os, signal, sys

import torch

from robust.callbacks.checkpoint_io import AtomicCheckpointIO

path = sys.argv[1]
io = AtomicCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "step": 1}, path)

def _partial_then_killed(obj, f, *args, **kwargs):  # half the bytes of the new file, then SIGKILL
    f.write(b"PK\\x03\\x04" + bytes(100_000))
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = _partial_then_killed
io.save_checkpoint({"state_dict": {"w": torch.ones(100_000)}, "step": 2}, path)
"""


def test_kill_during_checkpoint_write_leaves_the_previous_file(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent(KILL_WHILE_SAVING))
    path = tmp_path / "ckpt" / "last.ckpt"
    proc = subprocess.run([sys.executable, str(script), str(path)], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt."), leftovers  # the torn temporary file
    previous = torch.load(path, weights_only=True)
    assert previous["step"] == 1 and torch.equal(previous["state_dict"]["w"], torch.zeros(1000))

    from robust.callbacks.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)  # the next save clears the torn file
    assert torch.load(path, weights_only=True)["step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_robust_fit_writes_checkpoints_atomically_and_keeps_resume_state(tmp_path):
    from robust.callbacks import ResumeState
    from robust.callbacks.checkpoint_io import AtomicCheckpointIO
    from robust.cli.lightning import build_cli

    cli = build_cli(["--config", str(_config(tmp_path, False, "onecycle"))], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sum(isinstance(cb, ResumeState) for cb in cli.trainer.callbacks) == 1


def test_epoch_sampler_matches_the_resident_order_and_resumes():
    """The DataLoader path and the device-resident path draw the same batches, on any number of ranks."""
    from torch.utils.data import DataLoader, TensorDataset

    from robust.data.base import EpochSampler
    from robust.data.resident import ResidentLoader

    x, y = torch.arange(100.0).view(100, 1, 1, 1), torch.arange(100)
    for world in (1, 2):
        for rank in range(world):
            sampler = EpochSampler(TensorDataset(x, y), 8, seed=5, rank=rank, world_size=world)
            resident = ResidentLoader(x, y, 8, shuffle=True, seed=5, rank=rank, world_size=world)
            for epoch in (0, 3):
                sampler.set_epoch(epoch)
                resident.set_epoch(epoch)
                plain = [b for _, b in DataLoader(TensorDataset(x, y), batch_size=8, sampler=sampler)]
                assert [b.tolist() for b in plain] == [b.tolist() for _, b in resident]
                assert len(plain) == len(DataLoader(TensorDataset(x, y), batch_size=8, sampler=sampler))
                sampler.seek(epoch, 2)
                assert [b.tolist() for _, b in DataLoader(TensorDataset(x, y), batch_size=8, sampler=sampler)] \
                    == [b.tolist() for b in plain[2:]]
    halves = [[b for _, b in DataLoader(TensorDataset(x, y), batch_size=8,
                                        sampler=EpochSampler(TensorDataset(x, y), 8, seed=5, rank=r, world_size=2))]
              for r in (0, 1)]
    whole = [b for _, b in DataLoader(TensorDataset(x, y), batch_size=16,
                                      sampler=EpochSampler(TensorDataset(x, y), 16, seed=5))]
    # 2 ranks x 8 see, step by step, the examples of 1 process x 16 (13 batches of 8: the 13th is left out)
    assert len(halves[0]) == len(halves[1]) == 6
    for step in range(6):
        assert sorted(torch.cat([halves[0][step], halves[1][step]]).tolist()) == sorted(whole[step].tolist())


def test_ckpt_path_last_finds_the_newest_last_checkpoint_below_the_run_folder(tmp_path):
    # With the recipes' wandb logger each run writes under a folder named after its run id, so
    # `--ckpt_path last` must look below the root folder, not in the new run's (empty) folder.
    import os

    from robust.cli.lightning import newest_last_checkpoint

    assert newest_last_checkpoint(tmp_path) is None
    old = tmp_path / "robust" / "run1" / "checkpoints" / "last.ckpt"
    new = tmp_path / "robust" / "run2" / "checkpoints" / "last.ckpt"
    torn = tmp_path / "robust" / "run2" / "checkpoints" / ".last.ckpt.1a2b.tmp"
    for path in (old, new, torn):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    assert newest_last_checkpoint(tmp_path) == new
