"""Certification reports and ``robust certify``: per-example verified / falsified / inconclusive
statuses, the consistency check certified <= robust <= clean (and that it catches an unsound
bound), randomized-smoothing reports with an attack on the smoothed classifier, files, plots,
resume, wandb and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _helpers import digits as digits_split
from _helpers import (
    fit_checkpoint,
    one_thread,  # noqa: F401  (autouse)
)

import robust.certify.verify as verify_module
from robust.base.stats import accuracy_record
from robust.certify.report import smoothing_report, verification_report
from robust.certify.verify import consistency, smoothing_tolerance, verify
from robust.cli import main
from robust.methods import IBP, GaussianNoise, Standard
from robust.module import RobustClassifier

MODEL_ARGS = '{"in_channels": 1, "input_size": 8}'


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, digits) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("certify")
    return {"ibp": fit_checkpoint(IBP(0.05, warmup=1, ramp=3), digits, tmp / "ibp.ckpt", epochs=10),
            "noise": fit_checkpoint(GaussianNoise(0.25), digits, tmp / "noise.ckpt", epochs=4),
            "standard": fit_checkpoint(Standard(), digits, tmp / "standard.ckpt", epochs=3)}


def _model(path: Path) -> torch.nn.Module:
    return RobustClassifier.load_from_checkpoint(path, map_location="cpu").model.eval()


def test_statuses_bracket_the_truth_on_an_ibp_model(ckpts):
    x, y = digits_split("test")
    report = verify(_model(ckpts["ibp"]), (x, y), 0.05, method="ibp", attack="pgd",
                    attack_options={"steps": 10}, n_examples=120, progress=False)
    counts = report["status_counts"]
    assert sum(counts.values()) == report["n_examples"] == 120
    assert counts["verified"] > 30  # IBP training at this eps makes many examples provable
    assert report["certified"]["correct"] == counts["verified"]
    assert report["robust"]["correct"] == 120 - counts["falsified"]
    assert report["certified"]["accuracy"] <= report["robust"]["accuracy"] <= report["clean"]["accuracy"]
    assert report["consistency"]["ok"] and not report["soundness_violations"]
    wrong = sum(r["label"] != r["predict"] for r in report["per_example"])
    assert all(r["status"] == "falsified" for r in report["per_example"] if r["label"] != r["predict"])
    assert counts["falsified"] >= wrong


def test_a_natural_model_is_inconclusive_not_zero(ckpts):
    """IBP proves nothing on a naturally trained net at eps 0.1, yet PGD breaks only some: the report
    gives the attack's upper bound and calls the rest inconclusive."""
    x, y = digits_split("test")
    report = verify(_model(ckpts["standard"]), (x, y), 0.1, method="ibp", attack_options={"steps": 10},
                    n_examples=100, progress=False)
    counts = report["status_counts"]
    assert counts["verified"] <= 2 and counts["inconclusive"] > 10 and counts["falsified"] > 10
    without = verify(_model(ckpts["standard"]), (x, y), 0.1, method="ibp", attack=None, n_examples=100,
                     progress=False)
    assert without["status_counts"]["falsified"] == 100 - without["clean"]["correct"]
    assert without["attack"] is None


def test_an_unsound_bound_is_flagged(ckpts, monkeypatch):
    """A 'bound' that proves everything must collide with the attack and be reported inconsistent."""
    def everything(model, x, y, eps, method="crown"):
        fake = torch.full((len(x), 10), 1e3)
        return {"ibp": fake, "combined": fake}

    monkeypatch.setattr(verify_module, "margins", everything)
    x, y = digits_split("test")
    report = verify(_model(ckpts["standard"]), (x, y), 0.2, method="ibp", attack_options={"steps": 10},
                    n_examples=60, progress=False)
    assert report["soundness_violations"] and not report["consistency"]["ok"]
    names = {f["name"] for f in report["consistency"]["flags"]}
    assert {"certified <= robust", "no certified example is broken"} <= names


def test_consistency_and_tolerance():
    ok = consistency(accuracy_record(90, 100), accuracy_record(70, 100), accuracy_record(60, 100))
    assert ok["ok"] and len(ok["checks"]) == 3
    bad = consistency(accuracy_record(90, 100), accuracy_record(70, 100), accuracy_record(72, 100))
    assert not bad["ok"] and bad["flags"][0]["name"] == "certified <= robust" and "VIOLATED" in bad["flags"][0]["message"]
    assert consistency(accuracy_record(90, 100), accuracy_record(70, 100), accuracy_record(72, 100),
                       tolerance=2)["ok"]
    assert not consistency(accuracy_record(60, 100), accuracy_record(70, 100), accuracy_record(50, 100))["ok"]
    from scipy.stats import binom

    for m, p in ((100, 0.002), (500, 0.002), (10_000, 0.1)):
        k = smoothing_tolerance(m, p)
        assert binom.sf(k, m, p) <= 1e-3 < binom.sf(k - 1, m, p)
    assert smoothing_tolerance(0, 0.1) == 0


def test_verification_sweep_is_monotone(ckpts):
    x, y = digits_split("test")
    report = verification_report(_model(ckpts["ibp"]), (x, y), [0.02, 0.05, 0.1], method="ibp",
                                 attack_options={"steps": 10}, n_examples=80, progress=False)
    certified = [s["certified"]["correct"] for s in report["sweep"]]
    assert certified == sorted(certified, reverse=True) and certified[0] > certified[-1]
    assert report["threat"]["eps"] == 0.02 and report["consistency"]["ok"]
    assert all("(eps " in c["name"] for c in report["consistency"]["checks"])


def test_smoothing_report_with_attack_on_the_smoothed_classifier(ckpts, tmp_path):
    x, y = digits_split("test")
    report = smoothing_report(_model(ckpts["noise"]), (x, y), 0.25, n0=50, n=400, alpha=0.01, batch_size=400,
                              radii=(0.0, 0.1, 0.25, 0.5), n_examples=40, progress=False, attack_radius=0.25,
                              attack_examples=25, attack_options={"steps": 5, "samples": 8, "n": 200})
    acc = [m["certified"]["accuracy"] for m in report["certified_accuracy"]]
    assert acc == sorted(acc, reverse=True) and acc[0] == report["clean"]["accuracy"] > 0.6
    assert 0 < report["acr"] < report["max_certifiable_radius"]
    emp = report["empirical"]
    assert emp["n_examples"] == 25
    assert emp["certified"]["correct"] <= emp["robust"]["correct"] <= emp["clean"]["correct"]
    assert report["consistency"]["ok"]
    assert [set(r) for r in report["per_example"][:1]] == [{"idx", "label", "predict", "radius", "correct", "time"}]


def test_cli_smoothing_writes_report_table_plot_and_resumes(ckpts, tmp_path, capsys):
    out = tmp_path / "cert"
    args = ["certify", "--method", "smoothing", "--checkpoint", str(ckpts["noise"]), "--data", "digits",
            "--n0", "20", "--n", "200", "--alpha", "0.01", "--radii", "0,0.25", "--n-examples", "12",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["sigma"] == 0.25  # from the checkpoint's GaussianNoise
    assert report["n_examples"] == 12 and report["settings"]["n"] == 200
    table = (out / "certify.tsv").read_text().splitlines()
    assert table[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(table) == 13
    assert (out / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "randomized smoothing, σ = 0.25" in md and "certified_accuracy.png" in md
    assert not (out / "certify_state.jsonl").exists()
    stdout = capsys.readouterr().out
    assert "certified at L2 radius 0.25" in stdout and "consistency: certified <= robust <= clean holds" in stdout

    # an interrupted run resumes: a state with 5 finished rows is picked up and gives the same rows
    from robust.certify.smoothing import Smooth, certify_dataset

    x, y = digits_split("test")
    state = out / "certify_state.jsonl"
    certify_dataset(Smooth(_model(ckpts["noise"]), 10, 0.25, seed=0), x[:5], y[:5], n0=20, n=200, alpha=0.01,
                    batch_size=1000, progress=False, state_path=state)
    first = [r["predict"] for r in report["per_example"]]
    assert main(args) == 2  # the state was written for 5 examples: refused, kept
    assert "different settings" in capsys.readouterr().err and state.exists()
    assert main([*args, "--fresh"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert [r["predict"] for r in again["per_example"]] == first


def test_cli_crown_with_sweep_and_evaluation_report(ckpts, tmp_path, capsys):
    out = tmp_path / "verify"
    base = ["--checkpoint", str(ckpts["ibp"]), "--data", "digits", "--n-examples", "60", "--no-progress"]
    assert main(["evaluate", *base, "--attacks", "pgd", "--attack-options", '{"pgd": {"steps": 10}}',
                 "--no-audit", "--eps", "0.05", "--norm", "linf", "--out", str(tmp_path / "eval")]) == 0
    rc = main(["certify", "--method", "ibp", *base, "--eps", "0.05,0.1", "--attack-options", '{"steps": 10}',
               "--evaluation", str(tmp_path / "eval" / "report.json"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [s["threat"]["eps"] for s in report["sweep"]] == [0.05, 0.1]
    assert any("(evaluation report)" in c["name"] for c in report["consistency"]["checks"])
    assert (out / "verify.tsv").read_text().startswith("idx\tlabel\tpredict\tstatus\n")
    assert (out / "verification.png").exists() and "| 0.1 |" in (out / "report.md").read_text()
    rc = main(["certify", "--method", "ibp", *base, "--eps", "0.1",
               "--evaluation", str(tmp_path / "eval" / "report.json"), "--out", str(tmp_path / "v2")])
    assert rc == 2 and "same threat model" in capsys.readouterr().err


def test_cli_exits_1_when_inconsistent(ckpts, tmp_path, monkeypatch, capsys):
    def everything(model, x, y, eps, method="crown"):
        fake = torch.full((len(x), 10), 1e3)
        return {"ibp": fake, "combined": fake}

    monkeypatch.setattr(verify_module, "margins", everything)
    rc = main(["certify", "--method", "ibp", "--checkpoint", str(ckpts["standard"]), "--data", "digits",
               "--eps", "0.2", "--n-examples", "40", "--attack-options", '{"steps": 10}', "--no-progress",
               "--out", str(tmp_path / "bad")])
    assert rc == 1 and "consistency: VIOLATED" in capsys.readouterr().out
    assert not json.loads((tmp_path / "bad" / "report.json").read_text())["consistency"]["ok"]


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "smoothing", "--model", "cnn_small", "--weights", "{w}", "--model-args", MODEL_ARGS], "give --sigma"),
    (["--method", "smoothing", "--checkpoint", "{noise}", "--sigma", "-1"], "sigma must be"),
    (["--method", "smoothing", "--checkpoint", "{noise}", "--alpha", "2"], "alpha must be"),
    (["--method", "smoothing", "--checkpoint", "{noise}", "--radii", "0,x"], "--radii must be"),
    (["--method", "ibp", "--checkpoint", "{noise}"], "give --eps"),
    (["--method", "ibp", "--checkpoint", "{ibp}", "--eps", "-0.1"], "eps"),
    (["--method", "crown", "--checkpoint", "{ibp}", "--attack", "pgd100"], "unknown attack 'pgd100'"),
    (["--method", "ibp", "--checkpoint", "{ibp}", "--evaluation", "{tmp}/none.json"], "none.json"),
    (["--method", "ibp", "--checkpoint", "{tmp}/missing.ckpt"], "missing.ckpt"),
    (["--method", "ibp", "--checkpoint", "{ibp}", "--wandb-project", "p", "--no-wandb"], "not both"),
])
def test_bad_input_gives_one_line_and_exit_2(ckpts, tmp_path, capsys, args, message):
    fill = {"{w}": ckpts["noise"].with_suffix(".pt"), "{noise}": ckpts["noise"], "{ibp}": ckpts["ibp"],
            "{tmp}": tmp_path}
    for key, value in fill.items():
        args = [a.replace(key, str(value)) for a in args]
    rc = main(["certify", *args, "--data", "digits", "--n-examples", "5", "--n", "50", "--no-progress",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("robust: error:") and message in err[-1], err


def test_wandb_run_gets_the_certificates(ckpts, tmp_path):
    from robust.tracking import read_wandb_run

    out = tmp_path / "cert"
    assert main(["certify", "--method", "ibp", "--checkpoint", str(ckpts["ibp"]), "--data", "digits",
                 "--n-examples", "30", "--attack", "none", "--no-progress", "--wandb-project", "robust-test",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (log,) = list(Path(out / "wandb").glob("offline-run-*/run-*.wandb"))
    run = read_wandb_run(log)
    assert report["protocol"]["wandb_run"] == str(log.parent)  # the leaderboard entry keeps it
    assert run.summary["certify/certified_accuracy_eps0.05"] == pytest.approx(report["certified"]["accuracy"])
    assert run.summary["certify/clean_accuracy"] == pytest.approx(report["clean"]["accuracy"])


def test_eval_metrics_of_certified_methods(ckpts):
    x, y = digits_split("val")
    model = _model(ckpts["ibp"])
    with torch.no_grad():
        metrics = IBP(0.05).eval_metrics(model, x, y, model(x))
    direct = verify(model, (x, y), 0.05, method="ibp", attack=None, progress=False)
    assert metrics["verified_acc"].item() == pytest.approx(direct["certified"]["accuracy"])
    noise_model = _model(ckpts["noise"])
    with torch.no_grad():
        clean = noise_model(x)
    noisy = GaussianNoise(0.25).eval_metrics(noise_model, x, y, clean)["noisy_acc"].item()
    assert 0.5 < noisy <= 1.0
    assert GaussianNoise(0.25).eval_metrics(noise_model, x, y, clean)["noisy_acc"].item() == noisy


def test_help_lists_the_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["certify", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{smoothing,ibp,crown}" in out and "--attack-radius" in out and "--evaluation" in out
