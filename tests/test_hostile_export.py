"""Hostile input to ``robust export``: a refused or failed export leaves the verified one byte-identical.

Every case starts from a folder holding a good export (``model.onnx``, ``model.torchscript.pt``,
``export.json`` of the committed checkpoint), runs an export into it that must not succeed (bad
arguments, an opset the exporter does not write, non-finite weights, a foreign checkpoint, a
failure or an interrupt mid-way, a verification that fails) and compares the folder, file by file
and mode by mode, with its snapshot: nothing replaced, no staging folder left behind.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hostile import assert_refused, copy_checkpoint, run, snapshot

from robust.cli import main
from robust.deploy import export
from robust.deploy.export import ExportError, export_model, export_verified
from robust.models import create

FAST = ["--n-examples", 8, "--attack-options", '{"steps": 2}']


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """``(checkpoint, folder)``: a good export of the committed checkpoint, made once."""
    root = tmp_path_factory.mktemp("verified")
    checkpoint = copy_checkpoint(root)
    folder = root / "export"
    assert main([str(a) for a in ["export", "--checkpoint", checkpoint, "--data", "digits", *FAST, "--out",
                                  folder]]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "model.onnx", "model.torchscript.pt"]
    return checkpoint, folder


@pytest.fixture
def earlier(verified, tmp_path):
    """A private copy of the good export, its checkpoint and the copy's snapshot."""
    checkpoint, folder = verified
    out = tmp_path / "export"
    shutil.copytree(folder, out)
    return checkpoint, out, snapshot(out)


def export_args(checkpoint, out, *extra):
    return ["export", "--checkpoint", checkpoint, "--data", "digits", *FAST, "--out", out, *extra]


REFUSED = {
    "attack-nonexistent": (["--attack", "nonexistent"], ["nonexistent"]),
    "opset-1": (["--opset", "1"], ["--opset", "7 to", "got 1"]),
    "opset-6": (["--opset", "6"], ["--opset", "got 6"]),
    "opset-99": (["--opset", "99"], ["--opset", "got 99"]),
    "opset-negative": (["--opset", "-18"], ["--opset", "got -18"]),
    "format-unknown": (["--formats", "tflite"], ["--formats", "tflite"]),
    "formats-empty": (["--formats", ","], ["--formats"]),
    "n-examples-zero": (["--n-examples", "0"], ["--n-examples"]),
    "batch-size-zero": (["--batch-size", "0"], ["--batch-size"]),
    "tolerance-nan": (["--tolerance", "nan"], ["--tolerance", "nan"]),
    "tolerance-negative": (["--tolerance", "-1"], ["--tolerance"]),
    "seed-negative": (["--seed", "-1"], ["--seed"]),
    "attack-options-not-json": (["--attack-options", "{steps"], ["--attack-options"]),
    "attack-options-wrong-key": (["--attack-options", '{"pgd": 5}'], ["pgd"]),
    "attack-options-zero-steps": (["--attack-options", '{"steps": 0}'], ["steps"]),
    "eps-nan": (["--eps", "nan"], ["eps"]),
    "eps-zero": (["--eps", "0"], ["eps"]),
}


@pytest.mark.hostile("export")
@pytest.mark.parametrize("extra, mentions", REFUSED.values(), ids=REFUSED.keys())
def test_bad_arguments_leave_the_earlier_export_byte_identical(earlier, extra, mentions, capsys):
    checkpoint, out, before = earlier
    outcome = run(export_args(checkpoint, out, *extra), capsys)
    assert_refused(outcome, *mentions)
    assert snapshot(out) == before


def nan_checkpoint(folder, value=float("nan")):
    path = copy_checkpoint(folder, "broken.ckpt")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["model.2.weight"].view(-1)[:3] = value
    torch.save(ckpt, path)
    return path


@pytest.mark.hostile("export")
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_fail_the_export_naming_the_tensor(earlier, tmp_path, capsys, value):
    _, out, before = earlier
    outcome = run(export_args(nan_checkpoint(tmp_path, value), out), capsys)
    assert_refused(outcome, "2.weight")
    assert snapshot(out) == before


@pytest.mark.hostile("export")
@pytest.mark.parametrize("content", ["foreign-dict", "garbage"])
def test_a_checkpoint_that_is_not_ours_changes_nothing(earlier, tmp_path, capsys, content):
    _, out, before = earlier
    path = tmp_path / "foreign.ckpt"
    if content == "garbage":
        path.write_bytes(b"PK\x03\x04 this is no checkpoint" * 10)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    outcome = run(export_args(path, out), capsys)
    assert_refused(outcome, "foreign.ckpt")
    assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_out_naming_a_file_is_refused(earlier, capsys):
    checkpoint, out, before = earlier
    outcome = run(export_args(checkpoint, out / "model.onnx"), capsys)
    assert_refused(outcome, "model.onnx", "is a file")
    assert snapshot(out) == before


def torn_onnx_export(model, args, path, **kwargs):
    """The exporter dies half-way through writing its file."""
    with open(path, "wb") as handle:
        handle.write(b"\x08\x07partial")
    raise RuntimeError("killed while writing")


def failing_trace(*args, **kwargs):
    raise RuntimeError("tracer crashed\nsecond line of the crash")


@pytest.mark.hostile("export")
def test_an_exporter_dying_mid_write_leaves_the_earlier_export(earlier, monkeypatch, capsys):
    checkpoint, out, before = earlier
    monkeypatch.setattr(torch.onnx, "export", torn_onnx_export)
    outcome = run(export_args(checkpoint, out), capsys)
    assert_refused(outcome, "ONNX exporter failed", "killed while writing")
    assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_a_tracer_failure_leaves_the_earlier_export(earlier, monkeypatch, capsys):
    checkpoint, out, before = earlier
    monkeypatch.setattr(torch.jit, "trace", failing_trace)
    outcome = run(export_args(checkpoint, out, "--formats", "torchscript"), capsys)
    assert_refused(outcome, "TorchScript tracing failed", "tracer crashed")
    assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_an_interrupt_during_verification_leaves_the_earlier_export(earlier, monkeypatch):
    checkpoint, out, before = earlier

    def interrupted(fmt, path):
        assert path.parent != out and path.parent.parent == out  # the new files sit in a staging folder
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "load_exported", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in export_args(checkpoint, out, "--formats", "torchscript")])
    assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_a_failed_verification_replaces_nothing(earlier, monkeypatch, capsys):
    checkpoint, out, before = earlier
    real = export.load_exported
    monkeypatch.setattr(export, "load_exported", lambda fmt, path: (lambda x: -real(fmt, path)(x)))
    outcome = run(export_args(checkpoint, out, "--formats", "torchscript"), capsys)
    assert_refused(outcome, "torchscript", "does not behave like the measured one", "nothing in", code=1)
    assert "FAILED" in outcome.out
    assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_a_failed_export_into_a_new_folder_leaves_no_folder(verified, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.jit, "trace", failing_trace)
    out = tmp_path / "new" / "export"
    outcome = run(export_args(verified[0], out, "--formats", "torchscript"), capsys)
    assert_refused(outcome, "tracing failed")
    assert not (tmp_path / "new").exists()


@pytest.mark.hostile("export")
@pytest.mark.parametrize("opset", [13, 17])
def test_the_requested_opset_is_written_or_refused(earlier, capsys, opset):
    import onnx

    checkpoint, out, before = earlier
    outcome = run(export_args(checkpoint, out, "--formats", "onnx", "--opset", opset), capsys)
    if outcome.code == 0:  # honoured: the file declares the opset asked for
        assert onnx.load(str(out / "model.onnx")).opset_import[0].version == opset
        assert json.loads((out / "export.json").read_text())["exported"]["onnx"]["opset"] == opset
    else:  # refused: nothing changed
        assert_refused(outcome, f"could not write opset {opset}")
        assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_a_good_export_replaces_every_file_and_leaves_no_stale_one(earlier, tmp_path, capsys):
    _, out, before = earlier
    other = copy_checkpoint(tmp_path, "other.ckpt")
    outcome = run(export_args(other, out, "--formats", "torchscript"), capsys)
    assert outcome.code == 0, outcome.err
    report = json.loads((out / "export.json").read_text())
    assert report["ok"] and report["written"] and report["source"] == str(other)
    assert set(report["exported"]) == {"torchscript"}
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.torchscript.pt"]  # no model.onnx unchecked
    assert report["exported"]["torchscript"]["path"] == str(out / "model.torchscript.pt")
    assert snapshot(out)[str(out / "export.json")] != before[str(out / "export.json")]


def nan_model():
    torch.manual_seed(0)
    model = create("cnn_small", 10, in_channels=1, input_size=8).eval()
    with torch.no_grad():
        model.get_parameter("2.bias")[0] = float("nan")
    return model


@pytest.mark.hostile("export")
def test_the_python_api_refuses_nan_weights_and_bad_opsets(earlier):
    _, out, before = earlier
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ExportError, match=r"'2\.bias' is not finite \(1 of"):
        export_model(nan_model(), x, out)
    with pytest.raises(ExportError, match=r"'2\.bias' is not finite"):
        export_verified(nan_model(), x, torch.arange(4), out, {"norm": "linf", "eps": 0.1})
    torch.manual_seed(0)
    good = create("cnn_small", 10, in_channels=1, input_size=8).eval()
    for opset in (1, 99, "18", True):
        with pytest.raises(ExportError, match="opset must be an ONNX opset"):
            export_model(good, x, out, opset=opset)
    assert snapshot(out) == before


@pytest.mark.hostile("export")
def test_the_python_api_keeps_every_file_when_one_format_fails(earlier, monkeypatch):
    _, out, before = earlier
    monkeypatch.setattr(torch.jit, "trace", failing_trace)
    torch.manual_seed(0)
    model = create("cnn_small", 10, in_channels=1, input_size=8).eval()
    monkeypatch.setattr(torch.onnx, "export", lambda model, args, path, **kw: shutil.copyfile(out / "model.onnx", path))
    with pytest.raises(ExportError, match="tracing failed"):
        export_model(model, torch.rand(2, 1, 8, 8), out)  # the ONNX file was made, then TorchScript failed
    assert snapshot(out) == before
