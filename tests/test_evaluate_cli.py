"""`robust evaluate`: checkpoint or registry model in, report.json + report.md + plots out,
one-line errors with exit status 2, resume state, wandb logging (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _helpers import fit_checkpoint

from robust.base.threat import ThreatModel
from robust.cli import main
from robust.methods import PGD

FAST = ["--attacks", "pgd,fgsm", "--attack-options", '{"pgd": {"steps": 5}}', "--n-examples", "60",
        "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    """A registry CNN-small PGD-trained for 3 epochs on digits (L-inf eps 0.1), saved as a checkpoint."""
    tmp = tmp_path_factory.mktemp("ckpt")
    path = fit_checkpoint(PGD(ThreatModel("linf", 0.1), steps=3), digits, tmp / "model.ckpt")
    (tmp / "model.pt").rename(tmp / "weights.pt")
    return path


def test_evaluate_writes_report_plots_and_markdown(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", *FAST, "--sweep", "0.05,0.2",
               "--patch", "0.05", "--spatial", "--corruptions", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["threat"] == {"kind": "linf", "norm": "linf", "eps": 0.1, "eps_str": "0.1"}  # from the checkpoint
    assert report["n_examples"] == 60 and set(report["per_attack"]) == {"pgd", "fgsm"}
    assert report["per_attack"]["pgd"]["settings"]["steps"] == 5
    assert [s["eps"] for s in report["sweep"]] == [0.05, 0.1, 0.2]
    assert report["audit"]["ran"] and report["audit"]["checks"]
    assert set(report["physical"]) == {"patch", "spatial"}
    assert report["physical"]["spatial"]["threat"]["grid_points"] == 31 * 49
    assert report["protocol"]["checkpoint"]["sha256"] and "Digits" in report["protocol"]["data"]
    corr = report["corruptions"]
    assert len(corr["per_corruption"]) == 15 and corr["n_examples"] == 60
    assert 0 < corr["mean_corruption_accuracy"] < corr["clean"]["accuracy"]
    md = (out / "report.md").read_text()
    assert "Common corruptions" in md
    for png in ("eps_sweep.png", "per_class.png", "corruptions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in md
    assert not (out / "evaluate_state.pt").exists()  # removed once the report is complete
    stdout = capsys.readouterr().out
    assert "robust accuracy:" in stdout and f"{100 * report['robust_accuracy']:.2f}%" in stdout


def test_registry_model_with_weights_gives_the_same_numbers(checkpoint, tmp_path, capsys):
    base = ["--data", "digits", *FAST, "--no-audit", "--norm", "linf", "--eps", "0.1"]
    assert main(["evaluate", "--checkpoint", str(checkpoint), *base, "--out", str(tmp_path / "a")]) == 0
    assert main(["evaluate", "--model", "cnn_small", "--weights", str(checkpoint.parent / "weights.pt"),
                 "--model-args", '{"in_channels": 1, "input_size": 8}', *base, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["robust"] == b["robust"] and a["per_example"] == b["per_example"]


def test_npz_data_and_l2_threat(checkpoint, tmp_path):
    from robust.data import Digits

    x, y = Digits().test_tensors()
    npz = tmp_path / "test.npz"
    import numpy as np

    np.savez(npz, x=(x[:40].numpy() * 255).round().astype("uint8"), y=y[:40].numpy())
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--npz", str(npz), "--norm", "l2", "--eps", "0.5",
                 "--attacks", "apgd-ce,deepfool", "--attack-options", '{"apgd-ce": {"steps": 5}, "deepfool": {"steps": 5}}',
                 "--no-audit", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_examples"] == 40 and report["threat"]["norm"] == "l2"


@pytest.mark.parametrize("args, message", [
    (["--data", "digits"], "exactly one of --checkpoint or --model"),
    (["--checkpoint", "missing.ckpt", "--data", "digits"], "checkpoint not found"),
    (["--checkpoint", "{ckpt}", "--data", "digits", "--data", "x", "--npz", "a.npz"], "exactly one of --config"),
    (["--checkpoint", "{ckpt}", "--data", "digits", "--eps", "-0.1"], "eps"),
    (["--checkpoint", "{ckpt}", "--data", "digits", "--attacks", "deepfool"], "refused under the linf"),
    (["--checkpoint", "{ckpt}", "--data", "digits", "--attacks", "pgd100"], "unknown attack 'pgd100'"),
    (["--checkpoint", "{ckpt}", "--data", "digits", "--attack-options", "[3"], "--attack-options must be JSON"),
    (["--checkpoint", "{ckpt}", "--data", "mnist", "--data-root", "{tmp}/nowhere"], "nowhere"),
    (["--checkpoint", "{foreign}", "--data", "digits"], "not a robust checkpoint"),
    (["--checkpoint", "{ckpt}", "--data", "digits", "--patch", "1.5"], "fraction"),
])
def test_bad_input_gives_one_line_and_exit_2(checkpoint, tmp_path, capsys, args, message):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    args = [a.format(ckpt=checkpoint, tmp=tmp_path, foreign=foreign) for a in args]
    rc = main(["evaluate", *args, "--n-examples", "20", "--no-progress", "--no-audit", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and message in err[-1], err


def test_state_from_another_run_is_kept_until_fresh(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    stale = out / "evaluate_state.pt"
    from robust.base.state import Journal

    Journal(stale, "evaluation", "another evaluation").load()  # the state file another evaluation leaves
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", *FAST, "--no-audit", "--out", str(out)]
    assert main(args) == 2
    assert "different evaluation" in capsys.readouterr().err and stale.exists()
    assert main([*args, "--fresh"]) == 0 and (out / "report.json").exists()


def test_wandb_run_gets_the_summary(checkpoint, tmp_path):
    from robust.tracking import read_wandb_run

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", *FAST, "--no-audit",
                 "--wandb-project", "robust-test", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (log,) = list(Path(out / "wandb").glob("offline-run-*/run-*.wandb"))
    run = read_wandb_run(log)
    assert report["protocol"]["wandb_run"] == str(log.parent)  # the leaderboard entry keeps it
    assert run.summary["eval/robust_accuracy"] == pytest.approx(report["robust_accuracy"])
