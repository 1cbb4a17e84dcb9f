"""Same command, different model: tracking must not change a run (issue 14, class 8).

Loggers, progress bars and ``--no-wandb`` may not consume training randomness: each tracking
component leaves the torch, NumPy and Python generators exactly where it found them, and a fit
with wandb, with progress bars or through ``--no-wandb`` ends with weights bit-for-bit equal to a
fit without any of them (CPU; seed 0).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import tiny_fit_config
from hostile import run

from robust.callbacks.resume import rng_state

pytestmark = pytest.mark.filterwarnings("ignore")


def same_rng(before: dict, after: dict) -> bool:
    return (torch.equal(before["torch"], after["torch"]) and before["numpy"]["pos"] == after["numpy"]["pos"]
            and torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
            and torch.equal(before["python"]["state"], after["python"]["state"]))


def tiny_config(path: Path, logger: object = False, **trainer: object) -> Path:
    """A PGD CNN-small fit on a few digits batches: one epoch, two validation batches."""
    tiny_fit_config(path, epochs=1, limit_train_batches=6, limit_val_batches=2, num_sanity_val_steps=1,
                    log_every_n_steps=1, logger=logger, **trainer)
    return path


def wandb_logger(root: Path, **init_args: object) -> dict:
    return {"class_path": "robust.tracking.WandbLogger",
            "init_args": {"save_dir": str(root), "project": "determinism", "offline": True, **init_args}}


def fitted_weights(config: Path, root: Path, extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    from robust.cli import main

    code = main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *extra])
    assert code == 0
    last = sorted(root.rglob("last.ckpt"))
    assert len(last) == 1, last
    return torch.load(last[0], map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("baseline")
    return fitted_weights(tiny_config(root / "fit.yaml"), root)


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ in {differing[:5]}"


# --- end to end: the same fit with and without tracking --------------------------------------------

VARIANTS = {
    "wandb-offline-logger": lambda root: ({"logger": wandb_logger(root)}, ()),
    "wandb-log-model-all": lambda root: ({"logger": wandb_logger(root, log_model="all")}, ()),
    "wandb-then-no-wandb-flag": lambda root: ({"logger": wandb_logger(root)}, ("--no-wandb",)),
    "lightning-progress-bar": lambda root: ({"enable_progress_bar": True}, ()),
    "csv-logger": lambda root: ({"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                            "init_args": {"save_dir": str(root)}}}, ()),
}


@pytest.mark.hostile("determinism")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tracking_does_not_change_the_trained_weights(variant, baseline, tmp_path):
    trainer, extra = VARIANTS[variant](tmp_path)
    config = tiny_fit_config(tmp_path / "fit.yaml", epochs=1, limit_train_batches=6, limit_val_batches=2,
                             num_sanity_val_steps=1, log_every_n_steps=1, **{"logger": False, **trainer})
    assert_bitwise_equal(baseline, fitted_weights(config, tmp_path, extra))


@pytest.mark.hostile("determinism")
def test_quickstart_trains_the_same_model_with_and_without_wandb(tmp_path):
    """``run_recipe`` (what ``robust quickstart`` runs per recipe) with ``wandb=True`` and ``False``:
    the same checkpoint weights and the same measured figures."""
    from robust.cli.quickstart import run_recipe

    recipe = tiny_config(tmp_path / "recipe.yaml", logger=wandb_logger(tmp_path / "unused"))
    spec = yaml.safe_load(recipe.read_text())
    spec["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"monitor": "val/robust_acc", "mode": "max",
                                                       "filename": "best-{epoch}"}})
    spec["model"]["test_attack_steps"] = 2
    spec["data"]["init_args"]["batch_size"] = 256
    recipe.write_text(yaml.safe_dump(spec))
    results = {}
    for tracked in (True, False):
        out = tmp_path / f"wandb-{tracked}"
        result = run_recipe(recipe, out, epochs=None, progress=True, wandb=tracked)
        weights = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        results[tracked] = (result, weights)
    assert results[True][0]["wandb_run"] and not results[False][0]["wandb_run"]
    assert_bitwise_equal(results[True][1], results[False][1])
    for key in ("clean_accuracy", "robust_accuracy", "n_examples"):
        assert results[True][0][key] == results[False][0][key], key


# --- each tracking component leaves the random generators untouched --------------------------------


def _logger_lifecycle(tmp_path: Path) -> None:
    from robust.tracking import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), project="determinism", offline=True)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.finish()


def _command_run(tmp_path: Path) -> None:
    from robust.tracking import finish_run, start_run

    finish_run(start_run("determinism", tmp_path, "evaluate", {"eps": 0.1}))


def _phase_progress_hooks(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from robust.cli.lightning import PhaseProgress

    bar = PhaseProgress("probe")
    trainer = SimpleNamespace(num_training_batches=3, max_epochs=2, current_epoch=0, num_test_batches=[2],
                              callback_metrics={"train/loss": torch.tensor(1.0)}, is_global_zero=True,
                              global_step=0, fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace()),
                              test_loop=SimpleNamespace())
    for hook in ("on_train_start", "on_train_epoch_end", "on_train_end", "on_test_start", "on_test_end"):
        getattr(bar, hook)(trainer, None)


def _wandb_results(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from robust.callbacks.wandb_results import WandbResults
    from robust.tracking import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), project="determinism", offline=True)
    trainer = SimpleNamespace(loggers=[logger], sanity_checking=False, current_epoch=0, is_global_zero=True,
                              callback_metrics={"val/clean_acc": torch.tensor(0.9), "val/robust_acc": torch.tensor(0.5),
                                                "test/clean_acc": torch.tensor(0.8)})
    callback = WandbResults()
    callback.on_validation_epoch_end(trainer, None)
    callback.on_fit_end(trainer, None)
    callback.on_test_end(trainer, None)
    logger.finish()


def _quiet_framework(tmp_path: Path) -> None:
    from robust.cli.lightning import quiet_framework

    with quiet_framework():
        pass


def _wandb_mode(tmp_path: Path) -> None:
    from robust.tracking import wandb_mode

    wandb_mode()


def _tqdm_bar(tmp_path: Path) -> None:
    from tqdm.auto import tqdm

    for _ in tqdm(range(3), disable=False, leave=False):
        pass


COMPONENTS = {
    "wandb-logger-lifecycle": _logger_lifecycle, "command-wandb-run": _command_run,
    "phase-progress-hooks": _phase_progress_hooks, "wandb-results-callback": _wandb_results,
    "quiet-framework": _quiet_framework, "wandb-mode-lookup": _wandb_mode, "tqdm-bar": _tqdm_bar,
}


@pytest.mark.hostile("determinism")
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_tracking_component_draws_no_random_numbers(component, tmp_path):
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before = rng_state()
    COMPONENTS[component](tmp_path)
    assert same_rng(before, rng_state()), f"{component} changed a random generator's state"


@pytest.mark.hostile("determinism")
def test_evaluate_reports_the_same_numbers_with_and_without_wandb(tmp_path, capsys):
    from hostile import copy_checkpoint

    ckpt = copy_checkpoint(tmp_path)
    reports = []
    for extra in (["--wandb-project", "determinism"], ["--no-wandb"]):
        out = tmp_path / extra[0].lstrip("-")
        outcome = run(["evaluate", "--checkpoint", ckpt, "--data", "digits", "--n-examples", "24", "--attacks",
                       "fgsm,pgd", "--attack-options", '{"pgd": {"steps": 3}}', "--no-audit", "--no-progress",
                       "--out", out, *extra], capsys)
        assert outcome.code == 0, outcome.err[-1500:]
        import json

        reports.append(json.loads((out / "report.json").read_text()))
    for key in ("clean", "robust"):
        assert reports[0][key] == reports[1][key], key
    robust_per_attack = [{name: a["robust"] for name, a in r["per_attack"].items()} for r in reports]
    assert robust_per_attack[0] == robust_per_attack[1]  # (their timings differ)
