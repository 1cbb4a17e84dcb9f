"""``robust evaluate``: measure a checkpoint or a registry model and write report.json + report.md.

Examples::

    robust evaluate --checkpoint runs/digits-pgd/best.ckpt --data digits --attacks autoattack
    robust evaluate --checkpoint best.ckpt --config recipes/gtsrb/pgd_preactresnet18.yaml \\
        --eps 8/255 --sweep 2/255,4/255,16/255 --corruptions --weather --patch 0.05 --spatial
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
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust.cli.options import (
    ArgumentParser, UsageError, add_run_arguments, add_source_arguments, add_threat_arguments, attack_names,
    check_run_arguments, describe_model, json_arg, load_source, parse_args, resolve_threat, resume_state,
    wandb_project, wandb_run)

if TYPE_CHECKING:
    import torch

STATE_NAME = "evaluate_state.pt"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="robust evaluate",
        description="Measure empirical robustness (AutoAttack under the RobustBench protocol by default), "
                    "audit it for gradient masking and write report.json, report.md and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_source_arguments(p)
    thr = p.add_argument_group("threat model and attacks")
    add_threat_arguments(thr, "default: the checkpoint's evaluation threat",
                         "radius in [0, 1] pixel units, e.g. 8/255; default: the checkpoint's")
    thr.add_argument("--attacks", default="autoattack", help=f"comma-separated, from: {attack_names()}")
    thr.add_argument("--attack-options", default="{}",
                     help='JSON overrides per attack, e.g. \'{"pgd": {"steps": 100, "restarts": 5}}\'')
    thr.add_argument("--sweep", help="comma-separated further eps values for the robust-accuracy-vs-eps curve")
    thr.add_argument("--no-audit", action="store_true", help="skip the gradient-masking audit")
    thr.add_argument("--corruptions", action="store_true", help="also measure the 15 common corruptions x 5 severities")
    thr.add_argument("--weather", action="store_true",
                     help="also measure driving weather and light (rain, snow, fog, flare, shadow, night) x 5 "
                          "severities, a group apart from --corruptions")
    thr.add_argument("--patch", type=float, metavar="FRACTION",
                     help="also attack with an adversarial square patch covering FRACTION of the image")
    thr.add_argument("--spatial", action="store_true",
                     help="also measure the worst case over rotations (+-30 deg) and translations (+-3 px)")
    add_safety_arguments(p)
    add_run_arguments(p, "evaluate", "runs/evaluate")
    return p


def add_safety_arguments(p: argparse.ArgumentParser) -> None:
    """``--harm``, ``--targeted`` and ``--targeted-steps`` (evaluate and audit); see :func:`safety_plan`."""
    g = p.add_argument_group("safety-critical classes (automatic for data with class metadata, e.g. gtsrb)")
    g.add_argument("--harm", metavar="FILE",
                   help="harm matrix file (YAML/JSON: base, severe, safety, costs rules or a full matrix; see "
                        "robust.evaluation.safety); default: GTSRB's for gtsrb, every confusion 1 otherwise")
    g.add_argument("--targeted", metavar="SPEC",
                   help="targeted APGD-T toward a set of classes, SOURCE>TARGET,... pairs separated by ';' "
                        "(ids, names or group:<name>), e.g. '14>0,1,2,3,4,5,7,8'; 'none' for none; default: "
                        "stop>group:speed_limit on gtsrb, none otherwise")
    g.add_argument("--targeted-steps", type=int, default=100, help="APGD-T steps per target class")


def safety_plan(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any] | None:
    """What the safety view needs, read and checked before any attack runs: the data set's class metadata,
    the harm matrix of ``--harm`` and the targeted pairs; ``None`` when there is nothing to report (no
    metadata, no ``--harm``, no ``--targeted``)."""
    from robust.base.classes import class_metadata
    from robust.base.runtime import num_classes
    from robust.evaluation.safety import HarmMatrix, default_targeted, parse_targeted

    if args.targeted_steps < 1:
        raise UsageError(f"--targeted-steps must be >= 1, got {args.targeted_steps}")
    classes = num_classes(model, x)
    metadata = class_metadata(getattr(args, "dataset_name", None))
    if metadata is not None and metadata.num_classes != classes:
        metadata = None
    harm = HarmMatrix.from_file(args.harm, classes, metadata) if args.harm else None
    if args.targeted is not None and args.targeted.strip().lower() == "none":
        pairs = []
    else:
        pairs = parse_targeted(args.targeted, classes, metadata) if args.targeted else default_targeted(metadata)
    if metadata is None and harm is None and not pairs:
        return None
    return {"metadata": metadata, "harm": harm, "pairs": pairs}


def safety_report(args: argparse.Namespace, plan: dict[str, Any], model: torch.nn.Module, x: torch.Tensor,
                  y: torch.Tensor, report: Any, threat: Any, progress: bool) -> dict[str, Any]:
    """The safety view of ``report`` with the planned targeted attacks on the report's examples ``(x, y)``."""
    from robust.evaluation.safety import safety_view, targeted_success

    results = [targeted_success(model, x, y, source, targets, threat, steps=args.targeted_steps,
                                batch_size=args.batch_size, seed=args.seed, progress=progress)
               for source, targets in plan["pairs"]]
    return safety_view(report, plan["harm"], plan["metadata"], targeted=results)


def run(argv: list[str]) -> int:
    args = parse_args(parser(), argv)
    from robust.attacks.registry import check_attack_options, check_attacks
    from robust.base import distributed

    attacks = check_attacks([a.strip() for a in args.attacks.split(",") if a.strip()], "--attacks")
    if not attacks:
        raise UsageError("--attacks must name at least one attack")
    options = check_attack_options(attacks, json_arg(args.attack_options, "--attack-options"), "--attack-options")
    if args.patch is not None and not (math.isfinite(args.patch) and 0 < args.patch < 1):
        raise UsageError(f"--patch is a fraction of the image area and must lie in (0, 1), got {args.patch}")
    x, y, data_desc, model, ckpt_threat, method = load_source(args)
    threat = resolve_threat(args, ckpt_threat)
    args.safety_plan = safety_plan(args, model, x)  # a bad --harm/--targeted is refused before any attack
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
    from robust.base import distributed
    from robust.evaluation.core import evaluate, summarise_threat
    from robust.reports.evaluation import log_to_wandb, write_report

    main = distributed.is_main()
    model = model.to(device)
    out = Path(args.out)
    state = resume_state(args, out, STATE_NAME, main)
    if main:
        print(f"evaluating {args.checkpoint or args.model} on {data_desc}: {len(y)} images"
              + (f", first {args.n_examples}" if args.n_examples else "")
              + f", {threat.norm} eps {threat.eps!r}, attacks {', '.join(attacks)}"
              + (f", {distributed.world()[1]} processes" if distributed.world()[1] > 1 else ""), file=sys.stderr)
    progress = not args.no_progress
    report = evaluate(model, (x, y), threat, attacks, n_examples=args.n_examples, batch_size=args.batch_size,
                      seed=args.seed, audit=not args.no_audit, attack_options=options, sweep=sweep,
                      state_path=state, checkpoint=args.checkpoint, progress=progress,
                      class_names=_class_names(getattr(args, "safety_plan", None)))
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
    if args.weather:  # on rank 0 alone, like the corruptions
        from robust.evaluation.weather import evaluate_weather

        report.weather = evaluate_weather(model, (x[:n], y[:n]), batch_size=args.batch_size, seed=args.seed,
                                          progress=progress)
    if getattr(args, "safety_plan", None):  # on rank 0 alone: the targeted attacks are per source class
        report.safety = safety_report(args, args.safety_plan, model, x[:n], y[:n], report, threat, progress)
    with wandb_run(args, out, "evaluate", report.protocol) as run_:
        written = write_report(report.to_dict(), out, examples=report.examples)
        state.unlink(missing_ok=True)
        if run_ is not None:
            log_to_wandb(report.to_dict(), run_, images=written)
    _print_summary(report, written)
    return 0


def _class_names(plan: dict[str, Any] | None) -> list[str] | None:
    """The data set's class names where it has class metadata (GTSRB: "stop", "yield", ...)."""
    meta = (plan or {}).get("metadata")
    return None if meta is None else list(meta.names)


def _print_summary(report: Any, written: dict[str, Path]) -> None:
    from robust.reports.format import fmt_accuracy
    from robust.reports.safety import safety_lines

    for line in safety_lines(report.safety, report.class_names):
        print(f"safety: {line}")
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
    if report.weather:
        print(f"weather: mean accuracy {fmt_accuracy(report.weather['mean_weather_accuracy'])} ("
              + ", ".join(f"{k} {fmt_accuracy(v['mean'])}" for k, v in report.weather["per_weather"].items()) + ")")
    for name, sub in (report.physical or {}).items():
        print(f"{name}: {fmt_accuracy(sub['robust'])}")
    print("written: " + ", ".join(str(p) for p in written.values()))
