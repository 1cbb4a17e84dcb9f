"""Hostile input to ``robust certify``: hand-edited resume states, NaN-weight models, malformed options.

A randomized-smoothing state (``certify_state.jsonl``) is checked, not trusted: every stored row
must be something CERTIFY can return for the settings (its radius follows from its vote count and
never exceeds ``sigma * Phi^-1(alpha ** (1 / n))``; class, count and label in range), and sampled
rows are certified again with their own noise. A refused state changes nothing and names the file
and ``--fresh``. Models with non-finite weights are refused naming the tensor, through the command
and through the Python API; malformed option values end in one ``robust: error:`` line before any
file is written.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _helpers import digits as digits_split
from hostile import assert_refused, copy_checkpoint, run, snapshot
from torch import nn

import robust.cli.certify as certify_cli
from robust.base.state import Journal, StateError, read_journal
from robust.base.safe_load import NonFiniteWeightsError
from robust.certify.ibp import verified_accuracy
from robust.certify.report import smoothing_report, verification_report
from robust.certify.smoothing import NonFiniteLogitsError, Smooth, certify_dataset, max_certifiable_radius
from robust.certify.verify import consistency, verify
from robust.cli import main
from robust.models import create
from robust.module import RobustClassifier

SIGMA, N0, N, ALPHA = 0.25, 10, 100, 0.001
SMOOTHING = ["certify", "--method", "smoothing", "--data", "digits", "--sigma", SIGMA, "--n0", N0, "--n", N,
             "--n-examples", 6, "--no-progress", "--radii", "0,0.25"]
BOUNDS = ["certify", "--data", "digits", "--n-examples", 4, "--no-progress", "--attack-options", '{"steps": 2}']
TOP = max_certifiable_radius(SIGMA, N, ALPHA)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A checkpoint and the complete state of a smoothing run killed after its last example (the
    report never written, so the state stays): ``(checkpoint, header, rows)``."""
    folder = tmp_path_factory.mktemp("certify_state")
    checkpoint = copy_checkpoint(folder)
    out = folder / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certify_cli, "_write", lambda *args, **kwargs: None)
        assert main([str(a) for a in [*SMOOTHING, "--checkpoint", checkpoint, "--out", out]]) == 0
    header, rows = read_journal(out / certify_cli.STATE_NAME)
    assert sorted(rows) == list(range(6)) and all("count" in r for r in rows.values())
    return checkpoint, header, rows


def write_state(out, header, rows):
    """A state file with ``rows`` under the honest header (the digest of model, data and settings)."""
    out.mkdir(parents=True, exist_ok=True)
    state = out / certify_cli.STATE_NAME
    journal = Journal(state, header["kind"], header["key"])
    journal.load()
    journal.append(rows)
    return state


def resume(stored, tmp_path, capsys, edit):
    """Write the stored state with ``edit(rows)`` applied into a fresh ``--out`` and resume from it."""
    checkpoint, header, rows = stored
    rows = {i: dict(r) for i, r in rows.items()}
    edit(rows)
    out = tmp_path / "out"
    state = write_state(out, header, rows)
    before = snapshot(out)
    outcome = run([*SMOOTHING, "--checkpoint", checkpoint, "--out", out], capsys)
    return outcome, out, state, before


def set_row(idx, **values):
    def edit(rows):
        rows[idx].update(values)
    return edit


def full_certificate(rows):
    """The edit an attacker makes: an abstained example turned into the largest certificate there
    is, every field consistent with every other (only re-certifying it shows the lie)."""
    idx = next(i for i, r in rows.items() if r["predict"] == -1 or not r["correct"])
    rows[idx].update(predict=rows[idx]["label"], count=N, radius=TOP, correct=1)


def add_row(rows):
    rows[99] = {**rows[0], "idx": 99}


def drop_field(rows):
    del rows[1]["count"]


def wrong_label(rows):
    rows[1]["label"] = (rows[1]["label"] + 1) % 10
    rows[1]["correct"] = int(rows[1]["predict"] == rows[1]["label"])


EDITS = {
    "radius-100": (set_row(1, radius=100.0), ["radius 100", "largest certifiable"]),
    "radius-just-above-max": (set_row(1, radius=TOP * 1.01), ["largest certifiable"]),
    "radius-negative": (set_row(1, radius=-0.5), ["radius -0.5"]),
    "radius-nan": (set_row(1, radius=math.nan), ["row 1"]),
    "radius-without-its-count": (set_row(1, radius=TOP * 0.99), ["row 1", "votes give radius"]),
    "class-above-range": (set_row(1, predict=12), ["class 12", "-1..9"]),
    "class-below-abstain": (set_row(1, predict=-2), ["class -2"]),
    "count-above-n": (set_row(1, count=N + 1), [f"{N + 1} votes", f"0..n = {N}"]),
    "count-negative": (set_row(1, count=-1), ["-1 votes"]),
    "count-as-string": (set_row(1, count="98"), ["wrong type"]),
    "correct-flipped": (set_row(5, correct=1), ["row 5", "correct = 1"]),
    "label-changed": (wrong_label, ["row 1 has label"]),
    "row-outside-the-data": (add_row, ["row 99", "0..5"]),
    "field-missing": (drop_field, ["row 1", "not a certification row"]),
    "consistent-forged-certificate": (full_certificate, ["does not re-compute"]),
}


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize("edit, mentions", EDITS.values(), ids=EDITS.keys())
def test_an_edited_smoothing_state_is_refused_and_left_alone(stored, tmp_path, capsys, edit, mentions):
    outcome, out, state, before = resume(stored, tmp_path, capsys, edit)
    assert_refused(outcome, str(state), "--fresh", *mentions)
    assert snapshot(out) == before  # no report, the state as it was


@pytest.mark.hostile("corruption")
def test_the_honest_state_resumes_to_the_uninterrupted_result(stored, tmp_path, capsys):
    outcome, out, state, _ = resume(stored, tmp_path, capsys, lambda rows: None)
    assert outcome.code == 0, outcome.err
    fresh = run([*SMOOTHING, "--checkpoint", stored[0], "--out", tmp_path / "fresh"], capsys)
    assert fresh.code == 0 and not state.exists()
    assert (out / "certify.tsv").read_text().splitlines()[0] == (tmp_path / "fresh" / "certify.tsv").read_text() \
        .splitlines()[0]
    resumed = [line.split("\t")[:5] for line in (out / "certify.tsv").read_text().splitlines()]
    uninterrupted = [line.split("\t")[:5] for line in (tmp_path / "fresh" / "certify.tsv").read_text().splitlines()]
    assert resumed == uninterrupted  # idx label predict radius correct


@pytest.mark.hostile("corruption")
def test_a_state_of_another_model_is_refused(stored, tmp_path, capsys):
    checkpoint, header, rows = stored
    other = torch.load(checkpoint, map_location="cpu", weights_only=True)
    other["state_dict"]["model.0.bias"] += 0.01
    torch.save(other, tmp_path / "other.ckpt")
    state = write_state(tmp_path / "out", header, rows)
    before = snapshot(tmp_path / "out")
    outcome = run([*SMOOTHING, "--checkpoint", tmp_path / "other.ckpt", "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, str(state), "model", "--fresh")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.hostile("corruption")
def test_the_python_api_refuses_an_edited_state(stored, tmp_path):
    checkpoint, header, rows = stored
    model = RobustClassifier.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
    x, y = digits_split("test")
    rows = {i: dict(r) for i, r in rows.items()}
    rows[3]["radius"] = 100.0
    state = write_state(tmp_path, header, rows)
    smooth = Smooth(model, 10, SIGMA, seed=0)
    with pytest.raises(StateError, match="radius 100.0, outside 0..0.37"):
        certify_dataset(smooth, x[:6], y[:6], n0=N0, n=N, alpha=ALPHA, progress=False, state_path=state)


@pytest.mark.hostile("corruption")
def test_the_consistency_check_refuses_a_radius_above_the_certifiable_maximum():
    record = {"correct": 3, "n": 4, "accuracy": 0.75}
    check = consistency(record, None, record, radii=[0.1, 100.0], max_radius=TOP)
    assert not check["ok"]
    assert [f["name"] for f in check["flags"]] == ["radius <= largest certifiable"]
    assert "100.0" in check["flags"][0]["message"]
    assert consistency(record, None, record, radii=[0.1, TOP], max_radius=TOP)["ok"]


def nan_model(tensor="2.weight"):
    torch.manual_seed(0)
    model = create("cnn_small", 10, in_channels=1, input_size=8).eval()
    with torch.no_grad():
        dict(model.named_parameters())[tensor].view(-1)[:3] = float("nan")
    return model


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize("certify", [
    lambda m, x, y: smoothing_report(m, (x, y), SIGMA, n0=N0, n=N, progress=False),
    lambda m, x, y: certify_dataset(Smooth(m, 10, SIGMA, seed=0), x, y, n0=N0, n=N, progress=False),
    lambda m, x, y: verification_report(m, (x, y), [0.1], method="ibp", attack=None, progress=False),
    lambda m, x, y: verify(m, (x, y), 0.1, method="crown", attack=None, progress=False),
    lambda m, x, y: verified_accuracy(m, (x, y), 0.1),
], ids=["smoothing_report", "certify_dataset", "verification_report", "verify-crown", "verified_accuracy"])
def test_the_python_api_refuses_nan_weights_naming_the_tensor(certify):
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(NonFiniteWeightsError, match=r"'2\.weight' is not finite \(3 of"):
        certify(nan_model(), x, y)


@pytest.mark.hostile("corruption")
def test_smooth_refuses_a_base_classifier_with_nan_logits():
    class Broken(nn.Module):  # finite weights, NaN out: the votes would all go to class 0
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.flatten(1)) * float("nan")

    with pytest.raises(NonFiniteLogitsError, match="NaN or infinite logits"):
        Smooth(Broken(), 10, SIGMA, seed=0).certify(torch.rand(1, 8, 8), n0=N0, n=N)


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize("method", ["smoothing", "ibp", "crown"])
def test_a_nan_weight_checkpoint_is_refused_by_certify(method, tmp_path, capsys):
    checkpoint = copy_checkpoint(tmp_path)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["model.2.weight"].view(-1)[:3] = float("nan")
    torch.save(ckpt, checkpoint)
    argv = [*SMOOTHING] if method == "smoothing" else [*BOUNDS, "--method", method, "--eps", "0.1"]
    outcome = run([*argv, "--checkpoint", checkpoint, "--out", tmp_path / "out"], capsys)
    assert_refused(outcome, "2.weight")
    assert not (tmp_path / "out").exists()


def one_line_cases():
    smoothing = [*SMOOTHING]
    cases = {
        "radii-comma": (smoothing + ["--radii", ","], ["--radii"]),
        "radii-empty-and-text": (smoothing + ["--radii", "0.1,,x"], ["--radii", "'x'"]),
        "radii-nan": (smoothing + ["--radii", "nan"], ["--radii", "nan"]),
        "radii-negative": (smoothing + ["--radii", "0,-0.5"], ["--radii", "-0.5"]),
        "sigma-nan": (smoothing + ["--sigma", "nan"], ["--sigma", "nan"]),
        "sigma-zero": (smoothing + ["--sigma", "0"], ["--sigma"]),
        "n-zero": (smoothing + ["--n", "0"], ["--n must be >= 1"]),
        "n0-negative": (smoothing + ["--n0", "-3"], ["--n0"]),
        "alpha-one": (smoothing + ["--alpha", "1"], ["--alpha"]),
        "alpha-nan": (smoothing + ["--alpha", "nan"], ["--alpha"]),
        "n-too-small-for-alpha": (smoothing + ["--n", "5"], ["n = 5", "n >= 10"]),
        "attack-radius-nan": (smoothing + ["--attack-radius", "nan"], ["--attack-radius"]),
        "attack-examples-zero": (smoothing + ["--attack-radius", "0.1", "--attack-examples", "0"],
                                 ["--attack-examples"]),
        "seed-negative": (smoothing + ["--seed", "-1"], ["--seed"]),
        "eps-1e308": ([*BOUNDS, "--method", "ibp", "--eps", "1e308"], ["--eps", "above 1"]),
        "eps-8-not-8/255": ([*BOUNDS, "--method", "crown", "--eps", "8"], ["did you mean 8/255"]),
        "eps-comma": ([*BOUNDS, "--method", "ibp", "--eps", ","], ["--eps"]),
        "attack-options-not-an-object": ([*BOUNDS, "--method", "crown", "--eps", "0.1", "--attack-options",
                                          '{"pgd": 5}'], ["pgd"]),
        "attack-unknown": ([*BOUNDS, "--method", "ibp", "--eps", "0.1", "--attack", "nope"], ["nope"]),
    }
    return cases


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("argv, mentions", one_line_cases().values(), ids=one_line_cases().keys())
def test_malformed_options_end_in_one_line_before_any_file(argv, mentions, tmp_path, capsys):
    checkpoint = copy_checkpoint(tmp_path / "ck")
    out = tmp_path / "out"
    outcome = run([*argv, "--checkpoint", checkpoint, "--out", out], capsys)
    assert_refused(outcome, *mentions)
    assert not out.exists()


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("method", ["smoothing", "ibp"])
def test_out_naming_a_file_is_refused(method, tmp_path, capsys):
    checkpoint = copy_checkpoint(tmp_path)
    (tmp_path / "taken").write_text("mine\n")
    argv = [*SMOOTHING] if method == "smoothing" else [*BOUNDS, "--method", method, "--eps", "0.1"]
    before = snapshot(tmp_path)
    outcome = run([*argv, "--checkpoint", checkpoint, "--out", tmp_path / "taken" / "sub"], capsys)
    assert_refused(outcome, "taken", "is a file")
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("traceback")
def test_a_layer_the_bounds_do_not_handle_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    outcome = run(["certify", "--method", "ibp", "--model", "wrn16_1", "--model-args", '{"in_channels": 1}',
                   "--data", "digits", "--eps", "0.1", "--n-examples", 2, "--no-progress", "--out", out], capsys)
    assert_refused(outcome, "does not support", "dropout")
    assert not out.exists()


GOOD_EVALUATION = {"threat": {"norm": "linf", "eps": 0.1}, "robust": {"correct": 3, "n": 4},
                   "per_example": {"label": [1, 4, 8, 6], "robust": {"pgd": "1101"}}}
EVALUATIONS = {
    "not-json": ("{not json", ["not a JSON report"]),
    "threat-a-string": ({**GOOD_EVALUATION, "threat": "linf"}, ["not a report of robust evaluate"]),
    "robust-a-list": ({**GOOD_EVALUATION, "robust": [3, 4]}, ["not a report of robust evaluate"]),
    "robust-above-n": ({**GOOD_EVALUATION, "robust": {"correct": 5, "n": 4}}, ["correct <= n"]),
    "masks-too-short": ({**GOOD_EVALUATION, "per_example": {"label": [1, 4, 8, 6], "robust": {"pgd": "1"}}},
                        ["masks do not cover"]),
    "masks-not-bits": ({**GOOD_EVALUATION, "per_example": {"label": [1, 4, 8, 6], "robust": {"pgd": [1, 1, 0, 1]}}},
                       ["masks do not cover"]),
    "another-eps": ({**GOOD_EVALUATION, "threat": {"norm": "linf", "eps": 0.3}}, ["linf eps 0.3"]),
    "eps-not-a-number": ({**GOOD_EVALUATION, "threat": {"norm": "linf", "eps": "abc"}}, ["linf eps abc"]),
    "other-examples": ({"threat": {"norm": "linf", "eps": 0.1}, "robust": {"correct": 3, "n": 7}},
                       ["covers 7 examples"]),
}


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("content, mentions", EVALUATIONS.values(), ids=EVALUATIONS.keys())
def test_a_bad_evaluation_report_is_one_line_before_any_work(content, mentions, tmp_path, capsys):
    checkpoint = copy_checkpoint(tmp_path)
    report = tmp_path / "report.json"
    report.write_text(content if isinstance(content, str) else json.dumps(content))
    outcome = run([*BOUNDS, "--method", "ibp", "--eps", "0.1", "--checkpoint", checkpoint, "--out", tmp_path / "out",
                   "--evaluation", report], capsys)
    assert_refused(outcome, *mentions)
    assert not (tmp_path / "out").exists()


def test_the_good_evaluation_report_is_compared(tmp_path, capsys):
    checkpoint = copy_checkpoint(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(GOOD_EVALUATION))
    outcome = run([*BOUNDS, "--method", "ibp", "--eps", "0.1", "--checkpoint", checkpoint, "--out", tmp_path / "out",
                   "--evaluation", tmp_path / "report.json"], capsys)
    assert outcome.code in (0, 1) and "(evaluation report)" in (tmp_path / "out" / "report.md").read_text()
