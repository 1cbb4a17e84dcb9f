"""Class 1 of the hostile-input corpus: nothing is built before it is trusted.

A spec stored in a checkpoint (its hyperparameters), an ``hparams_file`` or a recipe's ``model:``
section may only name what a model, a training method or a threat model is; the decision is made
from the text alone, so a refused spec imports and builds nothing: no SQLite file is created or
changed, no connection reaches the loopback listener, no logger folder appears and nothing is
downloaded (``TORCH_HOME`` stays empty). Every way in is covered: the Python API, ``hparams_file``,
``--checkpoint`` of each command, ``--config``, ``--ckpt_path`` (a planted ``last.ckpt``, an
abbreviated option, a ``ckpt_path:`` key in the config).
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import tiny_fit_config
from hostile import LEGACY_CHECKPOINT, assert_refused, copy_checkpoint, run, snapshot

from robust.base import spec
from robust.module import CheckpointError, RobustClassifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STORE = "robust.leaderboard.store.Store"


@pytest.fixture(autouse=True)
def no_downloads(tmp_path, monkeypatch):
    """A private, empty torch hub cache: any download attempt would leave a file (or folder) there."""
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def hostile(folder: Path, name: str = "hostile.ckpt", **hparams) -> Path:
    """A copy of the committed checkpoint whose hyperparameters are updated with ``hparams``."""
    ckpt = torch.load(LEGACY_CHECKPOINT, weights_only=True)
    ckpt["hyper_parameters"].update(hparams)
    path = folder / name
    torch.save(ckpt, path)
    return path


def foreign_db(folder: Path) -> Path:
    """An unrelated SQLite file that a built Store would have changed (tables, WAL mode)."""
    path = folder / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()
    return path


def model_specs(tmp: Path, port: int) -> dict[str, dict]:
    """Model specs that a model may not be; each would have a side effect if it were built."""
    return {
        "store-sqlite": {"class_path": STORE, "init_args": {"url": f"sqlite:///{tmp}/other.db"}},
        "store-new-sqlite": {"class_path": STORE, "init_args": {"url": f"sqlite:///{tmp}/new.db"}},
        "store-postgres": {"class_path": STORE, "init_args": {"url": f"postgresql://u:p@127.0.0.1:{port}/db"}},
        "store-old-module-path": {"class_path": "robust.leaderboard.Store", "init_args": {"url": str(tmp / "new.db")}},
        "lightning-wandb-logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                   "init_args": {"save_dir": str(tmp / "wandb-dir")}},
        "robust-wandb-logger": {"class_path": "robust.tracking.WandbLogger",
                                "init_args": {"project": "x", "save_dir": str(tmp / "wandb-dir")}},
        "mlflow-logger-http": {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
                               "init_args": {"tracking_uri": f"http://127.0.0.1:{port}/"}},
        "torchvision-weights-default": {"class_path": "torchvision.models.resnet18",
                                        "init_args": {"weights": "DEFAULT"}},
        "torchvision-pretrained-true": {"class_path": "torchvision.models.resnet18", "init_args": {"pretrained": True}},
        "torchvision-get-model": {"class_path": "torchvision.models.get_model",
                                  "init_args": {"name": "resnet18", "weights": "DEFAULT"}},
        "create-torchvision-weights": {"class_path": "robust.models.create",
                                       "init_args": {"name": "torchvision:resnet18", "num_classes": 10,
                                                     "weights": f"http://127.0.0.1:{port}/w.pth"}},
        "writer-function": {"class_path": "robust.reports.files.write_json",
                            "init_args": {"obj": {"a": 1}, "path": str(tmp / "written.json")}},
        "data-module": {"class_path": "robust.data.Npz", "init_args": {"path": str(tmp / "x.npz")}},
        "nested-store-in-model": {"class_path": "robust.models.create",
                                  "init_args": {"name": "cnn_small", "num_classes": 10, "block": {
                                      "class_path": STORE, "init_args": {"url": str(tmp / "n.db")}}}},
        "torch-nn-data-parallel": {"class_path": "torch.nn.DataParallel",
                                   "init_args": {"module": {"class_path": STORE, "init_args": {}}}},
    }


def assert_untouched(before: dict, tmp: Path, listener, home: Path) -> None:
    assert snapshot(tmp) == before
    assert listener.connections == 0
    assert not any(home.iterdir()), list(home.rglob("*"))
    for name in ("new.db", "n.db", "wandb-dir", "written.json", "mlruns"):
        assert not (tmp / name).exists(), name


MODEL_CASES = sorted(model_specs(Path("/x"), 1))


@pytest.mark.hostile("construction")
@pytest.mark.parametrize("case", MODEL_CASES)
def test_python_api_refuses_a_stored_model_spec_without_building_it(case, tmp_path, listener, no_downloads):
    foreign_db(tmp_path)
    path = hostile(tmp_path, model=model_specs(tmp_path, listener.port)[case])
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"hyper_parameters\.model") as info:
        RobustClassifier.load_from_checkpoint(path)
    assert str(path) in str(info.value)
    assert "outside the allowlist" in str(info.value) or "pretrained weights" in str(info.value)
    assert_untouched(before, tmp_path, listener, no_downloads)


@pytest.mark.hostile("construction")
@pytest.mark.parametrize(("field", "value", "where"), [
    ("method", {"class_path": STORE, "init_args": {"url": "{tmp}/new.db"}}, "hyper_parameters.method"),
    ("method", {"class_path": "robust.methods.PGD",
                "init_args": {"threat": {"class_path": STORE, "init_args": {"url": "{tmp}/new.db"}}}},
     "hyper_parameters.method.init_args.threat"),
    ("method", {"class_path": "robust.callbacks.ResumeState", "init_args": {}}, "hyper_parameters.method"),
    ("eval_threat", {"class_path": STORE, "init_args": {"url": "{tmp}/new.db"}}, "hyper_parameters.eval_threat"),
    ("val_eval_options", {"pgd": {"class_path": STORE, "init_args": {"url": "{tmp}/new.db"}}},
     "hyper_parameters.val_eval_options.pgd"),
    ("_class_path", STORE, "hyper_parameters"),
], ids=["method-store", "threat-inside-method", "method-callback", "eval-threat-store", "plain-field-spec",
        "lightning-class-path"])
def test_other_stored_fields_only_hold_what_they_are(field, value, where, tmp_path, listener, no_downloads):
    value = yaml.safe_load(yaml.safe_dump(value).replace("{tmp}", str(tmp_path)))
    extra = {"_instantiator": "lightning.pytorch.cli.instantiate_module"} if field == "_class_path" else {}
    path = hostile(tmp_path, **{field: value}, **extra)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="outside the allowlist") as info:
        RobustClassifier.load_from_checkpoint(path)
    assert f"{where}: class_path" in str(info.value)
    assert_untouched(before, tmp_path, listener, no_downloads)


def _hparams_yaml(tmp: Path, **changes) -> Path:
    hparams = torch.load(LEGACY_CHECKPOINT, weights_only=True)["hyper_parameters"]
    hparams.update(changes)
    path = tmp / "hparams.yaml"
    path.write_text(yaml.safe_dump(hparams))
    return path


@pytest.mark.hostile("construction")
@pytest.mark.parametrize("case", ["store-sqlite", "lightning-wandb-logger", "torchvision-weights-default",
                                  "store-postgres"])
def test_hparams_file_is_checked_like_the_checkpoint(case, tmp_path, listener, no_downloads):
    foreign_db(tmp_path)
    ckpt = copy_checkpoint(tmp_path / "ck")
    hparams = _hparams_yaml(tmp_path, model=model_specs(tmp_path, listener.port)[case])
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"hparams\.yaml: hyper_parameters\.model"):
        RobustClassifier.load_from_checkpoint(ckpt, hparams_file=hparams)
    assert_untouched(before, tmp_path, listener, no_downloads)


@pytest.mark.hostile("construction")
def test_hparams_file_with_a_python_tag_runs_nothing(tmp_path):
    """Lightning reads ``hparams_file`` with ``yaml.full_load``; ours with ``yaml.safe_load``."""
    ckpt = copy_checkpoint(tmp_path / "ck")
    marker = tmp_path / "ran"
    path = tmp_path / "hparams.yaml"
    path.write_text(f"model: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path "
                    f"['{marker}']]\nlr: 0.1\n")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        RobustClassifier.load_from_checkpoint(ckpt, hparams_file=path)
    assert not marker.exists()


def test_a_plain_hparams_file_still_replaces_the_stored_hyperparameters(tmp_path, digits):
    ckpt = copy_checkpoint(tmp_path / "ck")
    module = RobustClassifier.load_from_checkpoint(ckpt, hparams_file=_hparams_yaml(tmp_path, lr=0.25))
    reference = RobustClassifier.load_from_checkpoint(ckpt)
    assert module.hparams.lr == 0.25 and module.hparams.test_attack_steps == 50
    x, _ = digits.test_tensors()
    with torch.no_grad():
        assert torch.equal(module.model(x[:16]), reference.model(x[:16]))


@pytest.mark.hostile("construction")
@pytest.mark.parametrize("command", ["evaluate", "certify", "audit", "export"])
def test_every_checkpoint_command_refuses_a_store_in_the_model_spec(command, tmp_path, listener, capsys):
    db = foreign_db(tmp_path)
    path = hostile(tmp_path, model={"class_path": STORE, "init_args": {"url": f"sqlite:///{db}"}})
    extra = ["--method", "ibp"] if command == "certify" else []
    before = snapshot(db, path)
    outcome = run([command, *extra, "--checkpoint", path, "--data", "digits", "--n-examples", "8",
                   "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "hostile.ckpt", "hyper_parameters.model", STORE, "outside the allowlist")
    assert snapshot(db, path) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))


def _recipe(tmp: Path, section: str, value) -> Path:
    path = tiny_fit_config(tmp / "evil.yaml", epochs=1, logger=False, default_root_dir=str(tmp / "run"))
    config = yaml.safe_load(path.read_text())
    if section == "data":
        config["data"] = value
    else:
        config["model"][section] = value
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.hostile("construction")
@pytest.mark.parametrize(("command", "section", "case"), [
    ("fit", "model", "store-sqlite"),
    ("validate", "model", "lightning-wandb-logger"),
    ("test", "model", "torchvision-weights-default"),
    ("fit", "model", "store-postgres"),
    ("fit", "method", "store-sqlite"),
    ("fit", "data", "store-sqlite"),
], ids=["fit-store", "validate-wandb-logger", "test-torchvision-weights", "fit-postgres", "fit-method-store",
        "fit-data-store"])
def test_a_recipe_model_section_gets_the_narrow_allowlist(command, section, case, tmp_path, listener, no_downloads,
                                                          capsys):
    foreign_db(tmp_path)
    path = _recipe(tmp_path, section, model_specs(tmp_path, listener.port)[case])
    before = snapshot(tmp_path)
    outcome = run([command, "--config", path], capsys)
    what = "pretrained weights" if "weights" in case else "outside the allowlist"
    assert_refused(outcome, "evil.yaml", f"{section}.model" if section == "model" else section, what)
    assert_untouched(before, tmp_path, listener, no_downloads)


@pytest.mark.hostile("construction")
def test_command_line_values_are_checked_before_anything_is_built(tmp_path, listener, no_downloads, capsys):
    """``--model.model`` given on the command line passes no config check; the parsed model section is
    checked before LightningCLI builds it."""
    foreign_db(tmp_path)
    path = tiny_fit_config(tmp_path / "ok.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    before = snapshot(tmp_path)
    outcome = run(["fit", "--config", path, "--model.model", "torchvision.models.resnet18",
                   "--model.model.init_args.weights", "DEFAULT"], capsys)
    assert_refused(outcome, "model.model.init_args.weights", "pretrained weights")
    assert_untouched(before, tmp_path, listener, no_downloads)


@pytest.mark.hostile("construction")
def test_evaluate_config_data_section_is_a_data_module(tmp_path, listener, capsys):
    """``robust evaluate --config`` builds the recipe's data section: it must be a data module."""
    db = foreign_db(tmp_path)
    recipe = _recipe(tmp_path, "data", {"class_path": STORE, "init_args": {"url": f"sqlite:///{db}"}})
    ckpt = copy_checkpoint(tmp_path / "ck")
    before = snapshot(tmp_path)
    outcome = run(["evaluate", "--checkpoint", ckpt, "--config", recipe, "--n-examples", "8",
                   "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, STORE, "outside the allowlist for data modules")
    assert snapshot(tmp_path) == before


def _planted(tmp: Path) -> Path:
    """A run folder with a malicious ``last.ckpt`` (its model spec names a Store on ``other.db``)."""
    db = foreign_db(tmp)
    folder = tmp / "run" / "old-run-id" / "checkpoints"
    folder.mkdir(parents=True)
    return hostile(folder, "last.ckpt", model={"class_path": STORE, "init_args": {"url": f"sqlite:///{db}"}})


@pytest.mark.hostile("construction")
@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_ckpt_path_last_is_resolved_and_checked(command, tmp_path, capsys):
    planted = _planted(tmp_path)
    path = tiny_fit_config(tmp_path / "ok.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    before = snapshot(tmp_path)
    outcome = run([command, "--config", path, "--ckpt_path", "last"], capsys)
    assert_refused(outcome, str(planted), "hyper_parameters.model", "outside the allowlist")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("construction")
@pytest.mark.parametrize("option", ["--ckpt_pat", "--ckpt", "--ckpt_path=", "--conf"],
                         ids=["ckpt_pat", "ckpt", "ckpt_path-equals", "conf"])
def test_abbreviated_or_inline_options_do_not_skip_the_check(option, tmp_path, capsys):
    planted = _planted(tmp_path)
    path = tiny_fit_config(tmp_path / "ok.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    before = snapshot(tmp_path)
    if option == "--conf":
        evil = _recipe(tmp_path, "model", {"class_path": STORE, "init_args": {"url": str(tmp_path / "new.db")}})
        before = snapshot(tmp_path)
        outcome = run(["fit", "--config", path, "--conf", evil], capsys)
        assert_refused(outcome, "--conf")
    elif option.endswith("="):
        outcome = run(["test", "--config", path, f"{option}{planted}"], capsys)
        assert_refused(outcome, str(planted), "outside the allowlist")
    else:
        outcome = run(["test", "--config", path, option, planted], capsys)
        assert_refused(outcome, option)
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("construction")
def test_ckpt_path_inside_the_config_is_checked(tmp_path, capsys):
    planted = _planted(tmp_path)
    path = tiny_fit_config(tmp_path / "ok.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    config = yaml.safe_load(path.read_text())
    config["ckpt_path"] = str(planted)
    path.write_text(yaml.safe_dump(config))
    before = snapshot(tmp_path)
    outcome = run(["validate", "--config", path], capsys)
    assert_refused(outcome, str(planted), "outside the allowlist")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("construction")
@pytest.mark.parametrize(("role", "path"), [
    ("model", "robust.leaderboard.store.Store"), ("model", "robust.tracking.WandbLogger"),
    ("model", "torch.nn.functional.relu"), ("model", "torch.nn.utils.clip_grad_norm_"),
    ("model", "torch.nn.Parameter"), ("model", "torchvision.models.ResNet18_Weights"),
    ("model", "torchvision.models.detection.fasterrcnn_resnet50_fpn"), ("model", "torch.hub.load"),
    ("method", "robust.methods.base.Method"), ("method", "robust.models.CNNSmall"),
    ("threat", "robust.methods.PGD"), ("data", "robust.leaderboard.Store"),
    ("data", "robust.data.registry.create_datamodule"),
])
def test_roles_refuse_from_the_text_alone(role, path):
    with pytest.raises(spec.SpecError, match="outside the allowlist"):
        spec.check_role({"class_path": path, "init_args": {}}, role, role)
    with pytest.raises(spec.SpecError, match="outside the allowlist"):
        spec.build({"class_path": path, "init_args": {}}, role=role)


@pytest.mark.parametrize(("role", "value"), [
    ("model", {"class_path": "robust.models.create", "init_args": {"name": "cnn_small", "num_classes": 10}}),
    ("model", {"class_path": "robust.models.cnn.CNNSmall", "init_args": {"num_classes": 10}}),
    ("model", {"class_path": "torch.nn.Linear", "init_args": {"in_features": 4, "out_features": 2}}),
    ("model", {"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10, "weights": None}}),
    ("method", {"class_path": "robust.methods.ibp.IBP", "init_args": {"eps": 0.1}}),
    ("method", {"class_path": "robust.methods.PGD",
                "init_args": {"threat": {"class_path": "robust.base.threat.ThreatModel",
                                         "init_args": {"norm": "linf", "eps": 0.1}}}}),
    ("threat", {"class_path": "robust.threat.ThreatModel", "init_args": {"norm": "l2", "eps": 0.5}}),
    ("data", {"class_path": "robust.data.Digits", "init_args": {"batch_size": 8}}),
], ids=["create", "submodule-class", "torch-layer", "torchvision", "old-ibp-path", "pgd-with-threat", "threat",
        "digits"])
def test_what_a_role_allows_still_builds(role, value):
    assert spec.build(value, role=role) is not None


def test_the_explicit_allowlists_match_the_packages():
    """Every model, method and data module the packages export is in its role's list, and nothing else."""
    from torch import nn

    from robust import data, methods, models
    from robust.data import RobustDataModule, TorchvisionDataModule
    from robust.methods import Method

    def exported(package, base):
        return {name for name in package.__all__ if inspect.isclass(getattr(package, name))
                and issubclass(getattr(package, name), base)}

    assert exported(models, nn.Module) == spec.MODEL_CLASSES
    assert exported(methods, Method) - {"Method"} == spec.METHOD_CLASSES
    assert exported(data, RobustDataModule) - {"RobustDataModule", "TorchvisionDataModule"} == spec.DATA_CLASSES
    assert TorchvisionDataModule not in {getattr(data, n) for n in spec.DATA_CLASSES}


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_passes_the_narrow_check(recipe):
    spec.check_recipe(yaml.safe_load(recipe.read_text()))


def test_a_model_built_from_pretrained_weights_is_stored_without_the_download(tmp_path):
    """The checkpoint holds the weights; its spec says ``weights=None``, so it loads again."""
    from robust.models import create

    model = create("cnn_small", 10, in_channels=1, input_size=8)
    model._robust_spec["init_args"].update(weights="DEFAULT", pretrained=True)  # as create(..., weights=...) records
    module = RobustClassifier(model)
    stored = module.hparams["model"]["init_args"]
    assert stored["weights"] is None and stored["pretrained"] is None and stored["name"] == "cnn_small"
    spec.check_stored(dict(module.hparams))
