"""A hand-edited ``robust evaluate`` state is refused, not resumed (issue 14, class 6), and the evaluate and
audit commands end bad attack options and images that do not fit the model with one line (class 7).

The state is made by a real short run (16 digits, FGSM and 3-step PGD, stopped after its last batch,
before the report), then edited the way a person with ``torch.load``/``torch.save`` would: the journal's
digest still matches (it names the run, it does not seal it), so the refusal has to come from checking the
stored batches against their structure, their ranges and the model. The issue's example, a state edited
from 7/300 to 112/300 robust, is the first case here.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)
from hostile import assert_refused, copy_checkpoint, run, snapshot

from robust.base.runtime import ModelDataMismatch
from robust.base.state import StateError, read_journal

pytestmark = pytest.mark.filterwarnings("ignore")

STATE = "evaluate_state.pt"
ARGS = ["--data", "digits", "--n-examples", "16", "--batch-size", "16", "--eps", "0.1", "--attacks", "fgsm,pgd",
        "--attack-options", '{"pgd": {"steps": 3}}', "--no-audit", "--no-progress"]


def write_journal(path: Path, header: dict, rounds: dict) -> None:
    """The journal format of ``robust.base.state``: length-prefixed ``torch.save`` frames, header first."""
    frames = []
    for obj in (header, rounds):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        frames.append(struct.pack("<Q", len(buffer.getvalue())) + buffer.getvalue())
    path.write_bytes(b"".join(frames))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(checkpoint, out)``: an evaluation whose one batch is finished and stored, stopped before its report."""
    from robust.cli import main
    from robust.reports import evaluation

    root = tmp_path_factory.mktemp("state")
    checkpoint = copy_checkpoint(root)
    out = root / "stopped"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation, "write_report", stop)
        with pytest.raises(KeyboardInterrupt):
            main(["evaluate", "--checkpoint", str(checkpoint), *ARGS, "--out", str(out)])
    assert (out / STATE).exists() and not (out / "report.json").exists()
    return checkpoint, out


@pytest.fixture(scope="module")
def honest(stopped_run, tmp_path_factory) -> dict:
    """The report of the same evaluation run from the start."""
    from robust.cli import main

    checkpoint, _ = stopped_run
    out = tmp_path_factory.mktemp("fresh") / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), *ARGS, "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def copy_run(stopped_run: tuple[Path, Path], tmp_path: Path) -> Path:
    out = tmp_path / "eval"
    shutil.copytree(stopped_run[1], out)
    return out


def edit_state(out: Path, edit: Callable[[dict, torch.Tensor, torch.Tensor], None]) -> None:
    """Load the state, let ``edit(batches, labels, images)`` change it in place, and save it back whole."""
    from robust.data import Digits

    header, rounds = read_journal(out / STATE)
    x, y = Digits().test_tensors()
    edit(rounds, y[:16], x[:16])
    write_journal(out / STATE, header, rounds)


# --- the edits ------------------------------------------------------------------------------------------
def inflate_carefully(rounds, y, x):
    """The issue's example: every clean-correct example marked robust under every attack, with predictions,
    counts and stored adversarial examples made to agree, so only the model can tell."""
    rec = rounds[0]
    ok = rec["clean_pred"] == y
    for name in rec["robust"]:
        broken = ok & ~rec["robust"][name]
        assert broken.any()  # the honest run broke something: the edit raises the robust count
        rec["robust"][name] = ok.clone()
        rec["adv_pred"][name] = torch.where(ok, y, rec["clean_pred"])
        rec["components"][name] = {k: 0 for k in rec["components"][name]}
        rec["x_adv"][name] = x.clone()


def mark_all_robust(rounds, y, x):
    for name in rounds[0]["robust"]:
        rounds[0]["robust"][name][:] = True


def fake_clean_prediction(rounds, y, x):
    """A misclassified example made correct (prediction and masks), everything else consistent."""
    rec = rounds[0]
    wrong = (rec["clean_pred"] != y).nonzero().flatten()
    assert len(wrong)
    i = int(wrong[0])
    rec["clean_pred"][i] = y[i]
    for name in rec["robust"]:
        rec["robust"][name][i] = True
        rec["adv_pred"][name][i] = y[i]


def short_mask(rounds, y, x):
    rounds[0]["robust"]["pgd"] = rounds[0]["robust"]["pgd"][:-1]


def integer_mask(rounds, y, x):
    rounds[0]["robust"]["fgsm"] = rounds[0]["robust"]["fgsm"].to(torch.uint8)


def counts_off(rounds, y, x):
    parts = rounds[0]["components"]["pgd"]
    parts["pgd"] = parts["pgd"] + 3


def extra_batch(rounds, y, x):
    rounds[7] = rounds[0]


def nan_seconds(rounds, y, x):
    rounds[0]["seconds"]["fgsm"] = float("nan")


def adversarial_outside_ball(rounds, y, x):
    rounds[0]["x_adv"]["pgd"] = (rounds[0]["x_adv"]["pgd"] + 0.5).clamp(0, 1)


def predictions_contradict_mask(rounds, y, x):
    rec = rounds[0]
    robust = rec["robust"]["fgsm"].nonzero().flatten()
    assert len(robust)
    rec["adv_pred"]["fgsm"][int(robust[0])] = (y[int(robust[0])] + 1) % 10


def attack_missing(rounds, y, x):
    del rounds[0]["robust"]["pgd"]


def record_not_a_record(rounds, y, x):
    rounds[0] = "robust 112/300"


def adversarial_replaced_by_clean(rounds, y, x):
    """The stored adversarial examples of broken images swapped for the clean images."""
    rec = rounds[0]
    rec["x_adv"]["pgd"] = x.clone()


EDITS = [
    ("inflated-like-the-issue", inflate_carefully, "different robust verdict"),
    ("all-marked-robust", mark_all_robust, "misclassifies without attack"),
    ("clean-prediction-faked", fake_clean_prediction, "clean predictions differ"),
    ("mask-too-short", short_mask, "16 booleans"),
    ("mask-not-boolean", integer_mask, "16 booleans"),
    ("part-counts-off", counts_off, "do not add up"),
    ("batch-out-of-range", extra_batch, "batch index 7"),
    ("seconds-nan", nan_seconds, "seconds of fgsm"),
    ("adversarial-outside-ball", adversarial_outside_ball, "eps-ball"),
    ("predictions-contradict-mask", predictions_contradict_mask, "contradict"),
    ("attack-missing", attack_missing, "one entry per attack"),
    ("record-replaced", record_not_a_record, "not an evaluation record"),
    ("adversarial-replaced-by-clean", adversarial_replaced_by_clean, "classified correctly"),
]


@pytest.mark.hostile("corruption")
@pytest.mark.parametrize("edit, why", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_edited_state_is_refused(edit, why, stopped_run, tmp_path, capsys):
    checkpoint, _ = stopped_run
    out = copy_run(stopped_run, tmp_path)
    edit_state(out, edit)
    before = snapshot(out)
    outcome = run(["evaluate", "--checkpoint", checkpoint, *ARGS, "--out", out], capsys)
    assert_refused(outcome, str(out / STATE), why, "--fresh")
    assert snapshot(out) == before and not (out / "report.json").exists()


@pytest.mark.hostile("corruption")
def test_edited_state_is_refused_through_the_python_api(stopped_run, tmp_path):
    from robust.data import Digits
    from robust.evaluation import evaluate
    from robust.module import RobustClassifier

    checkpoint, _ = stopped_run
    out = copy_run(stopped_run, tmp_path)
    edit_state(out, inflate_carefully)
    model = RobustClassifier.load_from_checkpoint(checkpoint, map_location="cpu").model
    x, y = Digits().test_tensors()
    with pytest.raises(StateError, match="--fresh"):
        evaluate(model, (x, y), {"norm": "linf", "eps": 0.1}, ["fgsm", "pgd"], n_examples=16, batch_size=16,
                 audit=False, attack_options={"pgd": {"steps": 3}}, state_path=out / STATE, progress=False)


def test_unedited_state_resumes_to_the_honest_report(stopped_run, honest, tmp_path, capsys):
    checkpoint, _ = stopped_run
    out = copy_run(stopped_run, tmp_path)
    outcome = run(["evaluate", "--checkpoint", checkpoint, *ARGS, "--out", out], capsys)
    assert outcome.code == 0, outcome.err
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["robust"] == honest["robust"] and resumed["per_example"] == honest["per_example"]
    assert not (out / STATE).exists()


def test_fresh_replaces_an_edited_state(stopped_run, honest, tmp_path, capsys):
    checkpoint, _ = stopped_run
    out = copy_run(stopped_run, tmp_path)
    edit_state(out, inflate_carefully)
    assert run(["evaluate", "--checkpoint", checkpoint, *ARGS, "--fresh", "--out", out], capsys).code == 0
    assert json.loads((out / "report.json").read_text())["robust"] == honest["robust"]


# --- one line instead of a traceback: attack options and images that do not fit -------------------------------
@pytest.fixture(scope="module")
def npz_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    files = {}
    for name, shape in {"rgb": (8, 3, 8, 8), "large": (8, 1, 28, 28)}.items():
        files[name] = root / f"{name}.npz"
        np.savez(files[name], x_test=rng.integers(0, 256, shape, dtype=np.uint8), y_test=np.arange(8) % 10)
    return files


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("command", ["evaluate", "audit"])
@pytest.mark.parametrize("attacks, options, mentions", [
    ("pgd", '{"pgd": 5}', ["'pgd'", "JSON object"]),
    ("square", '{"square": {"p_init": "x"}}', ["square.p_init", "'x'"]),
    ("pgd", '{"pgd": null}', ["'pgd'", "JSON object"]),
    ("pgd", "[1, 2]", ["must be a JSON object"]),
], ids=["not-an-object", "p-init-string", "null", "list"])
def test_bad_attack_options_end_in_one_line(command, attacks, options, mentions, stopped_run, tmp_path, capsys):
    checkpoint, _ = stopped_run
    outcome = run([command, "--checkpoint", checkpoint, "--data", "digits", "--attacks", attacks,
                   "--attack-options", options, "--n-examples", "8", "--no-progress", "--out", tmp_path / "o"],
                  capsys)
    assert_refused(outcome, "--attack-options", *mentions)
    assert not (tmp_path / "o").exists()


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("command", ["evaluate", "audit"])
@pytest.mark.parametrize("attacks, mentions", [("PGD", ["'PGD'", "'pgd'"]), (",", ["at least one attack"]),
                                               ("pgd,nonexistent", ["'nonexistent'", "choose from"])],
                         ids=["wrong-case", "empty", "unknown"])
def test_bad_attack_names_end_in_one_line(command, attacks, mentions, stopped_run, tmp_path, capsys):
    checkpoint, _ = stopped_run
    outcome = run([command, "--checkpoint", checkpoint, "--data", "digits", "--attacks", attacks,
                   "--n-examples", "8", "--no-progress", "--out", tmp_path / "o"], capsys)
    assert_refused(outcome, "--attacks", *mentions)


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("command", ["evaluate", "audit"])
@pytest.mark.parametrize("data, shape", [("rgb", "3x8x8"), ("large", "1x28x28")])
def test_images_that_do_not_fit_the_model_end_in_one_line(command, data, shape, npz_files, stopped_run, tmp_path,
                                                          capsys):
    checkpoint, _ = stopped_run
    outcome = run([command, "--checkpoint", checkpoint, "--npz", npz_files[data], "--attacks", "fgsm",
                   "--no-progress", "--out", tmp_path / "o"], capsys)
    assert_refused(outcome, shape, "1x8x8")
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 1, 28, 28), (4, 1, 4, 4)], ids=["rgb", "large", "small"])
def test_python_api_names_both_shapes_before_attacking(shape, stopped_run):
    from robust.evaluation import evaluate
    from robust.module import RobustClassifier

    model = RobustClassifier.load_from_checkpoint(stopped_run[0], map_location="cpu").model
    with pytest.raises(ModelDataMismatch) as err:
        evaluate(model, (torch.rand(shape), torch.zeros(4, dtype=torch.long)), {"norm": "linf", "eps": 0.1},
                 ["fgsm"], audit=False, progress=False)
    message = str(err.value)
    assert "x".join(map(str, shape[1:])) in message and "1x8x8" in message and "\n" not in message


@pytest.mark.hostile("traceback")
@pytest.mark.parametrize("option, value, mentions", [
    ("--patch", "1.5", ["--patch", "(0, 1)", "1.5"]),
    ("--patch", "nan", ["--patch", "nan"]),
    ("--sweep", "0.05,abc", ["sweep", "'abc'"]),
    ("--sweep", "0.05,-0.1", ["sweep", "eps"]),
], ids=["patch-above-one", "patch-nan", "sweep-word", "sweep-negative"])
def test_bad_extras_are_refused_before_the_attack_loop(option, value, mentions, stopped_run, tmp_path, capsys):
    """Refused before the first attack, not after the whole evaluation ran: no resume state was started."""
    checkpoint, _ = stopped_run
    out = tmp_path / "o"
    outcome = run(["evaluate", "--checkpoint", checkpoint, *ARGS, option, value, "--out", out], capsys)
    assert_refused(outcome, *mentions)
    assert not (out / STATE).exists() and not (out / "report.json").exists()
