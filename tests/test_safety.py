"""Safety-critical classes: the harm matrix (files, validation, the GTSRB default), the safety view of a
report (exact figures on a hand-built report), targeted APGD-T toward a class set, and the command-line
flags end to end on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import digits, one_thread, train  # noqa: F401 - one_thread: tiny convs on one core
from torch import nn

from robust.base.classes import class_metadata
from robust.base.stats import accuracy_record, clopper_pearson
from robust.cli import main
from robust.evaluation.safety import (
    HarmMatrix,
    HarmMatrixError,
    add_certified,
    default_harm,
    default_targeted,
    gtsrb_harm,
    parse_targeted,
    safety_view,
    targeted_success,
)
from robust.reports.safety import safety_lines, safety_section

GTSRB = class_metadata("gtsrb")
STOP, YIELD, PRIORITY, ROAD_WORK = 14, 13, 12, 25
SL30, SL50, SL60, SL120 = 1, 2, 3, 8


# ------------------------------------------------------------------------------------------ harm matrix


def write(tmp_path, text: str, name: str = "harm.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("matrix: [[0, 1], [1, 0]]", "matrix must be 3 x 3"),
    ("matrix: [[0, 1, 1], [1, 0, -2], [1, 1, 0]]", "matrix[1][2] is -2; costs must be >= 0"),
    ("matrix: [[0, 1, 1], [1, 0, .nan], [1, 1, 0]]", "matrix[1][2] must be a finite number"),
    ("matrix: [[1, 1, 1], [1, 0, 1], [1, 1, 0]]", "matrix[0][0] is 1; a correct prediction costs 0"),
    ("costs: [{label: 0, read_as: 1, cost: -1}]", "costs[0].cost is -1"),
    ("costs: [{label: stop, read_as: 1, cost: 3}]", "class name 'stop' needs the data set's class metadata"),
    ("costs: [{label: 0, read_as: 7, cost: 3}]", "class 7 is not in 0..2"),
    ("costs: [{label: 0, read_as: 1}]", "exactly the keys label, read_as and cost"),
    ("scale: 2", "unknown key 'scale'"),
    ("base: gtsrb", "base gtsrb has 43 classes, the data has 3"),
    ("[1, 2]", "must be a mapping"),
    ("costs: [{label: 0, read_as: 1, cost: 1}", "not YAML"),
])
def test_a_bad_harm_file_is_refused_with_one_line_naming_the_value(tmp_path, text, message):
    with pytest.raises(HarmMatrixError) as err:
        HarmMatrix.from_file(write(tmp_path, text), 3)
    assert message in str(err.value) and "\n" not in str(err.value) and "harm.yaml" in str(err.value)


def test_an_unknown_class_name_is_refused_with_metadata(tmp_path):
    with pytest.raises(HarmMatrixError, match="unknown class name 'stopp'"):
        HarmMatrix.from_file(write(tmp_path, "base: gtsrb\ncosts: [{label: stopp, read_as: 1, cost: 3}]"), 43, GTSRB)
    with pytest.raises(HarmMatrixError, match="unknown group 'speed'"):
        HarmMatrix.from_file(write(tmp_path, "costs: [{label: 14, read_as: 'group:speed', cost: 3}]"), 43, GTSRB)


def test_the_matrix_itself_refuses_nan_negative_and_a_nonzero_diagonal():
    with pytest.raises(HarmMatrixError, match=r"cost \[0, 1\] is nan"):
        HarmMatrix(np.array([[0, np.nan], [1, 0]]))
    with pytest.raises(HarmMatrixError, match=r"cost \[1, 0\] is -1"):
        HarmMatrix(np.array([[0, 1], [-1, 0]]))
    with pytest.raises(HarmMatrixError, match=r"cost \[1, 1\] is 2"):
        HarmMatrix(np.array([[0, 1], [1, 2]]))
    with pytest.raises(HarmMatrixError, match="C x C"):
        HarmMatrix(np.zeros((2, 3)))


def test_a_project_file_names_classes_by_id_name_and_group_and_later_rules_override(tmp_path):
    path = write(tmp_path, "base: gtsrb\nsevere: 4\nsafety: [stop, 27]\ncosts:\n"
                           "  - {label: stop, read_as: 'group:speed_limit', cost: 20}\n"
                           "  - {label: 14, read_as: 'speed limit 20', cost: 7.5}\n"
                           "  - {label: '*', read_as: 2, cost: 0}\n")
    harm = HarmMatrix.from_file(path, 43, GTSRB)
    assert harm.cost(STOP, SL30) == 20 and harm.cost(STOP, 0) == 7.5  # the later pair rule wins
    assert harm.cost(STOP, SL50) == 0 and harm.cost(SL50, SL50) == 0  # '*' -> 2 set, the diagonal stays 0
    assert harm.cost(STOP, PRIORITY) == 10  # untouched: the GTSRB default
    assert harm.severe == 4 and harm.safety == (STOP, 27)
    as_json = write(tmp_path, json.dumps({"matrix": [[0, 1, 2], [3, 0, 4], [5, 6, 0]]}), "harm.json")
    m = HarmMatrix.from_file(as_json, 3)
    assert m.costs.tolist() == [[0, 1, 2], [3, 0, 4], [5, 6, 0]] and m.severe is None


def test_the_gtsrb_default_ranks_a_stop_read_as_a_speed_limit_above_a_50_read_as_60():
    harm = gtsrb_harm()
    off = harm.costs[~np.eye(43, dtype=bool)]
    assert off.min() == 1 and np.all(np.diag(harm.costs) == 0)  # every confusion costs at least 1
    for sl in GTSRB.groups["speed_limit"]:
        assert harm.cost(STOP, sl) == 10 and harm.cost(YIELD, sl) == 10 and harm.cost(17, sl) == 10
    assert harm.cost(STOP, PRIORITY) == 10 and harm.cost(STOP, YIELD) == 3
    assert harm.cost(SL50, SL60) == 2 and harm.cost(SL60, SL50) == 1  # speeding costs more than slowing
    assert harm.cost(SL30, SL120) == 1 + 5  # 90 km/h too fast: 1 + ceil(90 / 20)
    assert harm.cost(STOP, SL30) > harm.cost(SL50, SL60)
    assert harm.cost(27, SL50) == 6 and harm.cost(27, 28) == 2  # pedestrians warning lost vs another warning
    assert harm.severe == 5 and harm.safety == GTSRB.safety
    assert default_harm(43, GTSRB).costs.tolist() == harm.costs.tolist()
    assert default_harm(10).costs.tolist() == (1 - np.eye(10)).tolist()  # no metadata: uniform


def test_targeted_specs_read_ids_names_and_groups():
    assert parse_targeted("14>0,1,2", 43) == [(14, (0, 1, 2))]
    assert parse_targeted("stop>group:speed_limit; 13>stop", 43, GTSRB) == [
        (STOP, (0, 1, 2, 3, 4, 5, 7, 8)), (YIELD, (STOP,))]
    assert default_targeted(GTSRB) == [(STOP, (0, 1, 2, 3, 4, 5, 7, 8))] and default_targeted(None) == []
    for bad, message in (("14", "SOURCE>TARGET"), ("3>3", "cannot be its own target"), ("3>12", "not in 0..9"),
                         ("group:x>1", "needs the data set's class metadata")):
        with pytest.raises(HarmMatrixError, match=message):
            parse_targeted(bad, 10)


# -------------------------------------------------------------------------------------------- the view


def hand_report() -> dict:
    """22 examples of 4 GTSRB classes with known predictions (the expected figures are below)."""
    rows = ([(STOP, STOP, STOP)] * 4 + [(STOP, STOP, SL30)] * 3 + [(STOP, STOP, YIELD)] * 2
            + [(STOP, STOP, PRIORITY)]
            + [(SL50, SL50, SL50)] + [(SL50, SL60, SL60)] + [(SL50, SL50, SL60)] * 2 + [(SL50, SL50, SL120)]
            + [(YIELD, YIELD, YIELD)] * 5 + [(ROAD_WORK, ROAD_WORK, SL50)] * 2)
    label, clean, adv = (list(v) for v in zip(*rows))
    bits = "".join("1" if a == t else "0" for t, c, a in rows)
    return {"threat": {"kind": "linf", "norm": "linf", "eps": 8 / 255, "eps_str": "8/255"}, "n_examples": len(rows),
            "protocol": {"num_classes": 43},
            "per_example": {"label": label, "clean_pred": clean, "adv_pred": adv, "robust": {"pgd": bits}}}


def test_the_safety_view_gives_the_exact_figures_of_a_hand_built_report():
    view = safety_view(hand_report(), metadata=GTSRB)
    by = {e["class"]: e for e in view["classes"]}
    assert [e["class"] for e in view["classes"]] == list(GTSRB.safety)
    assert by[STOP]["n"] == 10 and by[STOP]["clean"] == accuracy_record(10, 10)
    assert by[STOP]["robust"] == accuracy_record(4, 10) and by[STOP]["name"] == "stop"
    assert by[SL50]["clean"] == accuracy_record(4, 5) and by[SL50]["robust"] == accuracy_record(1, 5)
    assert by[YIELD]["robust"] == accuracy_record(5, 5) and by[27]["n"] == 0 and by[27]["robust"] is None
    # road work (not a safety class) loses both images: the worst class overall; 50 km/h the worst safety class
    assert view["worst_class"]["class"] == ROAD_WORK and view["worst_class"]["robust"] == accuracy_record(0, 2)
    assert view["worst_safety_class"]["class"] == SL50
    clean, adv = view["harm"]["clean"], view["harm"]["adversarial"]
    assert clean["total"] == 2 and clean["mean"] == pytest.approx(2 / 22) and clean["errors"] == 1  # 50 -> 60
    # under attack: stop 3x10 (-> 30) + 2x3 (-> yield) + 10 (-> priority road); 50 km/h 2 (clean 50 -> 60)
    # + 2x2 (-> 60) + 5 (-> 120); road work 2x3 (-> 50) = 63 over 22 examples
    assert adv["total"] == 63 and adv["mean"] == pytest.approx(63 / 22) and adv["errors"] == 12
    assert adv["severe_errors"] == 5  # 3 stop -> 30, 1 stop -> priority road, 1 50 -> 120 (cost >= 5)
    assert adv["severe_share_of_errors"]["rate"] == pytest.approx(5 / 12)
    assert adv["severe_share_of_errors"]["ci95"] == list(clopper_pearson(5, 12))
    assert adv["severe_share_of_examples"]["count"] == 5 and adv["severe_share_of_examples"]["n"] == 22
    assert clean["severe_share_of_errors"]["count"] == 0 and clean["severe_share_of_errors"]["n"] == 1
    assert adv["top"][0] == {"true": STOP, "pred": SL30, "count": 3, "cost": 10.0, "total": 30.0}
    md = "\n".join(safety_section(view))
    assert "## Safety-critical classes" in md and "14 (stop)" in md and "Worst class" in md


def test_certified_accuracy_joins_the_view_per_class():
    view = safety_view(hand_report(), metadata=GTSRB)
    rows = [{"idx": i, "label": t, "predict": t, "status": "verified" if i < 2 else "inconclusive"}
            for i, t in enumerate(hand_report()["per_example"]["label"])]
    add_certified(view, {"method": "crown", "threat": {"eps_str": "8/255"}, "per_example": rows})
    by = {e["class"]: e for e in view["classes"]}
    assert by[STOP]["certified"] == accuracy_record(2, 10) and by[SL50]["certified"] == accuracy_record(0, 5)
    assert view["worst_class"]["certified"] == accuracy_record(0, 2) and "crown at 8/255" == view["certified_by"]
    assert any("certified 20.00%" in line for line in safety_lines(view))


# ------------------------------------------------------------------------------------ targeted attacks


def linear_model() -> nn.Module:
    """4 classes on 1x4x4 images near 0.5: z0 = 1, z1 = sum(x - 0.5), z2 = -sum(x - 0.5), z3 = -1.

    Class 1 overtakes class 0 exactly when sum(x - 0.5) > 1: reachable in the L-inf ball of radius eps
    iff 16 eps > 1 (up to the images' own +-0.005 jitter), so eps 0.1 can reach it and eps 0.05 cannot;
    class 3 is never reached.
    """
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1], model[1].weight[2] = 1.0, -1.0
        model[1].bias.copy_(torch.tensor([1.0, -8.0, 8.0, -1.0]))
    return model


def near_half(n: int) -> torch.Tensor:
    return 0.5 + 0.01 * (torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0)) - 0.5)


@pytest.mark.parametrize("loss", ["dlr", "ce"])
def test_targeted_apgd_reaches_a_reachable_target_and_not_an_unreachable_one(loss):
    model, x, y = linear_model(), near_half(6), torch.zeros(6, dtype=torch.long)
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    hit = targeted_success(model, x, y, 0, [3, 1], {"norm": "linf", "eps": 0.1}, steps=20, progress=False, loss=loss)
    assert torch.equal(torch.rand(3), expected_next)  # torchattacks' reseeding did not leak out
    assert hit["success"] == {"rate": 1.0, "count": 6, "n": 6, "ci95": list(clopper_pearson(6, 6))}
    assert hit["per_target"] == {"3": 0, "1": 6} and hit["clean_correct"] == 6
    miss = targeted_success(model, x, y, 0, [1, 3], {"norm": "linf", "eps": 0.05}, steps=20, progress=False,
                            loss=loss)
    assert miss["success"]["count"] == 0 and miss["success_on_correct"]["n"] == 6
    torch.random.set_rng_state(state)


def test_targeted_results_sit_next_to_the_untargeted_figure_of_the_source_class():
    report = hand_report()
    result = {"source": STOP, "targets": [SL30], "success": {"rate": 0.3, "count": 3, "n": 10, "ci95": [0, 1]}}
    view = safety_view(report, metadata=GTSRB, targeted=[result])
    (entry,) = view["targeted"]
    assert entry["untargeted"]["misread"]["count"] == 6 and entry["untargeted"]["misread"]["n"] == 10


# ------------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """CNN-small trained 3 epochs on digits (plain cross-entropy), saved as a state_dict."""
    from robust.models import create

    torch.manual_seed(0)
    model = train(create("cnn_small", 10, in_channels=1, input_size=8), epochs=3)
    x, y = digits("test")
    assert float((model(x).argmax(1) == y).float().mean()) > 0.8
    path = tmp_path_factory.mktemp("w") / "w.pt"
    torch.save(model.state_dict(), path)
    return path


MODEL = ["--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}', "--data", "digits",
         "--n-examples", "60", "--no-progress", "--norm", "linf", "--eps", "0.2"]


def test_evaluate_with_a_harm_file_and_explicit_targets_leads_with_the_safety_section(weights, tmp_path, capsys):
    harm = write(tmp_path, "safety: [3, 8]\nsevere: 4\ncosts: [{label: 3, read_as: [5, 8], cost: 6}]")
    out = tmp_path / "eval"
    rc = main(["evaluate", *MODEL, "--weights", str(weights), "--attacks", "pgd", "--attack-options",
               '{"pgd": {"steps": 5}}', "--no-audit", "--harm", str(harm), "--targeted", "3>5,8",
               "--targeted-steps", "10", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    safety = report["safety"]
    assert [e["class"] for e in safety["classes"]] == [3, 8]
    per_class = report["per_class"]
    assert safety["classes"][0]["robust"] == per_class["3"]["robust"]  # the view agrees with the report
    assert safety["harm"]["matrix"]["costs"][3][5] == 6 and safety["harm"]["matrix"]["severe"] == 4
    (t,) = safety["targeted"]
    assert t["source"] == 3 and t["targets"] == [5, 8] and t["settings"]["steps"] == 10
    assert t["n"] == per_class["3"]["n"] and 0 <= t["success"]["count"] <= t["n"]
    assert t["untargeted"]["misread"]["count"] == per_class["3"]["n"] - per_class["3"]["robust"]["correct"]
    md = (out / "report.md").read_text()
    assert md.index("## Safety-critical classes") < md.index("clean accuracy") and "safety.png" in md
    assert "safety: targeted 3 -> {5, 8}" in capsys.readouterr().out


def test_bad_safety_flags_fail_on_one_line_before_any_attack(weights, tmp_path, capsys):
    bad = write(tmp_path, "matrix: [[0, 1], [1, 0]]")
    for flags, message in ((["--harm", str(bad)], "matrix must be 10 x 10"),
                           (["--targeted", "3>3"], "cannot be its own target"),
                           (["--targeted", "stop>1"], "needs the data set's class metadata"),
                           (["--targeted-steps", "0"], "--targeted-steps must be >= 1")):
        rc = main(["evaluate", *MODEL, "--weights", str(weights), "--out", str(tmp_path / "x"), *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("robust: error:") and message in err and err.count("\n") == 1, err


def test_the_audit_leads_with_the_safety_classes_and_their_certified_accuracy(weights, tmp_path, capsys):
    out = tmp_path / "audit"
    rc = main(["audit", *MODEL, "--weights", str(weights), "--eps", "0.02", "--n-examples", "30", "--attacks",
               "pgd", "--attack-options", '{"pgd": {"steps": 5}}', "--no-corruptions", "--targeted", "3>5,8",
               "--targeted-steps", "10", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    audit = json.loads((out / "audit.json").read_text())
    assert audit["statement"][0] == "SAFETY-CRITICAL CLASSES:" and audit["statement"][1].startswith("  - 3")
    (cls,) = audit["evaluation"]["safety"]["classes"]
    assert cls["class"] == 3 and cls["certified"]["n"] == cls["n"]
    assert cls["certified"]["correct"] <= cls["robust"]["correct"] <= cls["clean"]["correct"]
    md = (out / "audit.md").read_text()
    assert md.index("## Safety-critical classes") < md.index("## Proven") and "certified" in md
