"""``robust evaluate``: measure a checkpoint or a registry model and write report.json + report.md.

Examples::

    robust evaluate --checkpoint runs/digits-pgd/best.ckpt --data digits --attacks autoattack
    robust evaluate --checkpoint best.ckpt --config recipes/gtsrb/pgd_preactresnet18.yaml \\
        --eps 8/255 --sweep 2/255,4/255,16/255 --corruptions --patch 0.05 --spatial
    robust evaluate --model cnn_medium --weights model.pt --model-args '{"in_channels": 1, "input_size": 8}' \\
        --npz my_test_set.npz --norm linf --eps 0.2

The run keeps its finished batches in ``<out>/evaluate_state.pt``; start the same command
again after an interruption and it resumes where it stopped.

Started by torchrun, the processes share the batches of every attack pass (main attacks, sweep,
audit, patch, spatial) and rank 0 writes the report, the state and the wandb run; the report
equals a single process's, and a state resumes at any number of processes::

    torchrun --standalone --nproc_per_node 4 -m robust.cli evaluate --checkpoint best.ckpt --data cifar10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from robust.runtime import fast_cuda

from robust import distributed
from robust.cli import ArgumentParser

STATE_NAME = "evaluate_state.pt"


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The model (``--checkpoint`` or ``--model``) and data (``--config``, ``--data`` or ``--npz``) options."""
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", help="a robust checkpoint (.ckpt), loaded with weights_only=True")
    src.add_argument("--model", help="a registry model name (robust.models.list_models()) or torchvision:<name>")
    src.add_argument("--weights", help="with --model: a state_dict file (torch.save(model.state_dict()))")
    src.add_argument("--model-args", default="{}", help="with --model: JSON keyword arguments of the constructor")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--config", help="a recipe YAML: its data: section is used")
    data.add_argument("--data", help="a data module name (digits, mnist, mnist10k, cifar10, gtsrb, ...)")
    data.add_argument("--npz", help="an .npz with x_test/y_test or x/y (uint8 0..255 or floats in [0, 1])")
    data.add_argument("--data-root", help="root folder for --data (where it looks for or stores the files)")
    data.add_argument("--split", choices=("test", "val"), default="test", help="which split to evaluate")


def add_wandb_arguments(group: Any) -> None:
    """``--wandb-project NAME`` (log the report to a wandb run) and ``--no-wandb`` (do not; the default)."""
    group.add_argument("--wandb-project", help="log the report to a wandb run in this project (offline unless "
                                               "wandb is configured online)")
    group.add_argument("--no-wandb", action="store_true", help="no wandb run (the default without --wandb-project)")


def add_run_arguments(p: argparse.ArgumentParser, verb: str, out: str, batch_size: int | None = 256,
                      batch_help: str | None = None, fresh: bool = True) -> Any:
    """The options every measuring command shares: examples, batch size, seed, device, output
    folder, resume state (``fresh``), wandb and progress bars. Returns the argument group."""
    run = p.add_argument_group("run")
    run.add_argument("--n-examples", type=int, help=f"{verb} the first N examples of the split")
    run.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--out", default=out, help="output folder")
    if fresh:
        run.add_argument("--fresh", action="store_true", help="discard a resume state left in --out by another run")
    add_wandb_arguments(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return run


def check_run_arguments(args: argparse.Namespace) -> torch.device:
    """Refuse bad shared options with a one-line message; return the device to run on."""
    for name in ("n_examples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available")
    fast_cuda(device)
    return device


def wandb_project(args: argparse.Namespace) -> str | None:
    """The project to log to, refusing ``--wandb-project`` together with ``--no-wandb``."""
    if args.wandb_project and args.no_wandb:
        raise UsageError("give --wandb-project or --no-wandb, not both")
    return None if args.no_wandb else args.wandb_project


def parser() -> argparse.ArgumentParser:
    from robust.attacks.evaluation import list_attacks

    p = ArgumentParser(
        prog="robust evaluate",
        description="Measure empirical robustness (AutoAttack under the RobustBench protocol by default), "
                    "audit it for gradient masking and write report.json, report.md and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_source_arguments(p)
    thr = p.add_argument_group("threat model and attacks")
    thr.add_argument("--norm", choices=("linf", "l2"), help="default: the checkpoint's evaluation threat")
    thr.add_argument("--eps", help="radius in [0, 1] pixel units, e.g. 8/255; default: the checkpoint's")
    thr.add_argument("--attacks", default="autoattack", help=f"comma-separated, from: {', '.join(list_attacks())}")
    thr.add_argument("--attack-options", default="{}",
                     help='JSON overrides per attack, e.g. \'{"pgd": {"steps": 100, "restarts": 5}}\'')
    thr.add_argument("--sweep", help="comma-separated further eps values for the robust-accuracy-vs-eps curve")
    thr.add_argument("--no-audit", action="store_true", help="skip the gradient-masking audit")
    thr.add_argument("--corruptions", action="store_true", help="also measure the 15 common corruptions x 5 severities")
    thr.add_argument("--patch", type=float, metavar="FRACTION",
                     help="also attack with an adversarial square patch covering FRACTION of the image")
    thr.add_argument("--spatial", action="store_true",
                     help="also measure the worst case over rotations (+-30 deg) and translations (+-3 px)")
    add_run_arguments(p, "evaluate", "runs/evaluate")
    return p


class UsageError(ValueError):
    """Bad command-line arguments (reported on one line, exit status 2)."""


def _json_arg(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{name} must be JSON, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, got {text!r}")
    return value


def describe_model(args: argparse.Namespace, model: torch.nn.Module, method: Any) -> dict[str, Any]:
    """What a report says about the model and the data: for leaderboard entries."""
    return {"dataset": getattr(args, "dataset_name", None),
            "model": {"architecture": type(model).__name__, "training": None if method is None else repr(method),
                      "source": args.checkpoint or args.model}}


def load_model(args: argparse.Namespace, num_classes: int | None) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, threat or None, training method or None)`` from ``--checkpoint`` or ``--model``/``--weights``."""
    if bool(args.checkpoint) == bool(args.model):
        raise UsageError("give exactly one of --checkpoint or --model")
    if args.checkpoint:
        from robust.module import RobustClassifier

        # refuses pickled code and class paths outside the allowlist before Lightning sees the file
        module = RobustClassifier.load_from_checkpoint(Path(args.checkpoint), map_location="cpu")
        return module.model, module.eval_threat, module.method
    from robust.models import create

    if num_classes is None:
        raise UsageError("--model needs data to know the number of classes")
    kwargs = _json_arg(args.model_args, "--model-args")
    model = create(args.model, num_classes, **kwargs)
    if args.weights:
        from robust.module import CheckpointError
        from robust.safe_load import load_weights_only

        path = Path(args.weights)
        state = load_weights_only(path, "weights file")
        if isinstance(state, dict) and "state_dict" in state:
            state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: does not fit {args.model} ({str(err).splitlines()[0]})") from None
    else:
        print(f"{args.prog}: warning: --model without --weights measures a randomly initialised network",
              file=sys.stderr)
    return model, None, None


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """``(x, y, num_classes, description)`` from ``--config``, ``--data`` or ``--npz``."""
    given = [a for a in ("config", "data", "npz") if getattr(args, a)]
    if len(given) != 1:
        raise UsageError("give exactly one of --config, --data or --npz")
    args.dataset_name = (args.data or (Path(args.npz).stem if args.npz else None) or "").lower() or None
    if args.npz:
        from robust.data import Npz

        dm = Npz(args.npz)
        if "test" in dm._splits and args.split == "test" and not _only_xy(args.npz):
            x, y = dm.test_tensors()
            return x, y, dm.num_classes, f"npz {args.npz} (x_test)"
        return (*_all_xy(dm), dm.num_classes, f"npz {args.npz} (all of x/y)")
    if args.config:
        import yaml

        from robust.spec import build

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path.resolve()}")
        spec = (yaml.safe_load(path.read_text()) or {}).get("data")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise UsageError(f"{path}: has no data: section with a class_path")
        if args.data_root:
            spec = {**spec, "init_args": {**spec.get("init_args", {}), "root": args.data_root}}
        dm = build(spec)
        args.dataset_name = type(dm).__name__.lower()
    else:
        from robust.data import create_datamodule

        dm = create_datamodule(args.data, **({"root": args.data_root} if args.data_root else {}))
    dm.setup("test" if args.split == "test" else "fit")
    x, y = dm.test_tensors() if args.split == "test" else dm.val_tensors()
    return x, y, dm.num_classes, f"{type(dm).__name__} ({args.split} split)"


def _only_xy(path: str) -> bool:
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return "x_test" not in archive.files and "x" in archive.files


def _all_xy(dm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    from robust.data.base import absolute

    file = absolute(dm.path)
    with np.load(file, allow_pickle=False) as archive:
        return dm._images(file, "x", archive["x"]), dm._labels(file, "y", archive["y"], dm.num_classes)


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    args.prog = "robust evaluate"
    from robust.threat import ThreatModel

    x, y, num_classes, data_desc = load_data(args)
    model, ckpt_threat, method = load_model(args, num_classes)
    if args.norm is None and args.eps is None and ckpt_threat is None:
        raise UsageError("no threat model: give --norm and --eps (this model carries none)")
    norm = args.norm or (ckpt_threat.norm if ckpt_threat is not None else "linf")
    eps = args.eps if args.eps is not None else (ckpt_threat.eps if ckpt_threat is not None else None)
    if eps is None:
        raise UsageError("give --eps")
    threat = ThreatModel(norm, eps)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    options = _json_arg(args.attack_options, "--attack-options")
    sweep = [e.strip() for e in args.sweep.split(",") if e.strip()] if args.sweep else None
    wandb_project(args)  # refuses a bad combination before the ranks start
    device = distributed.init_from_env(check_run_arguments(args))
    try:
        return _evaluate(args, model, method, x, y, data_desc, threat, attacks, options, sweep, device)
    finally:
        distributed.cleanup()


def _evaluate(args: argparse.Namespace, model: torch.nn.Module, method: Any, x: torch.Tensor, y: torch.Tensor,
              data_desc: str, threat: Any, attacks: list[str], options: dict[str, Any], sweep: list[str] | None,
              device: torch.device) -> int:
    """Measure and write; under torchrun every rank measures, rank 0 alone writes and logs."""
    from robust.evaluation.core import evaluate, summarise_threat
    from robust.evaluation.render import log_to_wandb, write_report

    main = distributed.is_main()
    model = model.to(device)
    out = Path(args.out)
    state = out / STATE_NAME
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if args.fresh and state.exists():
            state.unlink()
        if state.exists():
            print(f"robust evaluate: resuming from {state}", file=sys.stderr)
        print(f"evaluating {args.checkpoint or args.model} on {data_desc}: {len(y)} images"
              + (f", first {args.n_examples}" if args.n_examples else "")
              + f", {threat.norm} eps {threat.eps!r}, attacks {', '.join(attacks)}"
              + (f", {distributed.world()[1]} processes" if distributed.world()[1] > 1 else ""), file=sys.stderr)
    progress = not args.no_progress
    report = evaluate(model, (x, y), threat, attacks, n_examples=args.n_examples, batch_size=args.batch_size,
                      seed=args.seed, audit=not args.no_audit, attack_options=options, sweep=sweep,
                      state_path=state, checkpoint=args.checkpoint, progress=progress)
    n = report.n_examples
    report.protocol.update(data=data_desc, **describe_model(args, model, method))
    physical = {}
    if args.patch is not None:
        physical["patch"] = summarise_threat(model, x[:n], y[:n], "patch", args.batch_size, seed=args.seed,
                                             progress=progress, fraction=args.patch)
    if args.spatial:
        physical["spatial"] = summarise_threat(model, x[:n], y[:n], "spatial", args.batch_size, seed=args.seed,
                                               progress=progress)
    report.physical = physical or None
    if not main:
        return 0
    if args.corruptions:  # on rank 0 alone, after the sharded passes
        from robust.evaluation.corruptions import evaluate_corruptions

        report.corruptions = evaluate_corruptions(model, (x[:n], y[:n]), batch_size=args.batch_size,
                                                  seed=args.seed, progress=progress)
    run_ = None
    if wandb_project(args):
        from robust.tracking import run_path, start_run

        run_ = start_run(args.wandb_project, out, "evaluate", report.protocol)
        report.protocol["wandb_run"] = run_path(run_)  # a leaderboard entry keeps it
    written = write_report(report.to_dict(), out, examples=report.examples)
    if state.exists():
        state.unlink()
    if run_ is not None:
        from robust.tracking import finish_run

        log_to_wandb(report.to_dict(), run_, images=written)
        finish_run(run_)
    _print_summary(report, written)
    return 0


def _print_summary(report: Any, written: dict[str, Path]) -> None:
    from robust.evaluation.render import fmt_accuracy

    print(f"clean accuracy:  {fmt_accuracy(report.clean)}")
    print(f"robust accuracy: {fmt_accuracy(report.robust)}  ({report.threat['norm']} eps {report.threat['eps_str']})")
    for name, rec in report.per_attack.items():
        print(f"  {name:<16} {fmt_accuracy(rec['robust'])}  {rec['seconds']:.1f} s")
    if report.audit.get("ran"):
        if report.unreliable:
            print("audit: UNRELIABLE: " + "; ".join(f["name"] for f in report.audit["flags"]))
            for f in report.audit["flags"]:
                print(f"  - {f['name']}: {f['message']}")
        else:
            print(f"audit: reliable ({len(report.audit['checks'])} checks passed)")
    if report.corruptions:
        print(f"corruptions: mean accuracy {fmt_accuracy(report.corruptions['mean_corruption_accuracy'])}")
    for name, sub in (report.physical or {}).items():
        print(f"{name}: {fmt_accuracy(sub['robust'])}")
    print("written: " + ", ".join(str(p) for p in written.values()))
