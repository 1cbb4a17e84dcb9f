"""Classes 6 and 7 of the hostile-input corpus, for checkpoints and weight files.

Corruption: a checkpoint whose tensor bytes changed after it was written (a failed zip CRC-32, which
torch's memory-mapped loading never checks: it evaluated at 10.9% instead of 87.5%) or whose weights
are NaN/inf is refused with one line naming the file and the record or tensor, before any number is
computed, in every command and the Python API. Tracebacks: weights that do not fit the model
(architecture, class count, input size, empty), a recipe whose class count differs from the data's
and an unwritable ``--results`` each end in one ``robust: error: ...`` line with exit 2, before any
long work.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import tiny_fit_config
from hostile import LEGACY_CHECKPOINT, assert_refused, copy_checkpoint, run, snapshot

from robust.base.safe_load import CorruptFileError, load_weights_only
from robust.module import CheckpointError, RobustClassifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

COMMANDS = {  # command -> options that get it as far as loading the model
    "evaluate": ["--data", "digits", "--n-examples", "8", "--no-audit", "--no-progress"],
    "certify": ["--method", "ibp", "--data", "digits", "--n-examples", "8", "--no-progress"],
    "audit": ["--data", "digits", "--n-examples", "8", "--no-progress", "--no-corruptions"],
    "export": ["--data", "digits", "--n-examples", "8"],
}


def flip_tensor_bytes(path: Path, count: int = 16) -> str:
    """Invert ``count`` bytes in the middle of the largest tensor record of a zip checkpoint, in place
    (the zip's directory and CRCs untouched); return the record's name."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(start, start + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return info.filename


def edited(folder: Path, name: str, edit) -> Path:
    """A copy of the committed checkpoint after ``edit(checkpoint_dict)``."""
    ckpt = torch.load(LEGACY_CHECKPOINT, weights_only=True)
    edit(ckpt)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(ckpt, path)
    return path


def weights_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The network's state dict in a checkpoint, as a ``--weights`` file holds it."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


def with_nan(ckpt: dict, value: float = float("nan"), key: str = "model.0.weight", n: int = 3) -> None:
    ckpt["state_dict"][key].view(-1)[:n] = value


def assert_nothing_written(tmp: Path, before: dict) -> None:
    after = snapshot(tmp)
    assert {k for k in after if k not in before and not k.endswith("/out")} == set(), sorted(set(after) - set(before))


# --- corruption ---------------------------------------------------------------------------------


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_flipped_tensor_bytes_are_refused_by_every_command(command, tmp_path, capsys):
    path = copy_checkpoint(tmp_path / "ck", "flipped.ckpt")
    record = flip_tensor_bytes(path)
    before = snapshot(tmp_path)
    outcome = run([command, "--checkpoint", path, *COMMANDS[command], "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "flipped.ckpt", "CRC-32", record.split("/", 1)[1])
    assert_nothing_written(tmp_path, before)


@pytest.mark.hostile("corruption")
def test_flipped_bytes_would_otherwise_load_silently(tmp_path):
    """The corruption is real and invisible to torch: the mmap load succeeds with other weights."""
    path = copy_checkpoint(tmp_path, "flipped.ckpt")
    flip_tensor_bytes(path)
    damaged = torch.load(path, weights_only=True, mmap=True)["state_dict"]
    original = torch.load(LEGACY_CHECKPOINT, weights_only=True)["state_dict"]
    assert any(not torch.equal(damaged[k], original[k]) for k in original)
    with pytest.raises(CheckpointError, match=r"flipped\.ckpt: the checkpoint is corrupt: record .* CRC-32"):
        RobustClassifier.load_from_checkpoint(path)


@pytest.mark.hostile("corruption")
def test_flipped_bytes_are_refused_by_lightning_commands(tmp_path, capsys):
    path = copy_checkpoint(tmp_path / "ck", "flipped.ckpt")
    flip_tensor_bytes(path)
    config = tiny_fit_config(tmp_path / "tiny.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    before = snapshot(tmp_path)
    outcome = run(["test", "--config", config, "--ckpt_path", path], capsys)
    assert_refused(outcome, "flipped.ckpt", "CRC-32")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("corruption")
def test_flipped_bytes_in_a_weights_file_are_refused(tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save(weights_of(LEGACY_CHECKPOINT), weights)
    flip_tensor_bytes(weights)
    outcome = run(["evaluate", "--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}',
                   "--weights", weights, "--data", "digits", "--n-examples", "8", "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "weights.pt", "CRC-32")


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_nan_weights_are_refused_naming_the_tensor(command, tmp_path, capsys):
    path = edited(tmp_path / "ck", "nan.ckpt", with_nan)
    before = snapshot(tmp_path)
    outcome = run([command, "--checkpoint", path, *COMMANDS[command], "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "nan.ckpt", "model.0.weight has 3 non-finite values")
    assert_nothing_written(tmp_path, before)


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize(("value", "key", "n"), [(float("inf"), "model.7.bias", 1),
                                                 (float("-inf"), "model.5.weight", 7),
                                                 (float("nan"), "model.2.bias", 32)],
                         ids=["inf-bias", "minus-inf-weight", "all-nan"])
def test_non_finite_weights_are_refused_by_the_python_api(value, key, n, tmp_path):
    path = edited(tmp_path, "bad.ckpt", lambda c: with_nan(c, value, key, n))
    with pytest.raises(CheckpointError, match=rf"bad\.ckpt: {key} has {n} non-finite values"):
        RobustClassifier.load_from_checkpoint(path)


@pytest.mark.hostile("corruption")
def test_nan_weights_are_refused_by_lightning_commands(tmp_path, capsys):
    path = edited(tmp_path / "ck", "nan.ckpt", with_nan)
    config = tiny_fit_config(tmp_path / "tiny.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    before = snapshot(tmp_path)
    outcome = run(["validate", "--config", config, "--ckpt_path", path], capsys)
    assert_refused(outcome, "nan.ckpt", "model.0.weight has 3 non-finite values")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("corruption")
def test_nan_in_a_weights_file_is_refused(tmp_path, capsys):
    state = weights_of(LEGACY_CHECKPOINT)
    state["5.weight"][0, :4] = float("nan")
    weights = tmp_path / "weights.pt"
    torch.save(state, weights)
    with pytest.raises(CorruptFileError, match=r"5\.weight has 4 non-finite values"):
        load_weights_only(weights, "weights file")
    outcome = run(["evaluate", "--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}',
                   "--weights", weights, "--data", "digits", "--n-examples", "8", "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "weights.pt", "5.weight has 4 non-finite values")


# --- tracebacks: weights that do not fit, a recipe that does not fit its data, unwritable results ---------


def _other_classes(ckpt: dict) -> None:
    ckpt["state_dict"]["model.7.weight"] = torch.zeros(3, 100)
    ckpt["state_dict"]["model.7.bias"] = torch.zeros(3)


def _other_architecture(ckpt: dict) -> None:
    ckpt["hyper_parameters"]["model"]["init_args"]["name"] = "cnn_medium"


def _other_input_size(ckpt: dict) -> None:
    ckpt["hyper_parameters"]["model"]["init_args"]["input_size"] = 16


def _empty(ckpt: dict) -> None:
    ckpt["state_dict"] = {}


MISMATCHES = {
    "architecture": (_other_architecture, "missing keys"),
    "class-count": (_other_classes, "model.7.weight [3, 100] in the file, [10, 100] in the model"),
    "input-size": (_other_input_size, "shape mismatch model.5.weight [100, 288] in the file"),
    "empty": (_empty, "state dict is empty"),
}


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("case", sorted(MISMATCHES))
@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_weights_that_do_not_fit_give_one_line(command, case, tmp_path, capsys):
    edit, message = MISMATCHES[case]
    path = edited(tmp_path / "ck", f"{case}.ckpt", edit)
    before = snapshot(tmp_path)
    outcome = run([command, "--checkpoint", path, *COMMANDS[command], "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, f"{case}.ckpt", "do not fit the model", message)
    assert_nothing_written(tmp_path, before)


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("command", ["audit", "export"])
def test_weights_that_do_not_fit_give_one_line_in_audit_and_export(command, tmp_path, capsys):
    path = edited(tmp_path / "ck", "classes.ckpt", _other_classes)
    outcome = run([command, "--checkpoint", path, *COMMANDS[command], "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "classes.ckpt", "model.7.weight [3, 100] in the file")


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("command", ["validate", "test"])
def test_weights_that_do_not_fit_give_one_line_in_lightning_commands(command, tmp_path, capsys):
    path = edited(tmp_path / "ck", "empty.ckpt", _empty)
    config = tiny_fit_config(tmp_path / "tiny.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    outcome = run([command, "--config", config, "--ckpt_path", path], capsys)
    assert_refused(outcome, "empty.ckpt", "state dict is empty")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.*"))


@pytest.mark.hostile("traceback")
def test_weights_file_that_does_not_fit_names_the_keys(tmp_path, capsys):
    weights = tmp_path / "small.pt"
    torch.save(weights_of(LEGACY_CHECKPOINT), weights)
    outcome = run(["evaluate", "--model", "cnn_medium", "--model-args", '{"in_channels": 1, "input_size": 8}',
                   "--weights", weights, "--data", "digits", "--n-examples", "8", "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "small.pt", "does not fit cnn_medium", "shape mismatch 0.weight")


@pytest.mark.hostile("traceback")
def test_python_api_names_the_mismatched_keys(tmp_path):
    path = edited(tmp_path, "classes.ckpt", _other_classes)
    with pytest.raises(CheckpointError, match=r"classes\.ckpt: the weights do not fit the model \(CNNSmall\): shape "
                                              r"mismatch model\.7\.weight \[3, 100\]"):
        RobustClassifier.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="model.7.weight"):
        RobustClassifier.load_from_checkpoint(path, strict=False)  # a shape never fits, strict or not


@pytest.mark.hostile("traceback")
def test_checkpoint_without_hyperparameters_gives_one_line(tmp_path, capsys):
    path = edited(tmp_path, "bare.ckpt", lambda c: c.pop("hyper_parameters"))
    outcome = run(["evaluate", "--checkpoint", path, *COMMANDS["evaluate"], "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "bare.ckpt")


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize(("classes", "channels", "size", "message"), [
    (3, 1, 8, "has 3 outputs but Digits has 10 classes"),
    (10, 3, 8, "does not take the images of Digits (1x8x8)"),
    (10, 1, 28, "does not take the images of Digits (1x8x8)"),
], ids=["num-classes-3", "three-channels", "input-size-28"])
def test_a_recipe_that_does_not_fit_its_data_fails_before_training(classes, channels, size, message, tmp_path,
                                                                   capsys):
    path = tiny_fit_config(tmp_path / "tiny.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    config = yaml.safe_load(path.read_text())
    config["model"]["model"]["init_args"].update(num_classes=classes, in_channels=channels, input_size=size)
    path.write_text(yaml.safe_dump(config))
    outcome = run(["fit", "--config", path], capsys)
    assert_refused(outcome, message)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.*"))


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("command", ["validate", "test"])
@pytest.mark.parametrize("where", ["below-a-file", "a-folder"])
def test_unwritable_results_are_refused_before_the_run(command, where, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    results = tmp_path / "afile" / "results.json" if where == "below-a-file" else tmp_path
    config = tiny_fit_config(tmp_path / "tiny.yaml", epochs=1, logger=False, default_root_dir=str(tmp_path / "run"))
    ckpt = copy_checkpoint(tmp_path / "ck")
    before = snapshot(tmp_path)
    outcome = run([command, "--config", config, "--ckpt_path", ckpt, "--results", results], capsys)
    assert_refused(outcome, "--results", str(results))
    assert_nothing_written(tmp_path, before)
    assert outcome.out.strip() == ""  # no metrics table: nothing ran


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize(("name", "content", "message"), [
    ("hp.txt", "lr: 0.1\n", "a .yaml, .yml or .csv file is required"),
    ("hp.yaml", "model: [unclosed\n", "not valid YAML"),
    ("hp.yaml", "- 1\n- 2\n", "expected a mapping"),
    ("missing.yaml", None, "hparams_file not found"),
], ids=["extension", "bad-yaml", "a-list", "missing"])
def test_bad_hparams_files_give_one_line(name, content, message, tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ck")
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises((CheckpointError, FileNotFoundError), match=message):
        RobustClassifier.load_from_checkpoint(ckpt, hparams_file=path)


def test_the_committed_checkpoint_still_loads_and_verifies(tmp_path):
    path = copy_checkpoint(tmp_path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    assert RobustClassifier.load_from_checkpoint(path).model.training is not None


def test_the_python_api_checks_the_data_in_setup(digits):
    """A Trainer of one's own meets the same check when the module is set up, before the first step."""
    import lightning.pytorch as pl

    from robust.models import create
    from robust.module import DataMismatchError

    module = RobustClassifier(create("cnn_small", 3, in_channels=1, input_size=8))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(DataMismatchError, match="has 3 outputs but Digits has 10 classes"):
        trainer.fit(module, datamodule=digits)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
