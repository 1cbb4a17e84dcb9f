"""Hostile corpus: plausible-but-wrong values of the shared options (device, output folder, model
arguments, data options) and broken ``--npz`` files, through every measuring command.

Each refused case ends in one ``robust: error: ...`` line with exit status 2 that names the bad value,
before any work: no output folder is made and no file of the test's world changes. The cases the help
text promises (an npz with only ``x_test``/``y_test``, ``--split val`` where a file defines it) run.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hostile import assert_refused, copy_checkpoint, run, snapshot

TRACEBACK = pytest.mark.hostile("traceback")
CORRUPTION = pytest.mark.hostile("corruption")
FAST = ["--attacks", "fgsm", "--no-audit", "--no-progress", "--n-examples", "4"]
MODEL_8 = '{"in_channels": 1, "input_size": 8}'


def _images(n: int, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def _labels(n: int, classes: int = 10) -> np.ndarray:
    return np.arange(n) % classes


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_world(root: Path) -> None:
    """The npz files, recipes and plain files the cases point at."""
    x, y = _images(20), _labels(20)
    arrays = {
        "test_only": {"x_test": x, "y_test": y},
        "train_only": {"x_train": x, "y_train": y},
        "xy": {"x": _images(30), "y": _labels(30)},
        "rgb32": {"x_test": _images(20, (3, 32, 32)), "y_test": y},
        "gray28": {"x_test": _images(20, (1, 28, 28)), "y_test": y},
        "twenty_classes": {"x_test": x, "y_test": _labels(20, 20)},
        "nan": {"x_test": np.where(x > 0.5, np.nan, x).astype(np.float32), "y_test": y},
        "inf": {"x_test": np.where(x > 0.5, np.inf, x).astype(np.float32), "y_test": y},
        "negative_labels": {"x_test": x, "y_test": y - 1},
        "normalised": {"x_test": (x - 0.5) / 0.25, "y_test": y},
        "huge_label": {"x_test": x, "y_test": np.full(20, 2**62, np.uint64)},
        "float_labels": {"x_test": x, "y_test": y + 0.5},
        "int32_images": {"x_test": (x * 255).astype(np.int32), "y_test": y},
        "length_mismatch": {"x_test": x, "y_test": y[:19]},
        "empty": {"x_test": x[:0], "y_test": y[:0]},
        "non_square": {"x_test": _images(20, (1, 8, 6)), "y_test": y},
        "nhw": {"x_test": x[:, 0], "y_test": y},
        "no_labels": {"x_test": x},
        "mixed": {"x": x, "y": y, "x_test": x, "y_test": y},
        "labels_2d": {"x_test": x, "y_test": y[:, None]},
    }
    for name, content in arrays.items():
        np.savez(root / f"{name}.npz", **content)
    np.savez(root / "objects.npz", x_test=np.array([{"a": 1}] * 20, dtype=object), y_test=y)
    whole = (root / "test_only.npz").read_bytes()
    (root / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with zipfile.ZipFile(root / "short_member.npz", "w") as archive:  # a valid zip whose x_test lost its tail
        archive.writestr("x_test.npy", _npy(x)[:-100])
        archive.writestr("y_test.npy", _npy(y))
    flipped = bytearray(whole)
    flipped[400] ^= 0xFF  # inside x_test's data: the zip CRC no longer matches
    (root / "flipped.npz").write_bytes(bytes(flipped))
    np.save(root / "single.npy", x)
    (root / "afile").write_text("not a folder\n")
    (root / "folder").mkdir()
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "garbage.yaml").write_text("data: [unclosed\n  - : :")
    recipe = {"data": {"class_path": "robust.data.Npz", "init_args": {"path": str(root / "test_only.npz"),
                                                                     "num_classes": 12}}}
    (root / "twelve_classes.yaml").write_text(yaml.safe_dump(recipe))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-options")
    copy_checkpoint(root)
    _write_world(root)
    return root


def _argv(world: Path, command: str, extra: list[str], out: Path) -> list[str]:
    """``robust <command>`` on the committed checkpoint with tiny settings, then ``extra`` (placed last)."""
    ckpt = str(world / "model.ckpt")
    base = {
        "evaluate": ["evaluate", "--checkpoint", ckpt, *FAST, "--fresh"],
        "certify": ["certify", "--method", "ibp", "--checkpoint", ckpt, "--attack", "none", "--no-progress",
                    "--n-examples", "4", "--fresh"],
        "audit": ["audit", "--checkpoint", ckpt, "--attacks", "fgsm", "--no-corruptions", "--smoothing-n", "32",
                  "--no-progress", "--n-examples", "4"],
        "export": ["export", "--checkpoint", ckpt, "--formats", "torchscript", "--n-examples", "4"],
    }[command]
    if "--model" in extra:  # a registry model instead of the checkpoint
        i = base.index("--checkpoint")
        base = base[:i] + base[i + 2:] + ["--eps", "0.1"]
    if "--out" not in extra:
        extra = [*extra, "--out", str(out)]
    return [*base, *(a.replace("{root}", str(world)) for a in extra)]


def _refused(world: Path, tmp_path: Path, capsys, command: str, extra: list[str], *mentions: str) -> None:
    """The command is refused with one line naming ``mentions``; nothing in the world changed and no
    output folder was made."""
    out = tmp_path / "out"
    before = snapshot(world)
    outcome = run(_argv(world, command, extra, out), capsys)
    assert_refused(outcome, *mentions)
    assert snapshot(world) == before
    assert not out.exists()


def _runs(world: Path, tmp_path: Path, capsys, extra: list[str]) -> tuple[dict, str]:
    """``robust evaluate`` with ``extra`` succeeds; its report and stderr."""
    out = tmp_path / "out"
    outcome = run(_argv(world, "evaluate", extra, out), capsys)
    assert outcome.code == 0, outcome.err[-2000:]
    return json.loads((out / "report.json").read_text()), outcome.err


# -- --device ---------------------------------------------------------------------------------------

DEVICES = [
    pytest.param("foo", "'foo' is not a device name", id="foo"),
    pytest.param("meta", "meta", id="meta"),
    pytest.param("mps", "mps", id="mps", marks=pytest.mark.skipif(torch.backends.mps.is_available(),
                                                                  reason="mps runs here")),
    pytest.param("cuda:99", "cuda:99", id="cuda-99"),
    pytest.param("cpu:0:1", "'cpu:0:1' is not a device name", id="cpu-0-1"),
    pytest.param("cuda:-1", "'cuda:-1'", id="cuda-minus-1"),
    pytest.param("", "is not a device name", id="empty"),
]


@TRACEBACK
@pytest.mark.parametrize("device, mention", DEVICES)
def test_device_that_cannot_run_is_refused(world, tmp_path, capsys, device, mention):
    _refused(world, tmp_path, capsys, "evaluate", ["--data", "digits", "--device", device], mention, "choose one of")


@TRACEBACK
@pytest.mark.parametrize("command", ["certify", "audit"])
def test_meta_device_is_refused_by_every_command(world, tmp_path, capsys, command):
    _refused(world, tmp_path, capsys, command, ["--data", "digits", "--device", "meta"], "meta", "cpu")


# -- --out ------------------------------------------------------------------------------------------

@TRACEBACK
@pytest.mark.parametrize("command", ["evaluate", "certify", "audit", "export"])
def test_out_naming_a_file_is_refused_before_any_work(world, tmp_path, capsys, command):
    _refused(world, tmp_path, capsys, command, ["--data", "digits", "--out", "{root}/afile"], "afile")


@TRACEBACK
@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_out_inside_a_file_is_refused(world, tmp_path, capsys, command):
    _refused(world, tmp_path, capsys, command, ["--data", "digits", "--out", "{root}/afile/sub"], "afile", "file")


def _unwritable(tmp_path: Path) -> Path:
    """A folder no one may write in: a read-only folder, or (for root, who may write anywhere) /proc."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "out"
    if not Path("/proc/self").is_dir():
        pytest.skip("no folder here that root cannot write in")
    return Path("/proc/robust-hostile-out")


@TRACEBACK
def test_unwritable_out_is_refused_before_any_work(world, tmp_path, capsys):
    target = _unwritable(tmp_path)
    _refused(world, tmp_path, capsys, "evaluate", ["--data", "digits", "--out", str(target)], "cannot write",
             str(target))
    assert not target.exists()


@TRACEBACK
def test_out_that_is_a_dangling_link_is_refused(world, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    _refused(world, tmp_path, capsys, "evaluate", ["--data", "digits", "--out", str(link)], "link")


# -- --model / --model-args -------------------------------------------------------------------------

MODEL_ARGS = [
    pytest.param("cnn_small", '{"width": "x"}', ("'width'", "in_channels", "input_size"), id="unknown-keyword"),
    pytest.param("cnn_small", '{"in_channels": 1, "input_size": "x"}', ("'input_size'", "int"), id="wrong-type"),
    pytest.param("cnn_small", '{"in_channels": 1, "input_size": -8}', ("'input_size'", ">= 1"), id="negative-size"),
    pytest.param("cnn_small", '{"in_channels": true, "input_size": 8}', ("'in_channels'", "int"), id="bool-for-int"),
    pytest.param("small_cnn", '{"in_channels": 1, "input_size": 8, "dropout": NaN}', ("'dropout'", "finite"),
                 id="nan-dropout"),
    pytest.param("cnn_small", '[1, 2]', ("--model-args", "JSON object"), id="not-an-object"),
    pytest.param("cnn_small", '{"num_classes": 3, "in_channels": 1, "input_size": 8}', ("num_classes",),
                 id="num-classes"),
    pytest.param("cnn_small", '{}', ("input_size=28 by default", "1x8x8", '"input_size": 8'), id="default-size"),
    pytest.param("preact_resnet18", '{}', ("in_channels=3 by default", '"in_channels": 1'), id="default-channels"),
    pytest.param("cnn_small", "[" * 50_000 + "]" * 50_000, ("--model-args", "nested"), id="deeply-nested"),
    pytest.param("torchvision:no_such_net", '{"in_channels": 1}', ("no_such_net",), id="unknown-torchvision"),
    pytest.param("no_such_model", '{}', ("no_such_model", "cnn_small"), id="unknown-model"),
]


@TRACEBACK
@pytest.mark.parametrize("model, model_args, mentions", MODEL_ARGS)
def test_bad_model_args_name_the_argument(world, tmp_path, capsys, model, model_args, mentions):
    _refused(world, tmp_path, capsys, "evaluate", ["--model", model, "--model-args", model_args, "--data", "digits"],
             *mentions)


@TRACEBACK
def test_weights_with_a_checkpoint_are_refused(world, tmp_path, capsys):
    _refused(world, tmp_path, capsys, "evaluate", ["--data", "digits", "--weights", "{root}/model.ckpt"],
             "--weights", "--model")


# -- the model must fit the data --------------------------------------------------------------------

@TRACEBACK
@pytest.mark.parametrize("command", ["evaluate", "certify", "audit", "export"])
def test_model_on_images_of_another_shape_is_refused(world, tmp_path, capsys, command):
    _refused(world, tmp_path, capsys, command, ["--npz", "{root}/rgb32.npz"], "3x32x32", "1x8x8")


@TRACEBACK
def test_model_on_larger_images_is_refused(world, tmp_path, capsys):
    _refused(world, tmp_path, capsys, "evaluate", ["--npz", "{root}/gray28.npz"], "1x28x28", "1x8x8")


@TRACEBACK
def test_labels_beyond_the_model_head_are_refused(world, tmp_path, capsys):
    _refused(world, tmp_path, capsys, "certify", ["--npz", "{root}/twenty_classes.npz"], "label 19", "10 classes")


@TRACEBACK
def test_class_count_of_the_data_must_match_the_model(world, tmp_path, capsys):
    _refused(world, tmp_path, capsys, "evaluate", ["--config", "{root}/twelve_classes.yaml"], "10 classes", "12")


@TRACEBACK
def test_registry_model_with_mean_for_three_channels_on_gray_data(world, tmp_path, capsys):
    args = '{"in_channels": 1, "input_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}'
    _refused(world, tmp_path, capsys, "evaluate", ["--model", "cnn_small", "--model-args", args, "--data", "digits"],
             "does not fit", "1x8x8")


# -- --npz files that match the help text -----------------------------------------------------------

@TRACEBACK
def test_npz_with_only_x_test_is_measured(world, tmp_path, capsys):
    report, _ = _runs(world, tmp_path, capsys, ["--npz", "{root}/test_only.npz"])
    assert report["n_examples"] == 4 and "x_test/y_test" in report["protocol"]["data"]


@TRACEBACK
def test_npz_split_val_carved_from_x_train_is_measured(world, tmp_path, capsys):
    report, err = _runs(world, tmp_path, capsys, ["--npz", "{root}/train_only.npz", "--split", "val"])
    assert report["n_examples"] == 2 and "x_train/y_train" in report["protocol"]["data"]  # val_size 0.1 of 20
    assert "note: --n-examples 4 is more than the 2 examples" in err


@TRACEBACK
def test_npz_of_gray_images_without_a_channel_axis_is_measured(world, tmp_path, capsys):
    report, _ = _runs(world, tmp_path, capsys, ["--npz", "{root}/nhw.npz"])
    assert report["n_examples"] == 4


NPZ_REFUSED = [
    pytest.param("train_only", "test", ("no test split", "x_train, y_train", "x_test/y_test"), id="train-only-test"),
    pytest.param("test_only", "val", ("no val split", "x_test, y_test", "x_val/y_val"), id="test-only-val"),
    pytest.param("xy", "val", ("--split val", "x/y", "x_val/y_val"), id="xy-val"),
    pytest.param("objects", "test", ("x_test", "Python objects"), id="pickled-objects"),
    pytest.param("int32_images", "test", ("x_test", "int32", "uint8"), id="int32-images"),
    pytest.param("float_labels", "test", ("y_test", "float64", "integer"), id="fractional-labels"),
    pytest.param("length_mismatch", "test", ("20 images", "19 labels"), id="length-mismatch"),
    pytest.param("empty", "test", ("x_test", "empty"), id="empty"),
    pytest.param("non_square", "test", ("x_test", "8x6", "square"), id="non-square"),
    pytest.param("no_labels", "test", ("x_test", "no y_test"), id="no-labels"),
    pytest.param("mixed", "test", ("both x/y and per-split arrays",), id="two-schemes"),
    pytest.param("labels_2d", "test", ("y_test", "(20, 1)", "1-D"), id="labels-2d"),
    pytest.param("single.npy", "test", ("single array",), id="npy-not-npz"),
    pytest.param("folder", "test", ("folder",), id="folder"),
]


@TRACEBACK
@pytest.mark.parametrize("name, split, mentions", NPZ_REFUSED)
def test_npz_that_cannot_serve_the_split_names_its_arrays(world, tmp_path, capsys, name, split, mentions):
    path = f"{{root}}/{name}" + ("" if "." in name or name == "folder" else ".npz")
    _refused(world, tmp_path, capsys, "evaluate", ["--npz", path, "--split", split], *mentions)


# -- corrupted data files ---------------------------------------------------------------------------

CORRUPTED = [
    pytest.param("nan", ("x_test", "NaN"), id="nan-images"),
    pytest.param("inf", ("x_test", "infinite"), id="inf-images"),
    pytest.param("normalised", ("x_test", "[0, 1]", "-1.99"), id="images-outside-0-1"),
    pytest.param("negative_labels", ("y_test", "label -1"), id="negative-labels"),
    pytest.param("twenty_classes", ("label 19", "only 10 classes"), id="labels-out-of-range"),
    pytest.param("huge_label", ("y_test", "4611686018427387904"), id="absurd-label"),
    pytest.param("cut", ("cut.npz", "cannot read"), id="truncated-archive"),
    pytest.param("short_member", ("x_test", "5020 bytes", "truncated"), id="truncated-array"),
    pytest.param("flipped", ("x_test", "CRC"), id="flipped-byte"),
]


@CORRUPTION
@pytest.mark.parametrize("name, mentions", CORRUPTED)
def test_corrupted_npz_is_refused_naming_the_array(world, tmp_path, capsys, name, mentions):
    _refused(world, tmp_path, capsys, "evaluate", ["--npz", f"{{root}}/{name}.npz"], *mentions)


# -- the other data and run options -----------------------------------------------------------------

OTHER = [
    pytest.param(["--data", "mnist", "--data-root", "{root}/afile"], ("--data-root", "afile", "not a folder"),
                 id="data-root-file"),
    pytest.param(["--data", "digits", "--data-root", "{root}/folder"], ("--data-root", "digits"),
                 id="data-root-digits"),
    pytest.param(["--npz", "{root}/xy.npz", "--data-root", "{root}/folder"], ("--data-root", "--npz"),
                 id="data-root-npz"),
    pytest.param(["--data", "no_such_data"], ("no_such_data", "digits"), id="unknown-data"),
    pytest.param(["--data", "npz"], ("--npz FILE",), id="data-npz"),
    pytest.param(["--data", "digits", "--batch-size", str(10**30)], ("--batch-size", "at most"), id="batch-size-huge"),
    pytest.param(["--data", "digits", "--seed", "-1"], ("--seed", "-1"), id="negative-seed"),
    pytest.param(["--data", "digits", "--seed", str(2**40)], ("--seed", str(2**40)), id="seed-past-32-bits"),
    pytest.param(["--config", "{root}/list.yaml"], ("list.yaml", "data:"), id="config-list"),
    pytest.param(["--config", "{root}/garbage.yaml"], ("garbage.yaml", "YAML"), id="config-garbage"),
    pytest.param(["--config", "{root}/folder"], ("--config", "folder"), id="config-folder"),
    pytest.param(["--data", "digits", "--out", "a\0b"], ("--out", "NUL"), id="out-nul"),
    pytest.param(["--data", "digits", "--eps", ","], ("--eps", "radius"), id="eps-comma"),
]


@TRACEBACK
@pytest.mark.parametrize("extra, mentions", OTHER)
def test_other_bad_options_give_one_line(world, tmp_path, capsys, extra, mentions):
    _refused(world, tmp_path, capsys, "evaluate", extra, *mentions)


@TRACEBACK
@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_bad_wandb_project_is_refused_before_the_run(world, tmp_path, capsys, command):
    _refused(world, tmp_path, capsys, command, ["--data", "digits", "--wandb-project", "team/robust"],
             "--wandb-project", "team/robust")


@TRACEBACK
def test_n_examples_beyond_the_split_is_lowered_with_a_note(world, tmp_path, capsys):
    report, err = _runs(world, tmp_path, capsys, ["--npz", "{root}/test_only.npz", "--n-examples", "10000"])
    assert report["n_examples"] == 20
    assert "note: --n-examples 10000 is more than the 20 examples" in err and "using all 20" in err
