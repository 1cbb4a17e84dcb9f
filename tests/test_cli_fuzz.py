"""Property-based fuzz of every ``robust`` command: plausible-but-wrong arguments and config files
end with exit status 0 or 2 (1 where a command documents it), never a traceback; on 2 the last
line of stderr is ``robust: error: ...``; files written before (a checkpoint, a report, a
leaderboard database) are byte-identical afterwards.

Every generated command line ends with a value that is wrong, placed last so that it wins over
the plausible options before it, and carries tiny settings, so no example trains or attacks for
long even where the wrong value is only noticed late.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import fit_checkpoint
from conftest import RECIPES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robust.base.threat import ThreatModel
from robust.cli import main
from robust.leaderboard.entry import from_report
from robust.leaderboard.store import Store
from robust.methods import PGD

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

REPORT = {"kind": "evaluation", "threat": {"norm": "linf", "eps": 0.1, "eps_str": "0.1"},
          "clean": {"accuracy": 0.9, "correct": 9, "n": 10}, "robust": {"accuracy": 0.5, "correct": 5, "n": 10},
          "n_examples": 10, "per_attack": {"fgsm": {"robust": {"accuracy": 0.5}}}, "audit": {"flags": []},
          "protocol": {"dataset": "digits", "seed": 0, "model": {"architecture": "CNNSmall"}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits):
    """Files the fuzz must not damage, and wrong inputs for it to try."""
    root = tmp_path_factory.mktemp("fuzz")
    ckpt = fit_checkpoint(PGD(ThreatModel("linf", 0.1), steps=2), digits, root / "model.ckpt", epochs=1)
    report = root / "report.json"
    report.write_text(json.dumps(REPORT))
    db = root / "board.db"
    store = Store(str(db))
    store.add(from_report(REPORT, name="fixture"))
    store.close()
    bad = root / "bad"
    bad.mkdir()
    files = {
        "garbage.json": b"{not json", "truncated.json": json.dumps(REPORT).encode()[:57], "list.json": b"[1, 2]",
        "wrong-types.json": json.dumps({**REPORT, "clean": "high", "threat": "linf"}).encode(),
        "missing.json": json.dumps({k: v for k, v in REPORT.items() if k != "robust"}).encode(),
        "bad-accuracy.json": json.dumps({**REPORT, "robust": {"accuracy": 7}}).encode(),
        "robustbench.json": json.dumps({"name": "x", "dataset": "cifar10", "eps": "8/0", "clean_acc": "a",
                                        "autoattack_acc": "1"}).encode(),
        "export.json": json.dumps({"format": "robust-leaderboard", "entries": {"a": 1}}).encode(),
        "binary.json": bytes(range(256)), "empty.ckpt": b"", "text.ckpt": b"hello",
        "garbage.yaml": b"model: [unclosed\n  - : :", "list.yaml": b"- 1\n- 2\n",
        "evil.yaml": yaml.safe_dump({"model": {"model": {"class_path": "os.system"}}}).encode(),
        "data.npz": b"PK\x03\x04 not an npz",
    }
    for name, content in files.items():
        (bad / name).write_bytes(content)
    torch.save({"x": torch.zeros(1), "call": print}, bad / "evil.pt")  # a pickled function: refused
    ckpt_dict = torch.load(ckpt, weights_only=True)
    ckpt_dict["hyper_parameters"]["model"] = {"class_path": "os.system", "init_args": {"command": "true"}}
    torch.save(ckpt_dict, bad / "foreign-class.ckpt")
    truncated = ckpt.read_bytes()
    (bad / "truncated.ckpt").write_bytes(truncated[: len(truncated) // 3])
    protected = [ckpt, report, db]
    return {"root": root, "ckpt": ckpt, "report": report, "db": db, "bad": bad, "protected": protected}


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def run_cli(argv: list[str], capsys, world, allowed: tuple[int, ...] = (0, 2)) -> int:
    before = _digest(world["protected"])
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code in allowed, (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("robust: error:"), (argv, err)
    assert _digest(world["protected"]) == before, argv
    return code


def bad_file(world, *names: str):
    return st.sampled_from(names).map(lambda n: str(world["bad"] / n))


def measuring_args(world):
    """Plausible options of evaluate/certify/audit/export, then one wrong value last."""
    plausible = st.lists(st.sampled_from([
        ["--checkpoint", str(world["ckpt"])], ["--data", "digits"], ["--eps", "8/255"], ["--norm", "linf"],
        ["--norm", "l2"], ["--seed", "3"], ["--split", "val"], ["--attack-options", "{}"], ["--batch-size", "4"],
    ]), max_size=4).map(lambda xs: [a for x in xs for a in x])
    wrong = st.one_of(
        st.sampled_from([
            ["--eps", "-0.1"], ["--eps", "nan"], ["--eps", "inf"], ["--eps", "abc"], ["--eps", "8/0"], ["--eps", "0"],
            ["--n-examples", "-3"], ["--n-examples", "x"], ["--batch-size", "0"], ["--seed", "1.5"],
            ["--checkpoint", "missing.ckpt"], ["--checkpoint", str(world["report"])],
            ["--checkpoint", str(world["bad"])], ["--data", "nosuchdata"], ["--npz", "missing.npz"],
            ["--attack-options", "[1"], ["--attack-options", "3"], ["--bogus-flag"], ["--device", "tpu9"],
            ["--norm", "l7"], ["--model", "nosuchmodel", "--data", "digits"], ["--model-args", "{bad"],
            ["--model", "cnn_small", "--model-args", '{"width": "x"}'], ["--data-root", str(world["report"])],
            ["--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}', "--weights", "nope.pt"],
        ]),
        bad_file(world, "empty.ckpt", "text.ckpt", "truncated.ckpt", "foreign-class.ckpt", "evil.pt").map(
            lambda p: ["--checkpoint", p]),
        bad_file(world, "garbage.yaml", "list.yaml", "evil.yaml", "missing.json").map(lambda p: ["--config", p]),
        bad_file(world, "data.npz", "binary.json").map(lambda p: ["--npz", p]),
        bad_file(world, "empty.ckpt", "text.ckpt", "evil.pt", "truncated.ckpt").map(
            lambda p: ["--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}', "--weights", p]),
        st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=12).map(
            lambda t: ["--eps", f"-{t}"]),
    )
    return st.tuples(plausible, wrong).map(lambda t: t[0] + t[1])


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUST_LEADERBOARD", str(tmp_path / "runs" / "board.db"))
    return tmp_path


def test_evaluate_fuzz(world, scratch, capsys):
    @FUZZ
    @given(args=measuring_args(world))
    def check(args):
        run_cli(["evaluate", "--checkpoint", str(world["ckpt"]), "--data", "digits", "--n-examples", "4",
                 "--attacks", "fgsm", "--no-audit", "--no-progress", "--out", str(scratch / "out"), *args],
                capsys, world)
    check()


def test_certify_fuzz(world, scratch, capsys):
    @FUZZ
    @given(method=st.sampled_from(["ibp", "crown", "smoothing"]), args=measuring_args(world),
           extra=st.sampled_from([[], ["--sigma", "-1"], ["--alpha", "2"], ["--n", "0"], ["--radii", "a,b"],
                                  ["--evaluation", "missing.json"], ["--attack", "nope"], ["--n0", "-5"]]))
    def check(method, args, extra):
        run_cli(["certify", "--method", method, "--checkpoint", str(world["ckpt"]), "--data", "digits",
                 "--n-examples", "2", "--n", "32", "--n0", "8", "--sigma", "0.25", "--no-progress",
                 "--out", str(scratch / "out"), *extra, *args], capsys, world, allowed=(0, 1, 2))
    check()


def test_audit_fuzz(world, scratch, capsys):
    @FUZZ
    @given(args=measuring_args(world))
    def check(args):
        args = [a for a in args if a != "--split" and a != "val"]  # audit has no --split
        run_cli(["audit", "--checkpoint", str(world["ckpt"]), "--data", "digits", "--n-examples", "4",
                 "--attacks", "fgsm", "--smoothing-n", "32", "--no-corruptions", "--no-progress",
                 "--out", str(scratch / "out"), *args], capsys, world)
    check()


def test_export_fuzz(world, scratch, capsys):
    @FUZZ
    @given(args=measuring_args(world),
           extra=st.sampled_from([[], ["--formats", "pdf"], ["--formats", ","], ["--tolerance", "-1"],
                                  ["--tolerance", "nan"], ["--opset", "x"], ["--out", str(world["report"])]]))
    def check(args, extra):
        args = [a for a in args if a not in ("--split", "val", "--seed", "3", "--no-progress")]
        run_cli(["export", "--checkpoint", str(world["ckpt"]), "--data", "digits", "--n-examples", "4",
                 "--formats", "torchscript", "--out", str(scratch / "out"), *extra, *args],
                capsys, world, allowed=(0, 1, 2))
    check()


def test_leaderboard_fuzz(world, scratch, capsys):
    bad_files = ["garbage.json", "truncated.json", "list.json", "wrong-types.json", "missing.json",
                 "bad-accuracy.json", "robustbench.json", "export.json", "binary.json", "empty.ckpt", "evil.pt"]
    add = st.tuples(st.lists(bad_file(world, *bad_files), min_size=1, max_size=3),
                    st.sampled_from([[], ["--threat", "L2"], ["--external", "0.1"], ["--name", "x"],
                                     ["--n-examples", "5"], ["--external", "2"], ["--n-examples", "-1"]])).map(
        lambda t: ["add", *t[0], *t[1]])
    read = st.tuples(st.sampled_from([["show"], ["export", "--out", str(scratch / "board.html")]]),
                     st.sampled_from([["--threat", "L3"], ["--format", "pdf"], ["--bogus"], ["--dataset"]])).map(
        lambda t: t[0] + t[1])
    db = st.one_of(st.just(["--db", str(world["db"])]),
                   st.sampled_from([str(world["ckpt"]), str(world["report"]), str(world["bad"]), "foo://bar",
                                    "sqlite:////nonexistent/dir/x.db", str(world["bad"] / "binary.json")]).map(
                       lambda d: ["--db", d]))

    @FUZZ
    @given(db=db, action=st.one_of(add, read, st.sampled_from([["remove"], [], ["add"]])))
    def check(db, action):
        run_cli(["leaderboard", *db, *action], capsys, world)
    check()


def test_quickstart_fuzz(world, scratch, capsys):
    @FUZZ
    @given(extra=st.lists(st.sampled_from(["--skip-standard", "--no-progress", "--no-wandb"]), max_size=3),
           wrong=st.sampled_from([["--epochs", "0"], ["--epochs", "-2"], ["--epochs", "x"], ["--bogus"],
                                  ["--no-wandb", "--wandb-project"], ["--epochs"]]))
    def check(extra, wrong):
        run_cli(["quickstart", "--out", str(scratch / "qs"), *extra, *wrong], capsys, world)
    check()


def _recipe() -> dict:
    config = yaml.safe_load((RECIPES / "digits/pgd_cnnmedium.yaml").read_text())
    config["trainer"]["logger"] = False
    return config


def _mutations():
    wrong_class = st.sampled_from(["os.system", "robust.nope.Missing", "robust.models", "not a path",
                                   "subprocess.Popen", "robust.reports.files.write_json", "torch.load"])
    wrong_value = st.sampled_from([-1, 0, float("nan"), float("inf"), "abc", "8/0", [], {"a": 1}, None, True])
    edits = [
        wrong_class.map(lambda c: ("model.model.class_path", c)),
        wrong_class.map(lambda c: ("model.method.class_path", c)),
        wrong_class.map(lambda c: ("data.class_path", c)),
        wrong_value.map(lambda v: ("model.method.init_args.threat.eps", v)),
        wrong_value.map(lambda v: ("model.method.init_args.threat.norm", v)),
        wrong_value.map(lambda v: ("model.lr", v)),
        wrong_value.map(lambda v: ("model.optimizer", v)),
        wrong_value.map(lambda v: ("data.init_args.batch_size", v)),
        wrong_value.map(lambda v: ("data.init_args.root", v)),
        wrong_value.map(lambda v: ("trainer.max_epochs", v)),
        st.sampled_from(["model.bogus", "bogus", "data.init_args.bogus", "model.method.init_args.bogus"]).map(
            lambda k: (k, 1)),
        st.sampled_from(["model", "data", "model.model", "model.method"]).map(lambda k: (k, "x")),
    ]
    return st.lists(st.one_of(*edits), min_size=1, max_size=3)


def _apply(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = config
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def test_fit_config_fuzz(world, scratch, capsys):
    """Wrong values, keys and class paths in a recipe, and truncated or garbage YAML text."""
    text = yaml.safe_dump(_recipe())
    configs = st.one_of(
        _mutations().map(lambda edits: ("edit", edits)),
        st.integers(1, len(text) - 1).map(lambda n: ("truncate", n)),
        st.binary(min_size=1, max_size=40).map(lambda b: ("garbage", b)),
    )

    @FUZZ
    @given(config=configs, command=st.sampled_from(["fit", "validate", "test"]))
    def check(config, command):
        kind, value = config
        path = scratch / "fuzz.yaml"
        if kind == "edit":
            recipe = _recipe()
            for key, v in value:
                _apply(recipe, key, v)
            path.write_text(yaml.safe_dump(recipe))
        elif kind == "truncate":
            path.write_text(text[:value] + "\n: : [")  # cut, then made certainly invalid
        else:
            path.write_bytes(value + b"\n: : [")
        run_cli([command, "--config", str(path), "--trainer.fast_dev_run", "true", "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(scratch / "fit")],
                capsys, world)
    check()


def test_fit_argument_fuzz(world, scratch, capsys):
    """Wrong command-line overrides of a valid recipe (always one, so nothing trains)."""
    recipe = str(RECIPES / "digits/pgd_cnnmedium.yaml")
    wrong = st.sampled_from([
        ["--model.lr", "-1"], ["--model.lr", "nan"], ["--model.lr", "fast"], ["--model.optimizer", "rmsprop"],
        ["--model.model", "os.system"], ["--model.model.class_path", "robust.nope.X"], ["--data", "nosuch.Data"],
        ["--model.method.init_args.threat.eps", "-8/255"], ["--model.method.init_args.threat.norm", "l7"],
        ["--trainer.max_epochs", "x"], ["--bogus", "1"], ["--config", "missing.yaml"], ["--ckpt_path", "nope.ckpt"],
        ["--config", str(world["bad"] / "garbage.yaml")], ["--config", str(world["bad"] / "evil.yaml")],
        ["--ckpt_path", str(world["bad"] / "text.ckpt")], ["--model.val_attack_steps", "0"],
        ["--data.init_args.batch_size", "-4"], ["--seed_everything", "x"], ["--trainer.precision", "13-bits"],
    ])

    @FUZZ
    @given(command=st.sampled_from(["fit", "validate", "test"]), wrong=wrong)
    def check(command, wrong):
        run_cli([command, "--config", recipe, "--trainer.logger", "false", "--trainer.fast_dev_run", "true",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(scratch / "fit"), *wrong],
                capsys, world)
    check()
