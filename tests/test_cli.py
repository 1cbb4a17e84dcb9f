"""The `robust` command: help, every recipe builds, bad input ends in one line and exit 2,
fit/resume/test through LightningCLI, and the README's quickstart end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES

from robust.cli import main
from robust.cli.lightning import build_cli
from robust.module import RobustClassifier

ALL_RECIPES = sorted(RECIPES.rglob("*.yaml"))


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("quickstart", "fit", "validate", "test"):
        assert command in out


@pytest.mark.parametrize("command", ["fit", "test"])
def test_lightning_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_recipes_cover_the_required_set():
    names = {str(p.relative_to(RECIPES)) for p in ALL_RECIPES}
    for required in ("digits/standard_cnnmedium.yaml", "digits/fgsm_cnnmedium.yaml", "digits/pgd_cnnmedium.yaml",
                     "digits/trades_cnnmedium.yaml", "mnist/fgsm_cnnsmall.yaml", "mnist/pgd_madrycnn.yaml",
                     "mnist/trades_smallcnn.yaml", "cifar10/fgsm_preactresnet18.yaml",
                     "cifar10/pgd_preactresnet18.yaml", "cifar10/trades_wrn34_10.yaml", "gtsrb/pgd_preactresnet18.yaml"):
        assert required in names


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_builds_and_names_its_source(recipe, tmp_path, monkeypatch):
    text = recipe.read_text()
    assert text.startswith("#") and any(ch.isdigit() for ch in text.splitlines()[0] + text.splitlines()[1])
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(text)
    data_args = config["data"].get("init_args", {})
    args = ["--config", str(recipe), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    if "root" in data_args and "mnist-t10k" in str(data_args["root"]):
        args += ["--data.init_args.root", str(RECIPES.parent.parent / "shared/data/mnist-t10k")]
    try:
        cli = build_cli(args, run=False)
    except FileNotFoundError as exc:  # mnist-t10k recipe where ../shared is absent
        pytest.skip(str(exc))
    assert isinstance(cli.model, RobustClassifier)
    eps_text = str(config["model"]["method"].get("init_args", {}).get("threat", {}).get("eps", ""))
    if eps_text:
        num, _, den = eps_text.partition("/")
        assert math.isclose(float(cli.model.method.threat.eps), float(num) / float(den or 1))
    assert cli.trainer.checkpoint_callback is not None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["model"]["method"]["init_args"]["threat"].update(eps=-1), "eps must be > 0"),
        (lambda c: c["model"]["method"]["init_args"]["threat"].update(norm="l1"), "threat.norm"),
        (lambda c: c["model"]["method"]["init_args"].update(steps=0), "steps must be"),
        (lambda c: c["model"].update(optimizer="rmsprop"), "optimizer"),
        (lambda c: c["data"].update(class_path="robust.data.Npz", init_args={"path": "nowhere/x.npz"}), "nowhere"),
        (lambda c: c["data"].update(class_path="robust.data.MNIST10k", init_args={"root": "no/such/dir"}), "no/such/dir"),
    ],
    ids=["negative-eps", "unknown-norm", "zero-steps", "bad-optimizer", "missing-npz", "missing-mnist-t10k"],
)
def test_invalid_configs_give_one_clear_line_and_exit_2(edit, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((RECIPES / "digits/pgd_cnnmedium.yaml").read_text())
    config["trainer"]["logger"] = False
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        code = main(["fit", "--config", str(path)])
    except SystemExit as exc:  # jsonargparse's own parse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    if "nowhere" in message or "no/such" in message:
        assert str(tmp_path) in err  # the absolute path that was searched
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


def test_fit_resume_and_test_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = str(RECIPES / "digits/pgd_cnnmedium.yaml")
    common = ["--config", recipe, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
              "--model.val_attack_steps", "2", "--model.test_attack_steps", "5"]
    main(["fit", *common, "--trainer.max_epochs", "1"])
    last = next(tmp_path.rglob("last.ckpt"))
    main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    import torch

    assert torch.load(last, weights_only=True)["global_step"] == 6  # 3 batches x 2 epochs, resumed
    main(["test", *common, "--ckpt_path", str(last), "--results", str(tmp_path / "test.json")])
    metrics = json.loads((tmp_path / "test.json").read_text())["metrics"]
    assert 0.0 <= metrics["test/robust_acc"] <= metrics["test/clean_acc"] <= 1.0


def test_quickstart_adversarial_training_visibly_helps(tmp_path, monkeypatch):
    """The README's main job. Issue's bar on the held-out test split under torchattacks' PGD-50
    at L-inf eps 0.2: PGD model clean >= 95% and robust >= 55%; standard model robust <= 15%."""
    from robust.tracking import read_wandb_run

    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "qs/results.json").read_text())
    pgd, standard = results["pgd"], results["standard"]
    assert pgd["n_examples"] == 300 and pgd["attack"]["steps"] == 50 and pgd["attack"]["eps"] == 0.2
    summary = json.dumps({k: {m: r[m] for m in ("clean_accuracy", "robust_accuracy")} for k, r in results.items()})
    assert pgd["clean_accuracy"] >= 0.95, summary
    assert pgd["robust_accuracy"] >= 0.55, summary
    assert standard["robust_accuracy"] <= 0.15, summary
    assert Path(pgd["checkpoint"]).is_file() and "best" in Path(pgd["checkpoint"]).name
    run = read_wandb_run(pgd["wandb_run"])
    logged = [row["test/robust_acc"] for row in run.history if "test/robust_acc" in row]
    assert logged and abs(logged[-1] - pgd["robust_accuracy"]) < 1e-6
    assert any("val/robust_acc" in row for row in run.history)
    assert run.config["method"]["class_path"] == "robust.methods.PGD"
    from robust.leaderboard import Store

    entries = {e["name"]: e for e in Store(tmp_path / "runs/leaderboard.db").entries()}
    assert entries["quickstart pgd (CNNMedium)"]["robust"]["accuracy"] == pgd["robust_accuracy"]
    assert entries["quickstart standard (CNNMedium)"]["clean"]["accuracy"] == standard["clean_accuracy"]
    assert "quickstart pgd (CNNMedium)" in (tmp_path / "runs/leaderboard.html").read_text()
    # the reviewer's document for the quickstart's checkpoint (on 20 test digits, a short attack)
    from _helpers import assert_audit_matches_reports

    assert main(["audit", "--checkpoint", pgd["checkpoint"], "--data", "digits", "--n-examples", "20",
                 "--attacks", "apgd-ce", "--attack-options", '{"apgd-ce": {"steps": 10}}', "--no-corruptions",
                 "--no-progress", "--out", str(tmp_path / "audit")]) == 0
    assert assert_audit_matches_reports(tmp_path / "audit")["threat"]["eps"] == 0.2


def test_torchvision_model_from_a_recipe_is_stored_as_a_spec(tmp_path, monkeypatch):
    """A torchvision class named in a config is not one of ours, but its class_path spec is
    allowlisted, so the checkpoint rebuilds it without being handed the module."""
    monkeypatch.chdir(tmp_path)
    config = {
        "model": {"model": {"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10}},
                  "method": {"class_path": "robust.methods.Standard"}},
        "data": {"class_path": "robust.data.Digits", "init_args": {"upscale": 32}},
    }
    path = tmp_path / "tv.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    spec = cli.model.hparams["model"]
    assert spec["class_path"] == "torchvision.models.resnet18" and spec["init_args"]["num_classes"] == 10
    from robust.base.spec import build

    assert type(build(spec)).__name__ == "ResNet"


def test_fit_without_wandb(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = RECIPES / "digits/standard_cnnmedium.yaml"
    assert main(["fit", "--config", str(recipe), "--no-wandb", "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                 "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]) == 0
    assert list((tmp_path / "run").rglob("*.ckpt")) and not list(tmp_path.rglob("wandb"))
