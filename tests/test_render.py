"""Markdown, PNG and wandb rendering of hand-built robustness reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import robust.reports.evaluation as evaluation_report
from robust.base.stats import accuracy_record as acc
from robust.base.threat import ThreatModel
from robust.reports.evaluation import (
    log_to_wandb, plot_corruptions, plot_eps_sweep, plot_examples, plot_per_class, render_markdown, write_report)
from robust.reports.format import fmt_accuracy, interval, norm_label, percent, threat_label
from robust.tracking import read_wandb_run

PNG = b"\x89PNG\r\n\x1a\n"
GTSRB = [f"sign {i}" for i in range(43)]
CORRUPTIONS = ["gaussian_noise", "shot_noise", "motion_blur", "fog", "jpeg_compression"]
HEADLINE = {"accuracy": 193 / 300, "correct": 193, "n": 300, "ci95": [0.5861, 0.6977]}


def make_report(n_classes: int = 10, *, sweep: bool = True, corruptions: bool = True, unreliable: bool = False,
                physical: bool = True, class_names: list[str] | None = None) -> dict:
    """A realistic report: class ``i`` keeps ``25 - i % 20`` of 30 examples robust (so 19, 39 are weakest)."""
    per_class = {str(i): {"n": 30, "clean": acc(28, 30), "robust": acc(25 - i % 20, 30)} for i in range(n_classes)}
    flags = [{"name": "zero_gradients", "message": "12% of inputs have an all-zero input gradient",
              "threshold": "<= 1%", "value": 0.12},
             {"name": "unbounded_beats_bounded", "message": "an eps=1 attack left 5% robust",
              "threshold": "0%", "value": "5/100"}] if unreliable else []
    report = {
        "kind": "robustness",
        "threat": {"kind": "linf", "norm": "linf", "eps": 8 / 255, "eps_str": "8/255", "steps": 10},
        "n_examples": 300,
        "clean": acc(288, 300), "robust": dict(HEADLINE),
        "clean_accuracy": 0.96, "robust_accuracy": HEADLINE["accuracy"],
        "per_attack": {
            "pgd": {"robust": acc(200, 300), "seconds": 12.5,
                    "settings": {"eps": 8 / 255, "eps_str": "8/255", "alpha": 2 / 255, "alpha_str": "2/255", "steps": 10}},
            "autoattack": {"robust": dict(HEADLINE), "seconds": 95.25, "settings": {"version": "standard"},
                           "components": {"apgd-ce": {"broken": 80, "settings": {"steps": 100}},
                                          "apgd-t": {"broken": 10, "settings": {"n_target_classes": 9}},
                                          "fab-t": {"broken": 3, "settings": {}},
                                          "square": {"broken": 2, "settings": {"n_queries": 5000}}}},
        },
        "per_class": per_class,
        "class_names": class_names,
        "confusion": [{"true": t, "adversarial": (t + 1) % n_classes, "count": 20 - t} for t in range(12)],
        "audit": {"ran": True, "unreliable": unreliable, "flags": flags,
                  "checks": [{"name": "zero_gradients", "passed": not unreliable, "message": "share of zero gradients",
                              "threshold": "<= 1%", "value": 0.12 if unreliable else 0.0},
                             {"name": "more_steps_help_little", "passed": True, "message": "10x steps moved < 1 point",
                              "threshold": "< 1 point", "value": 0.33}],
                  "zero_gradient_share": 0.12 if unreliable else 0.0},
        "sweep": [{"eps": e / 255, "eps_str": f"{e}/255", "robust": acc(r, 300), "clean": acc(288, 300)}
                  for e, r in ((2, 270), (4, 240), (8, 193), (16, 90))] if sweep else None,
        "corruptions": {
            "threat": {"kind": "corruptions", "severities": [1, 2, 3, 4, 5], "corruptions": CORRUPTIONS},
            "n_examples": 300, "clean": acc(288, 300), "mean_corruption_accuracy": acc(210, 300),
            "per_corruption": {c: {"mean": 0.7 - 0.02 * k,
                                   "per_severity": {str(s): acc(280 - 20 * s - 5 * k, 300) for s in range(1, 6)}}
                               for k, c in enumerate(CORRUPTIONS)},
            "protocol": {"seed": 0}, "seconds": 4.0,
        } if corruptions else None,
        "physical": {"patch": {"threat": {"kind": "patch", "size": 0.1}, "robust": acc(150, 300),
                               "per_class": {str(i): {"n": 30, "robust": acc(10 + i % 20, 30)} for i in range(n_classes)}},
                     "spatial": None} if physical else None,
        "protocol": {"threat": ThreatModel("linf", "8/255").to_dict(), "attacks": {"pgd": {}}, "n_examples": 300,
                     "seed": 1234, "batch_size": 128, "device": "cpu",
                     "versions": {"torch": "2.4.0", "torchattacks": "3.5.1", "robust": "0.1.0"},
                     "checkpoint": {"path": "runs/best.ckpt", "sha256": "ab" * 32}},
        "seconds": 130.5,
    }
    return report


def minimal_report() -> dict:
    """Only the required fields; every optional one missing or None."""
    return {"kind": "robustness", "threat": {"kind": "l2", "norm": "l2", "eps": 0.5, "eps_str": None},
            "n_examples": 50, "clean": acc(45, 50), "robust": acc(30, 50), "clean_accuracy": 0.9,
            "robust_accuracy": 0.6, "per_attack": None, "per_class": None, "class_names": None, "confusion": None,
            "audit": None, "sweep": None, "corruptions": None, "physical": None, "protocol": None}


def assert_png(path: Path, min_size: int = 200) -> tuple[int, int]:
    assert path.is_file() and path.read_bytes()[:8] == PNG
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= min_size and max(img.size) < 10_000
        return img.size


def examples(channels: int, size: int, n: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, size, size, generator=g)
    x_adv = (x + (8 / 255) * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    y = torch.arange(n) % 10
    return {"x": x, "x_adv": x_adv, "y": y, "pred_clean": y.clone(), "pred_adv": (y + (torch.arange(n) % 2)) % 10}


# ----------------------------------------------------------------------------------------- formatting


def test_accuracy_format_and_threat_labels():
    assert fmt_accuracy(HEADLINE) == "64.33% [58.61, 69.77] (193/300)"
    assert fmt_accuracy(acc(0, 0)) == "0.00% [0.00, 100.00] (0/0)"
    assert fmt_accuracy(None, 0.5) == "50.00%" and fmt_accuracy(None) == "—"
    assert threat_label({"kind": "linf", "norm": "linf", "eps": 8 / 255, "eps_str": "8/255"}) == "L∞ ε = 8/255"
    assert threat_label({"kind": "l2", "norm": "l2", "eps": 0.5, "eps_str": None}) == "L2 ε = 0.5"
    assert threat_label({"kind": "patch", "norm": None, "eps": None, "size": 0.1}) == "adversarial patch (size=0.1)"
    assert threat_label(None) == "unknown threat model"


def test_one_percentage_formatter():
    assert percent(0.6433) == "64.33%" and percent(None) == "—" and percent(1) == "100.00%"
    assert percent(0.5, 1, unit="") == "50.0" and percent(None, missing="") == ""
    assert interval([0.5861, 0.6977]) == "[58.61, 69.77]" and interval(None) == "" and interval([0.1, None]) == ""


def test_every_threat_dict_reads_the_same():
    """Reports write norm balls with ``ThreatModel.to_dict()``; patch, spatial and corruption threats carry
    a ``kind`` and their settings but no ``norm``; a smoothing certificate's L2 ball has no single eps."""
    threat = ThreatModel("linf", "8/255").to_dict()
    assert threat == {"kind": "linf", "norm": "linf", "eps": 8 / 255, "eps_str": "8/255"}
    assert threat_label(threat) == "L∞ ε = 8/255" and norm_label(threat) == "L∞ threat model"
    assert threat_label(ThreatModel("l2", 0.5).to_dict()) == "L2 ε = 0.5"
    assert json.loads(json.dumps(threat)) == threat
    smoothing = {"kind": "l2", "norm": "l2"}
    assert threat_label(smoothing) == "L2" and norm_label(smoothing) == "L2 threat model"
    spatial = {"kind": "spatial", "max_rotation_deg": 30.0, "max_translation_px": 3.0}
    assert threat_label(spatial) == "spatial transformation (max_rotation_deg=30, max_translation_px=3)"
    assert norm_label(spatial) == threat_label(spatial)
    corruptions = {"kind": "corruptions", "severities": [1, 2], "corruptions": CORRUPTIONS}
    assert threat_label(corruptions) == "common corruptions"
    patch = {"kind": "patch", "fraction": 0.1, "norm": "linf-unbounded"}
    assert threat_label(patch) == "adversarial patch (fraction=0.1)"


# ------------------------------------------------------------------------------------------- markdown


def test_markdown_headline_attacks_protocol():
    md = render_markdown(make_report())
    assert md.startswith("# Robustness report: L∞ ε = 8/255\n")
    assert "| robust accuracy | 64.33% [58.61, 69.77] (193/300) |" in md
    assert f"| clean accuracy | {fmt_accuracy(acc(288, 300))} |" in md and "(288/300)" in md
    assert "| verdict | reliable |" in md and "UNRELIABLE" not in md
    assert "| pgd | eps=8/255, alpha=2/255, steps=10 | 66.67% [" in md and "| 12.5 s |" in md
    components = re.findall(r"^\| (apgd-ce|apgd-t|fab-t|square) \| (\d+) \|", md, re.M)
    assert components == [("apgd-ce", "80"), ("apgd-t", "10"), ("fab-t", "3"), ("square", "2")]
    assert "| 8/255 | 96.00% [" in md and "(193/300) |" in md
    assert "- 0 → 1: 20" in md and "- 9 → 0: 11" in md and "- 10 →" not in md  # top 10 only
    assert "2.4.0" in md and "seed: 1234" in md and "ab" * 32 in md and "device: cpu" in md
    assert "| gaussian_noise | 70.00% |" in md and "mean corruption accuracy: 70.00% [" in md
    assert "| patch | adversarial patch (size=0.1) |" in md
    assert "Zero-gradient share: 0.00%" in md


def test_markdown_unreliable_lists_every_flag_and_check():
    report = make_report(unreliable=True)
    md = render_markdown(report)
    assert "| verdict | **UNRELIABLE**: zero_gradients, unbounded_beats_bounded |" in md
    for flag in report["audit"]["flags"]:
        assert flag["name"] in md and flag["message"] in md and flag["threshold"] in md
    assert "| zero_gradients | **FLAG** | <= 1% | 0.12 |" in md
    assert "| more_steps_help_little | pass | < 1 point | 0.33 |" in md
    assert "Zero-gradient share: 12.00%" in md


def test_markdown_audit_not_run_is_neither_reliable_nor_unreliable():
    report = make_report()
    report["audit"] = {"ran": False, "unreliable": False, "flags": [], "checks": [], "zero_gradient_share": None}
    md = render_markdown(report)
    assert "| verdict | not audited |" in md and "UNRELIABLE" not in md and "did not run" in md


@pytest.mark.parametrize("n_classes", [10, 43])
def test_markdown_weakest_classes_in_bold(n_classes):
    names = GTSRB if n_classes == 43 else None
    md = render_markdown(make_report(n_classes, class_names=names))
    weakest = [19, 39, 18] if n_classes == 43 else [9, 8, 7]
    for i in weakest:
        row = next(line for line in md.splitlines() if line.startswith(f"| **{i}** |"))
        assert row.endswith(f"| **{fmt_accuracy(acc(25 - i % 20, 30))}** |")
    bold_rows = [line for line in md.splitlines() if re.match(r"\| \*\*\d+\*\* \|", line)]
    assert len(bold_rows) == 3
    assert f"| 0 | {'sign 0' if names else '—'} | 30 |" in md
    label = (lambda i: f"{i} (sign {i})") if names else str
    assert "Weakest classes (lowest robust accuracy, in bold): " + ", ".join(
        f"**{label(i)}** {fmt_accuracy(None, (25 - i % 20) / 30)}" for i in weakest) in md


def test_markdown_handles_missing_optional_fields():
    md = render_markdown(minimal_report())
    assert md.startswith("# Robustness report: L2 ε = 0.5\n")
    assert fmt_accuracy(acc(30, 50)) in md and "not audited" in md and "UNRELIABLE" not in md
    assert "## Per class" not in md and "## ε sweep" not in md and "![" not in md
    bare = {"kind": "robustness", "robust_accuracy": 0.25}
    md = render_markdown(bare)
    assert "unknown threat model" in md and "| robust accuracy | 25.00% |" in md and "| clean accuracy | — |" in md


def test_markdown_embeds_given_images_only():
    md = render_markdown(make_report(), {"eps_sweep": "eps_sweep.png", "per_class": "per_class.png", "extra": "x.png"})
    assert "![eps sweep](eps_sweep.png)" in md and "![per class](per_class.png)" in md and "![extra](x.png)" in md
    assert "corruptions.png" not in md and "examples.png" not in md
    assert md.index("## ε sweep") < md.index("(eps_sweep.png)") < md.index("## Per class")


# ---------------------------------------------------------------------------------------------- plots


def test_plots_are_valid_pngs(tmp_path):
    report = make_report(43, class_names=GTSRB)
    wide = assert_png(plot_per_class(report["per_class"], tmp_path / "pc43.png", GTSRB))
    narrow = assert_png(plot_per_class(make_report(10)["per_class"], tmp_path / "pc10.png"))
    assert wide[0] > 1.5 * narrow[0]
    assert_png(plot_eps_sweep(report["sweep"], tmp_path / "sub" / "sweep.png", clean=report["clean"]))
    assert_png(plot_corruptions(report["corruptions"], tmp_path / "corr.png"))
    gray = examples(1, 8)
    assert_png(plot_examples(**gray, path=tmp_path / "gray.png", n=8))
    rgb = examples(3, 32, n=3)
    w, _ = assert_png(plot_examples(**rgb, path=tmp_path / "rgb.png", class_names=GTSRB, n=8))
    assert w < assert_png(tmp_path / "gray.png")[0]  # n capped at the 3 examples given


# ------------------------------------------------------------------------------------------- write_report


def test_write_report_full(tmp_path):
    report = make_report(43, class_names=GTSRB, unreliable=True)
    paths = write_report(report, tmp_path / "out", examples=examples(3, 32))
    assert set(paths) == {"json", "markdown", "eps_sweep", "per_class", "examples", "corruptions"}
    for name in ("eps_sweep", "per_class", "examples", "corruptions"):
        assert paths[name] == tmp_path / "out" / f"{name}.png"
        assert_png(paths[name])
    assert json.loads(paths["json"].read_text()) == report
    md = paths["markdown"].read_text()
    assert md == render_markdown(report, {k: f"{k}.png" for k in ("eps_sweep", "per_class", "examples", "corruptions")})
    assert all(f"]({name}.png)" in md for name in ("eps_sweep", "per_class", "examples", "corruptions"))
    assert "UNRELIABLE" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_write_report_minimal_writes_only_what_applies(tmp_path):
    report = minimal_report()
    report["sweep"] = [{"eps": 0.5, "eps_str": "0.5", "robust": acc(30, 50), "clean": acc(45, 50)}]  # one point: no plot
    paths = write_report(report, tmp_path)
    assert set(paths) == {"json", "markdown"}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert "![" not in (tmp_path / "report.md").read_text()


def test_failing_plot_leaves_existing_report_intact(tmp_path, monkeypatch):
    write_report(make_report(), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(evaluation_report, "plot_corruptions", boom)
    changed = make_report(unreliable=True)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(changed, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, nothing replaced
    assert json.loads((tmp_path / "report.json").read_text()) == make_report()


# ------------------------------------------------------------------------------------------------ wandb


def test_log_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    report = make_report(10, unreliable=True)
    images = write_report(report, tmp_path / "report", examples=examples(1, 8))
    run = wandb.init(mode="offline", dir=tmp_path, project="robust-test")
    files = Path(run.dir)
    try:
        log_to_wandb(report, run, images)
    finally:
        run.finish()
        wandb.teardown()  # wandb-core buffers the log's last block until it exits (see robust.tracking)
    # wandb 0.31 offline writes no files/wandb-summary.json (only a sync would); read the run's .wandb log.
    summary = read_wandb_run(files.parent).summary
    if (files / "wandb-summary.json").exists():
        assert json.loads((files / "wandb-summary.json").read_text())["eval/robust_accuracy"] == summary[
            "eval/robust_accuracy"]
    assert summary["eval/robust_accuracy"] == pytest.approx(193 / 300)
    assert summary["eval/clean_accuracy"] == pytest.approx(0.96)
    assert summary["eval/pgd_accuracy"] == pytest.approx(200 / 300)
    assert summary["eval/autoattack_accuracy"] == pytest.approx(193 / 300)
    assert summary["eval/unreliable"] is True
    assert summary["eval/mean_corruption_accuracy"] == pytest.approx(0.7)
    assert summary["eval/per_class/_type"] == "table-file" and summary["eval/audit/_type"] == "table-file"
    for name in ("eps_sweep", "per_class", "examples", "corruptions"):
        assert summary[f"eval/plots/{name}/_type"] == "image-file"
        assert_png(files / summary[f"eval/plots/{name}/path"])
    table = json.loads((files / summary["eval/per_class/path"]).read_text())
    assert table["columns"] == ["class", "name", "n", "clean", "robust"] and len(table["data"]) == 10
    audit = json.loads((files / summary["eval/audit/path"]).read_text())
    assert [row[:2] for row in audit["data"]] == [["zero_gradients", False], ["more_steps_help_little", True]]
