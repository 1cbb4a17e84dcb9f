"""``robust export``: ONNX (run by onnxruntime) and TorchScript files that behave like the measured model."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import digits as digits_split
from _helpers import fit_checkpoint

from robust.base.threat import ThreatModel
from robust.cli import main
from robust.deploy.export import export_model, load_exported, verify_export
from robust.methods import PGD
from robust.models import create


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    return fit_checkpoint(PGD(ThreatModel("linf", 0.1), steps=3), digits, tmp_path_factory.mktemp("exp") / "m.ckpt")


def test_exported_models_match_and_keep_their_robustness(tmp_path):
    torch.manual_seed(0)
    model = create("cnn_small", 10, in_channels=1, input_size=8, mean=[0.3], std=[0.4]).eval()  # Normalize inside
    x, y = digits_split("test")
    files = export_model(model, x[:4], tmp_path)
    assert set(files) == {"onnx", "torchscript"} and all(p.stat().st_size > 10_000 for p in files.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.torchscript.pt"]  # weights inside
    with torch.no_grad():
        expected = model(x[:37])
    for fmt, path in files.items():  # any batch size, same logits
        torch.testing.assert_close(load_exported(fmt, path)(x[:37]), expected, rtol=1e-4, atol=1e-4)
    report = verify_export(model, files, x[:120], y[:120], ThreatModel("linf", 0.1), attack_options={"steps": 5})
    assert report["ok"] and report["n_examples"] == 120
    for r in report["exported"].values():
        assert r["prediction_agreement"] == 1.0 and r["robust_gap"] <= 0.005
        assert r["robust"]["correct"] == report["original"]["robust"]["correct"]


def test_a_different_model_is_caught(tmp_path):
    torch.manual_seed(0)
    model = create("cnn_small", 10, in_channels=1, input_size=8).eval()
    x, y = digits_split("test")
    torch.manual_seed(1)
    other = create("cnn_small", 10, in_channels=1, input_size=8).eval()
    files = export_model(other, x[:4], tmp_path, formats=["onnx"])
    report = verify_export(model, files, x[:60], y[:60], {"norm": "linf", "eps": 0.1}, attack_options={"steps": 3})
    assert not report["ok"] and report["exported"]["onnx"]["prediction_agreement"] < 1.0


def test_cli_writes_files_and_report(checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(checkpoint), "--data", "digits", "--n-examples", "80",
                 "--attack-options", '{"steps": 5}', "--out", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["ok"] and report["threat"]["eps"] == 0.1 and set(report["exported"]) == {"onnx", "torchscript"}
    assert "predictions agree 100.00%" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(checkpoint), "--data", "digits", "--formats", "tflite",
                 "--out", str(out)]) == 2
    assert "--formats must name" in capsys.readouterr().err
