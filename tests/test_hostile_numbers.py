"""Wrong numbers that look right (issue 14, class 2), on the attack, evaluation and audit side.

Attack options are typed and range-checked before any work (``--attack-options`` of ``robust evaluate``
and ``robust audit``, ``evaluate(attack_options=...)``): a NaN, negative or zero step size, a string
for a boolean, options under a wrong-case name or for an attack the run does not include are refused
with one line naming the key, and nothing is written. A report whose numbers contradict each other is
refused before it is written. A configured attack weaker than a default PGD on the same examples
(``{"pgd": {"step_size": 1e-9}}``, Square with one query) is flagged ``unreliable`` by the audit, and the board
then keeps it apart from the ranked entries.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from _helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)
from hostile import assert_refused, copy_checkpoint, run, snapshot

from robust.attacks.registry import AttackOptionError, check_attack_options
from robust.base.stats import accuracy_record as acc
from robust.evaluation import evaluate
from robust.evaluation.results import InconsistentReport, RobustnessReport

pytestmark = pytest.mark.filterwarnings("ignore")

FLAG = "configured_attacks_not_weaker_than_pgd"
SMALL_AUDIT = {"n_examples": 32, "square_queries": 100, "strong_steps": 20, "strong_restarts": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return copy_checkpoint(tmp_path_factory.mktemp("numbers"))


@pytest.fixture(scope="module")
def model(checkpoint):
    from robust.module import RobustClassifier

    return RobustClassifier.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()


@pytest.fixture(scope="module")
def digits32():
    from robust.data import Digits

    x, y = Digits().test_tensors()
    return x[:32], y[:32]


# --- attack options: typed and range-checked before any work ------------------------------------------------
BAD_OPTIONS = [
    ("step-size-nan", "pgd", '{"pgd": {"step_size": NaN}}', ["pgd.step_size", "nan"]),
    ("step-size-negative", "pgd", '{"pgd": {"step_size": -0.05}}', ["pgd.step_size", "-0.05"]),
    ("step-size-zero", "pgd", '{"pgd": {"step_size": 0, "random_start": false}}', ["pgd.step_size", "> 0"]),
    ("step-size-infinite", "pgd", '{"pgd": {"step_size": Infinity}}', ["pgd.step_size", "finite"]),
    ("step-size-word", "pgd-cw", '{"pgd-cw": {"step_size": "big"}}', ["pgd-cw.step_size", "'big'"]),
    ("random-start-string", "pgd", '{"pgd": {"random_start": "no"}}', ["pgd.random_start", "'no'", "boolean"]),
    ("random-start-int", "pgd", '{"pgd": {"random_start": 1}}', ["pgd.random_start", "boolean"]),
    ("steps-zero", "pgd", '{"pgd": {"steps": 0}}', ["pgd.steps", "positive integer"]),
    ("steps-fractional", "pgd", '{"pgd": {"steps": 2.5}}', ["pgd.steps", "2.5"]),
    ("steps-bool", "apgd-ce", '{"apgd-ce": {"steps": true}}', ["apgd-ce.steps", "True"]),
    ("steps-string", "apgd-ce", '{"apgd-ce": {"steps": "100"}}', ["apgd-ce.steps", "'100'"]),
    ("restarts-negative", "pgd", '{"pgd": {"restarts": -1}}', ["pgd.restarts", "-1"]),
    ("queries-zero", "square", '{"square": {"queries": 0}}', ["square.queries", "positive integer"]),
    ("p-init-above-one", "square", '{"square": {"p_init": 1.5}}', ["square.p_init", "(0, 1]"]),
    ("p-init-zero", "square", '{"square": {"p_init": 0}}', ["square.p_init", "(0, 1]"]),
    ("unknown-key", "pgd", '{"pgd": {"stepsize": 0.01}}', ["'stepsize'", "step_size", "random_start"]),
    ("wrong-case-attack", "pgd", '{"PGD": {"step_size": 1e-9}}', ["'PGD'", "'pgd'"]),
    ("unknown-attack", "pgd", '{"pgdd": {"steps": 5}}', ["'pgdd'", "choose from"]),
    ("attack-not-run", "pgd", '{"square": {"queries": 10}}', ["'square'", "does not include"]),
    ("eot-zero", "autoattack-rand", '{"autoattack-rand": {"eot_iter": 0}}', ["autoattack-rand.eot_iter"]),
]


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize("attacks, options, mentions", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_evaluate_refuses_bad_attack_options_before_any_work(attacks, options, mentions, checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    before = snapshot(checkpoint.parent)
    outcome = run(["evaluate", "--checkpoint", checkpoint, "--data", "digits", "--attacks", attacks,
                   "--attack-options", options, "--n-examples", "8", "--no-progress", "--out", out], capsys)
    assert_refused(outcome, "--attack-options", *mentions)
    assert not out.exists() and snapshot(checkpoint.parent) == before
    assert "evaluating" not in outcome.err  # refused before the model or the data were touched


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize("options, mentions", [
    ('{"pgd": {"step_size": NaN}}', ["pgd.step_size"]),
    ('{"pgd": {"random_start": "no"}}', ["pgd.random_start"]),
    ('{"Pgd": {}}', ["'Pgd'"]),
], ids=["nan", "random-start-string", "wrong-case"])
def test_audit_refuses_bad_attack_options(options, mentions, checkpoint, tmp_path, capsys):
    out = tmp_path / "audit"
    outcome = run(["audit", "--checkpoint", checkpoint, "--data", "digits", "--attacks", "pgd",
                   "--attack-options", options, "--n-examples", "8", "--no-corruptions", "--no-progress",
                   "--out", out], capsys)
    assert_refused(outcome, "--attack-options", *mentions)
    assert not out.exists()


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize("options, key", [
    ({"pgd": {"step_size": float("nan")}}, "pgd.step_size"),
    ({"pgd": {"random_start": "no"}}, "pgd.random_start"),
    ({"PGD": {"steps": 5}}, "'PGD'"),
], ids=["nan", "random-start-string", "wrong-case"])
def test_python_api_refuses_bad_attack_options(options, key, model, digits32):
    with pytest.raises(AttackOptionError, match=key.replace(".", r"\.")):
        evaluate(model, digits32, {"norm": "linf", "eps": 0.1}, attacks=("pgd",), attack_options=options,
                 audit=False, progress=False)


def test_good_options_are_normalised():
    checked = check_attack_options(["pgd", "square"], {"pgd": {"step_size": "2/255", "random_start": False},
                                                      "square": {"p_init": 1}})
    assert checked == {"pgd": {"step_size": pytest.approx(2 / 255), "random_start": False},
                       "square": {"p_init": 1.0}}


# --- reports: consistent before anything is written -----------------------------------------------------------
def good_report() -> dict:
    per_class = {"0": {"n": 4, "clean": acc(4, 4), "robust": acc(2, 4)}, "1": {"n": 4, "clean": acc(3, 4),
                                                                            "robust": acc(1, 4)}}
    return {"kind": "robustness", "threat": {"kind": "linf", "norm": "linf", "eps": 0.1, "eps_str": "0.1"},
            "n_examples": 8, "clean": acc(7, 8), "robust": acc(3, 8),
            "per_attack": {"pgd": {"robust": acc(3, 8), "settings": {}, "seconds": 0.1},
                           "fgsm": {"robust": acc(5, 8), "settings": {}, "seconds": 0.1}},
            "per_class": per_class, "confusion": [], "class_names": None,
            "audit": {"ran": True, "unreliable": False, "flags": [], "checks": []},
            "sweep": [{"eps": 0.1, "eps_str": "0.1", "clean": acc(7, 8), "robust": acc(3, 8)}],
            "protocol": {"seed": 0}, "corruptions": None, "physical": None}


def _set(path: str, value):
    def edit(report: dict) -> None:
        *keys, last = path.split(".")
        target = report
        for k in keys:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[last] = value
    return edit


BAD_REPORTS = [
    ("robust-above-clean", _set("robust", acc(8, 8)), "robust accuracy"),
    ("correct-above-n", _set("clean", {"accuracy": 1.25, "correct": 10, "n": 8, "ci95": [0.9, 1.0]}), "clean"),
    ("bool-count", _set("clean", {"accuracy": 0.01, "correct": True, "n": 8, "ci95": [0.0, 0.1]}), "clean"),
    ("accuracy-not-ratio", _set("robust", {**acc(3, 8), "accuracy": 0.99}), "correct / n"),
    ("one-value-interval", _set("robust", {**acc(3, 8), "ci95": [0.1]}), "ci95"),
    ("interval-misses-value", _set("robust", {**acc(3, 8), "ci95": [0.5, 0.9]}), "ci95"),
    ("attack-below-worst-case", _set("per_attack.fgsm.robust", acc(2, 8)), "per_attack.fgsm"),
    ("other-n", _set("per_attack.pgd.robust", acc(3, 9)), "per_attack.pgd"),
    ("class-robust-above-clean", _set("per_class.1.robust", acc(4, 4)), "per_class.1"),
    ("sweep-robust-above-clean", _set("sweep.0.robust", acc(8, 8)), "sweep"),
    ("unreliable-hidden", _set("audit.flags", [{"name": "x", "message": "y"}]), "audit"),
]


@pytest.mark.hostile("numbers")
@pytest.mark.parametrize("edit, field", [c[1:] for c in BAD_REPORTS], ids=[c[0] for c in BAD_REPORTS])
def test_inconsistent_report_is_refused_before_writing(edit, field, tmp_path):
    from robust.reports.evaluation import write_report

    report = good_report()
    write_report(copy.deepcopy(report), tmp_path)  # the good report is written
    before = snapshot(tmp_path)
    edit(report)
    with pytest.raises(InconsistentReport, match=field.replace(".", r"\.").replace("/", r"\/")):
        write_report(report, tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.hostile("numbers")
def test_report_object_checks_its_masks(model, digits32):
    report = evaluate(model, digits32, {"norm": "linf", "eps": 0.1}, attacks=("fgsm",), audit=False, progress=False)
    report.check()
    forged = RobustnessReport(**{k: copy.deepcopy(getattr(report, k)) for k in RobustnessReport.__dataclass_fields__
                                 if k not in ("masks", "examples")}, masks={"fgsm": report.masks["fgsm"].clone()})
    forged.masks["fgsm"][:] = False
    with pytest.raises(InconsistentReport, match="mask"):
        forged.check()


# --- the audit holds the configured attacks against a default PGD --------------------------------------------
@pytest.mark.hostile("numbers")
@pytest.mark.parametrize("attacks, options", [
    (("pgd",), {"pgd": {"step_size": 1e-9}}),
    (("pgd",), {"pgd": {"steps": 1, "step_size": 1e-4, "random_start": False}}),
    (("pgd",), {"pgd": {"steps": 2, "step_size": 0.002}}),
    (("square",), {"square": {"queries": 1}}),
    (("pgd-cw",), {"pgd-cw": {"step_size": 1e-7, "restarts": 2}}),
], ids=["tiny-step", "one-tiny-step", "two-small-steps", "square-one-query", "cw-tiny-step"])
def test_weak_configured_attacks_are_flagged(attacks, options, model, digits32):
    report = evaluate(model, digits32, {"norm": "linf", "eps": 0.1}, attacks=attacks, attack_options=options,
                      progress=False, audit_options=SMALL_AUDIT)
    flag = next(f for f in report.audit["flags"] if f["name"] == FLAG)
    assert report.unreliable and report.to_dict()["unreliable"] is True
    assert "weaker than the default" in flag["message"] and flag["value"]["broken_only_by_baseline"] >= 2
    assert flag["value"]["baseline"] < flag["value"]["configured"]


def test_default_pgd_passes_the_baseline_check(model, digits32):
    report = evaluate(model, digits32, {"norm": "linf", "eps": 0.1}, attacks=("pgd",), progress=False,
                      audit_options=SMALL_AUDIT)
    check = next(c for c in report.audit["checks"] if c["name"] == FLAG)
    assert check["passed"], check


@pytest.fixture(scope="module")
def crippled_and_honest(checkpoint, tmp_path_factory):
    """The issue's command, ``--attack-options '{"pgd": {"step_size": 1e-9}}'``, and the same without it."""
    from robust.cli import main

    root = tmp_path_factory.mktemp("boards")
    common = ["--checkpoint", str(checkpoint), "--data", "digits", "--attacks", "pgd", "--n-examples", "16",
              "--eps", "0.1", "--no-progress"]
    assert main(["evaluate", *common, "--attack-options", '{"pgd": {"step_size": 1e-9}}',
                 "--out", str(root / "crippled")]) == 0
    assert main(["evaluate", *common, "--out", str(root / "honest")]) == 0
    return [json.loads((root / name / "report.json").read_text()) for name in ("crippled", "honest")]


@pytest.mark.hostile("numbers")
def test_tiny_step_size_through_the_command_is_flagged(crippled_and_honest):
    crippled, honest = crippled_and_honest
    assert crippled["robust"]["correct"] > honest["robust"]["correct"]  # the wrong number that looks right ...
    assert crippled["unreliable"] is True  # ... is flagged
    assert FLAG in [f["name"] for f in crippled["audit"]["flags"]]
    assert honest["unreliable"] is False, honest["audit"]["flags"]


@pytest.mark.hostile("numbers")
def test_board_keeps_the_flagged_entry_apart(crippled_and_honest, tmp_path, capsys):
    paths = []
    for name, report in zip(("crippled", "honest"), crippled_and_honest):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    db = tmp_path / "board.db"
    for path, name in zip(paths, ("crippled", "honest")):
        assert run(["leaderboard", "--db", db, "add", path, "--name", name], capsys).code == 0
    out = tmp_path / "board.json"
    assert run(["leaderboard", "--db", db, "export", "--format", "json", "--out", out], capsys).code == 0
    from robust.leaderboard.ranking import boards

    entries = json.loads(out.read_text())["entries"]
    (board,) = boards(entries)
    ranks = {row["name"]: (row["rank"], row["unreliable"]) for row in board["rows"]}
    assert ranks == {"honest": (1, False), "crippled": (None, True)}
    shown = run(["leaderboard", "--db", db, "show"], capsys).out
    assert "UNRELIABLE: " + FLAG in shown
