"""``robust audit``: one document whose every section agrees with the underlying reports."""

from __future__ import annotations

import json

import pytest
from _helpers import assert_audit_matches_reports, fit_checkpoint

from robust.base.threat import ThreatModel
from robust.cli import main
from robust.leaderboard import Store
from robust.methods import PGD, GaussianNoise

FAST = ["--data", "digits", "--n-examples", "40", "--attacks", "apgd-ce", "--attack-options",
        '{"apgd-ce": {"steps": 10}}', "--no-progress"]


@pytest.fixture(scope="module")
def pgd_audit(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("audit")
    ckpt = fit_checkpoint(PGD(ThreatModel("linf", 0.1), steps=3), digits, tmp / "pgd.ckpt")
    out = tmp / "audit"
    assert main(["audit", "--checkpoint", str(ckpt), *FAST, "--no-corruptions", "--out", str(out),
                 "--leaderboard", str(tmp / "board.db"), "--name", "tiny pgd"]) == 0
    return out, tmp


def test_every_section_matches_the_underlying_reports(pgd_audit):
    out, tmp = pgd_audit
    evaluation = assert_audit_matches_reports(out, "tiny pgd")
    assert evaluation["threat"]["eps"] == 0.1  # the checkpoint's threat
    assert "common corruptions (skipped with --no-corruptions)" in (out / "audit.md").read_text()
    (stored,) = Store(tmp / "board.db").entries()
    assert stored["name"] == "tiny pgd" and stored["robust"] == evaluation["robust"]


def test_a_noise_trained_model_gets_smoothing(tmp_path, digits):
    ckpt = fit_checkpoint(GaussianNoise(0.25), digits, tmp_path / "noise.ckpt")
    out = tmp_path / "audit"
    assert main(["audit", "--checkpoint", str(ckpt), *FAST, "--norm", "l2", "--eps", "0.25", "--no-corruptions",
                 "--smoothing-n", "200", "--n-examples", "12", "--out", str(out)]) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["certification"]["method"] == "smoothing" and audit["certification"]["sigma"] == 0.25
    radii = [m["radius"] for m in audit["certification"]["certified_accuracy"]]
    assert radii == pytest.approx([0, 0.125, 0.25, 0.375, 0.5])
    assert any("smoothed classifier" in p for p in audit["proven"]) or not audit["proven"]
    assert any("not the base model" in u for u in audit["not_checked"])


def test_no_certificate_is_said_plainly(tmp_path, digits):
    ckpt = fit_checkpoint(PGD(ThreatModel("l2", 0.5), steps=3), digits, tmp_path / "l2.ckpt")
    out = tmp_path / "audit"
    assert main(["audit", "--checkpoint", str(ckpt), *FAST, "--no-corruptions", "--n-examples", "12",
                 "--wandb-project", "robust-test", "--out", str(out)]) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["certification"] is None and not audit["proven"]
    from robust.tracking import read_wandb_run

    run = read_wandb_run(audit["leaderboard_entry"]["wandb_run"])
    assert run.summary["eval/robust_accuracy"] == audit["evaluation"]["robust"]["accuracy"]
    assert any("no certificate" in u for u in audit["not_checked"])
    assert "nothing: no certificate applies" in (out / "audit.md").read_text() or "- nothing" in \
        (out / "audit.md").read_text()
