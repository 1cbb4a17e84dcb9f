"""Files from elsewhere are loaded without running code from them.

A pickle whose payload would create a marker file is refused (and the marker never appears)
wherever a ``.ckpt``/``.pt`` is loaded; a checkpoint or config naming a ``class_path`` outside the
allowlist is refused before the module it names is imported (its import would write a marker).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import fit_checkpoint
from conftest import RECIPES

from robust.base import spec
from robust.base.safe_load import UnsafeFileError, check_checkpoint, load_weights_only
from robust.base.threat import ThreatModel
from robust.cli import main
from robust.methods import PGD
from robust.module import RobustClassifier

EVIL_MODULE = "robust_test_evil_module"


class Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("ckpt")
    return fit_checkpoint(PGD(ThreatModel("linf", 0.1), steps=2), digits, tmp / "model.ckpt", epochs=1)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    assert not path.exists()
    return path


@pytest.fixture
def evil_module(tmp_path, monkeypatch, marker):
    """A module on sys.path whose import writes ``marker``; returns a class path inside it."""
    (tmp_path / f"{EVIL_MODULE}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)
    yield f"{EVIL_MODULE}.Net"
    sys.modules.pop(EVIL_MODULE, None)


def not_imported(marker: Path) -> bool:
    return not marker.exists() and EVIL_MODULE not in sys.modules


def test_the_payload_does_run_without_weights_only(tmp_path, marker):
    """The fixture is a real exploit: a plain ``torch.load`` runs it (so the tests below mean something)."""
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def _evil_checkpoint(checkpoint: Path, tmp_path: Path, marker: Path) -> Path:
    """The real checkpoint with a payload hidden in its hyperparameters."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["method"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path


def test_evaluate_refuses_a_malicious_checkpoint(checkpoint, tmp_path, marker, capsys):
    evil = _evil_checkpoint(checkpoint, tmp_path, marker)
    rc = main(["evaluate", "--checkpoint", str(evil), "--data", "digits", "--n-examples", "10", "--no-audit",
               "--no-progress", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and "refused" in err[-1] and "posix.system" in err[-1], err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["certify", "audit", "export"])
def test_every_command_that_loads_a_checkpoint_refuses_it(command, checkpoint, tmp_path, marker, capsys):
    evil = _evil_checkpoint(checkpoint, tmp_path, marker)
    extra = ["--method", "ibp"] if command == "certify" else []
    rc = main([command, *extra, "--checkpoint", str(evil), "--data", "digits", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and "refused" in err[-1], err
    assert not marker.exists()


def test_load_from_checkpoint_refuses_a_malicious_checkpoint(checkpoint, tmp_path, marker):
    evil = _evil_checkpoint(checkpoint, tmp_path, marker)
    with pytest.raises(ValueError, match="refused|weights_only"):
        RobustClassifier.load_from_checkpoint(evil)
    assert not marker.exists()


def test_weights_files_are_loaded_weights_only(tmp_path, marker, capsys):
    evil = tmp_path / "weights.pt"
    torch.save(Payload(marker), evil)
    with pytest.raises(UnsafeFileError, match="posix.system"):
        load_weights_only(evil, "weights file")
    rc = main(["evaluate", "--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}',
               "--weights", str(evil), "--data", "digits", "--eps", "0.1", "--out", str(tmp_path / "out")])
    assert rc == 2 and "refused" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"],
                         ids=["empty", "text", "truncated-zip"])
def test_garbage_files_give_one_line(content, tmp_path, capsys):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    rc = main(["evaluate", "--checkpoint", str(path), "--data", "digits", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and "bad.ckpt" in err[-1], err


def _foreign_class_checkpoint(checkpoint, tmp_path, class_path, instantiator):
    """A copy of ``checkpoint`` whose model spec names ``class_path`` (with Lightning's
    ``_instantiator``, which makes Lightning hand the hyperparameters to jsonargparse)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["model"] = {"class_path": class_path, "init_args": {}}
    if instantiator:
        ckpt["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    path = tmp_path / "foreign-class.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("instantiator", [False, True], ids=["plain", "with-lightning-instantiator"])
def test_checkpoint_class_path_outside_the_allowlist_is_refused_before_import(
        instantiator, checkpoint, tmp_path, evil_module, marker, capsys):
    """With ``_instantiator`` in its hyperparameters Lightning hands them to jsonargparse, which
    imports whatever ``class_path`` says: the check must come before Lightning sees the file."""
    path = _foreign_class_checkpoint(checkpoint, tmp_path, evil_module, instantiator)
    with pytest.raises(spec.SpecError, match="hyper_parameters.model: class_path .* outside the allowlist"):
        check_checkpoint(path)
    assert not_imported(marker)
    rc = main(["evaluate", "--checkpoint", str(path), "--data", "digits", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and "outside the allowlist" in err[-1], err
    assert not_imported(marker)


@pytest.mark.parametrize("instantiator", [False, True], ids=["plain", "with-lightning-instantiator"])
def test_load_from_checkpoint_refuses_a_foreign_class_path_before_import(instantiator, checkpoint, tmp_path,
                                                                         evil_module, marker):
    path = _foreign_class_checkpoint(checkpoint, tmp_path, evil_module, instantiator)
    with pytest.raises(ValueError, match="outside the allowlist"):
        RobustClassifier.load_from_checkpoint(path)
    assert not_imported(marker)


def test_nested_class_path_is_refused_before_the_outer_one_is_built(evil_module, marker):
    value = {"class_path": "robust.methods.PGD",
             "init_args": {"threat": {"class_path": evil_module, "init_args": {}}}}
    with pytest.raises(spec.SpecError, match="init_args.threat: class_path .* outside the allowlist"):
        spec.build(value)
    assert not_imported(marker)


def test_allowlisted_module_cannot_be_used_to_call_a_function(tmp_path):
    """``robust.*`` is allowlisted for classes (and ``robust.models.create``), not for any function in it:
    a spec naming a file-writing helper is refused and nothing is written."""
    target = tmp_path / "written.json"
    with pytest.raises(spec.SpecError, match="not a class"):
        spec.build({"class_path": "robust.reports.files.write_json",
                    "init_args": {"obj": {"a": 1}, "path": str(target)}})
    assert not target.exists()


def _recipe(tmp_path: Path, **model_model) -> Path:
    config = yaml.safe_load((RECIPES / "digits/pgd_cnnmedium.yaml").read_text())
    config["trainer"]["logger"] = False
    config["model"]["model"] = model_model
    path = tmp_path / "foreign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_class_path_outside_the_allowlist_is_refused_before_import(tmp_path, evil_module, marker,
                                                                           monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _recipe(tmp_path, class_path=evil_module, init_args={})
    rc = main(["fit", "--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and "model.model" in err[-1], err
    assert "outside the allowlist" in err[-1] and len(err) == 1
    assert not_imported(marker)
    assert not any(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("form", ["class-name", "class_path-key", "inline-config"])
def test_command_line_class_path_outside_the_allowlist_is_refused_before_import(form, tmp_path, evil_module, marker,
                                                                                monkeypatch, capsys):
    """Values given on the command line go through jsonargparse's import policy, set to the same allowlist."""
    monkeypatch.chdir(tmp_path)
    config = _recipe(tmp_path, class_path="robust.models.CNNSmall",
                     init_args={"num_classes": 10, "in_channels": 1, "input_size": 8})
    args = {"class-name": ["--model.model", evil_module],
            "class_path-key": ["--model.model.class_path", evil_module],
            "inline-config": ["--config", f'{{"model": {{"model": {{"class_path": "{evil_module}"}}}}}}']}[form]
    try:
        rc = main(["fit", "--config", str(config), *args, "--trainer.fast_dev_run", "true"])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:"), err
    assert not_imported(marker)
