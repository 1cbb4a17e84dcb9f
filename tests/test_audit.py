"""``robust audit``: one document whose every section agrees with the underlying reports."""

from __future__ import annotations

import json

import pytest

from robust.cli import main
from robust.evaluation.render import fmt_accuracy
from robust.leaderboard import Store, from_report
from robust.methods import PGD, GaussianNoise
from robust.threat import ThreatModel

from _helpers import fit_checkpoint

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
    audit = json.loads((out / "audit.json").read_text())
    evaluation = json.loads((out / "evaluation/report.json").read_text())
    certification = json.loads((out / "certification/report.json").read_text())
    assert audit["evaluation"] == evaluation and audit["certification"] == certification
    assert evaluation["threat"]["eps"] == certification["threat"]["eps"] == 0.1  # the checkpoint's threat
    assert certification["method"] == "crown" and "CROWN" in audit["certification_method"]
    assert audit["provenance"]["checkpoint"]["sha256"] == evaluation["protocol"]["checkpoint"]["sha256"]
    assert len(audit["provenance"]["data_sha256"]) == 64 and audit["provenance"]["dataset"] == "digits"
    md = (out / "audit.md").read_text()
    for needle in (fmt_accuracy(evaluation["clean"]), fmt_accuracy(evaluation["robust"]),
                   fmt_accuracy(certification["certified"]), "## Proven", "## Measured", "## Not checked",
                   "common corruptions (skipped with --no-corruptions)", "per_class.png"):
        assert needle in md, needle
    assert any(fmt_accuracy(evaluation["robust"]) in m for m in audit["measured"])
    assert any(fmt_accuracy(certification["certified"]) in p for p in audit["proven"])
    # the evaluation's attack falsifies too: checked per example against the certificate
    assert any("(evaluation report)" in c["name"] for c in certification["consistency"]["checks"])
    assert certification["consistency"]["ok"]
    entry = json.loads((out / "entry.json").read_text())
    expected = from_report(evaluation, name="tiny pgd")
    assert {k: v for k, v in entry.items() if k not in ("certified", "timestamp")} == \
        {k: v for k, v in expected.items() if k not in ("certified", "timestamp")}
    assert entry["certified"][0]["correct"] == certification["certified"]["correct"]
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
