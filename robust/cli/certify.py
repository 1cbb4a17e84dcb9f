"""``robust certify``: certified robustness of a checkpoint or a registry model.

Examples::

    robust certify --method smoothing --checkpoint runs/digits/noise/last.ckpt --data digits \\
        --sigma 0.25 --n 10000 --radii 0,0.25,0.5,0.75 --attack-radius 0.5
    robust certify --method crown --checkpoint best.ckpt --data mnist10k --data-root ../data/mnist-t10k \\
        --eps 0.1,0.2,0.3 --n-examples 500
    robust certify --method ibp --checkpoint best.ckpt --data mnist10k --eps 0.1 \\
        --evaluation runs/evaluate/report.json
    robust certify --patchcleanser 0.05 --masks 6 --checkpoint masked.ckpt --data gtsrb --n-examples 500

``--patchcleanser SIZE`` (instead of ``--method``) certifies against one adversarial patch of SIZE (a
fraction of the image area, or a side in pixels) anywhere in the image with PatchCleanser's double
masking (Xiang et al. 2022); the report states the mask set and the patch it covers, with per-class
certified accuracy. A model trained with ``MaskedTraining`` lends its masks per axis and fill as defaults.

Writes ``report.json``, ``report.md``, a per-example TSV (``certify.tsv``, ``verify.tsv`` or
``patchcleanser.tsv``) and a plot into ``--out``. Smoothing keeps its finished examples in
``<out>/certify_state.jsonl``: start the same command again after an interruption and it resumes.

Started by torchrun, the processes share the examples (smoothing) or batches (ibp, crown) and
rank 0 writes; the report equals a single process's. Write ``--n-samples`` for ``--n`` there
(torchrun's parser takes ``--n`` for an abbreviation of its own options)::

    torchrun --standalone --nproc_per_node 4 -m robust.cli certify --method smoothing \\
        --checkpoint last.ckpt --data cifar10 --sigma 0.25 --n-samples 100000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from robust.cli.options import (
    ArgumentParser,
    UsageError,
    add_run_arguments,
    add_source_arguments,
    attack_names,
    check_options,
    check_run_arguments,
    describe_model,
    json_arg,
    load_source,
    parse_args,
    resolve_threats,
    resume_state,
    wandb_project,
    wandb_run,
)

STATE_NAME = "certify_state.jsonl"
METHODS = ("smoothing", "ibp", "crown")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="robust certify",
        description="Certify robustness: randomized smoothing (L2 radii, Cohen et al. 2019), bound propagation "
                    "(L-inf, IBP or CROWN intersected with IBP) with an attack that falsifies what cannot be "
                    "proven, or PatchCleanser (one adversarial patch anywhere, Xiang et al. 2022); writes "
                    "report.json, report.md, a per-example table and a plot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--method", choices=METHODS, help="required, unless --patchcleanser chooses PatchCleanser")
    add_source_arguments(p)
    sm = p.add_argument_group("randomized smoothing")
    sm.add_argument("--sigma", type=float, help="noise level; default: the checkpoint's GaussianNoise sigma")
    sm.add_argument("--n0", type=int, default=100, help="samples to select the top class")
    sm.add_argument("--n", "--n-samples", dest="n", type=int, default=100_000,
                    help="samples to estimate its probability (spell it --n-samples after torchrun, whose own "
                         "parser reads --n as an abbreviation of its options)")
    sm.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    sm.add_argument("--precision", choices=("32", "bf16"), default=None,
                    help="noisy forward passes in float32 or bf16 autocast (default: bf16 on CUDA, 32 on CPU)")
    sm.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="L2 radii to report certified accuracy at")
    sm.add_argument("--attack-radius", type=float,
                    help="also attack the smoothed classifier at this L2 radius (SmoothAdv PGD, then PREDICT) "
                         "to check the certificates against an empirical upper bound")
    sm.add_argument("--attack-examples", type=int, default=100, help="how many examples --attack-radius attacks")
    bp = p.add_argument_group("bound propagation (ibp, crown)")
    bp.add_argument("--eps", help="comma-separated L-inf radii, e.g. 0.1 or 2/255,8/255; default: the checkpoint's")
    bp.add_argument("--attack", default="pgd",
                    help=f"attack that falsifies unproven examples ({attack_names()}, or none)")
    bp.add_argument("--attack-options", default="{}", help='JSON settings of the attack, e.g. \'{"steps": 100}\'')
    bp.add_argument("--evaluation", help="a robust evaluate report.json of the same model and threat: check "
                                         "certified <= its robust accuracy <= clean, per example when possible")
    pc = p.add_argument_group("PatchCleanser (one adversarial patch anywhere in the image)")
    pc.add_argument("--patchcleanser", metavar="SIZE",
                    help="the patch to certify against: a fraction of the image area in (0, 1) (square side "
                         "round(sqrt(SIZE*H*W)) px, as robust evaluate's patch) or a side in pixels (an integer); "
                         "in place of --method")
    pc.add_argument("--masks", type=int, help="mask positions per axis k (at most k*k masks; the paper's 6); "
                                             "default: the checkpoint's MaskedTraining masks_per_axis, else 6")
    pc.add_argument("--fill", type=float, help="value of masked pixels in [0, 1]; default: the checkpoint's "
                                               "MaskedTraining fill, else 0.5 (mid-grey)")
    pc.add_argument("--patch-attack", type=int, default=0, metavar="N",
                    help="also attack the first N examples with an adaptive patch of the certified size against "
                         "double masking (settings in --attack-options: steps, step_size, stride, views) and check "
                         "that no certified example breaks")
    add_run_arguments(p, "certify", "runs/certify", batch_size=None,
                      batch_help="default: 1000 noisy samples on CPU, 10,000 on CUDA (smoothing), 128 images "
                                 "(bounds), 512 masked images (patchcleanser)")
    return p


def _radii(text: str, name: str) -> list[float]:
    """Comma-separated L2 radii (each finite and >= 0: radius 0 is the smoothed classifier's accuracy)."""
    from robust.base.threat import parse_radius

    try:
        radii = [parse_radius(v.strip(), name, "L2 radius in pixel units") for v in text.split(",") if v.strip()]
    except (ValueError, TypeError) as err:
        raise UsageError(f"{name} must be comma-separated radii >= 0, got {text!r} ({err})") from None
    if not radii:
        raise UsageError(f"{name} names no radius, got {text!r}")
    return radii


def _patch_size(text: str) -> float | int:
    """``--patchcleanser``: a fraction of the image area in (0, 1) or a whole number of pixels >= 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or (value >= 1 and not value.is_integer()):
        raise UsageError(f"--patchcleanser must be a fraction of the image area in (0, 1) or a side in pixels "
                         f"(an integer >= 1), got {text!r}")
    return value if value < 1 else int(value)


def _check_patchcleanser(args: argparse.Namespace) -> None:
    if args.patchcleanser is not None:
        if args.method is not None:
            raise UsageError(f"--patchcleanser certifies with PatchCleanser, not --method {args.method}: drop one")
        args.method = "patchcleanser"
        _patch_size(args.patchcleanser)
    if args.method is None:
        raise UsageError("give --method (smoothing, ibp or crown) or --patchcleanser SIZE")
    if args.masks is not None and args.masks < 1:
        raise UsageError(f"--masks is a number of mask positions per axis and must be >= 1, got {args.masks}")
    if args.fill is not None and not 0.0 <= args.fill <= 1.0:
        raise UsageError(f"--fill is the value of masked pixels in [0, 1], got {args.fill}")
    if args.patch_attack < 0:
        raise UsageError(f"--patch-attack must be >= 0, got {args.patch_attack}")
    used = [f"--{n.replace('_', '-')}" for n in ("masks", "fill", "patch_attack") if n in args.explicit]
    if used and args.method != "patchcleanser":
        raise UsageError(f"{', '.join(used)} go(es) with --patchcleanser, not --method {args.method}")
    if args.method == "patchcleanser" and args.evaluation:
        raise UsageError("--evaluation checks ibp or crown certificates against an L-inf evaluation report; "
                         "PatchCleanser checks itself with --patch-attack N")


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad option values in one line before anything is loaded or written."""
    check_options(args)  # counts, seed, device, --out, wandb project
    _check_patchcleanser(args)
    if args.method == "patchcleanser":
        from robust.certify.patchcleanser import ATTACK_DEFAULTS

        options = json_arg(args.attack_options, "--attack-options")
        unknown = sorted(set(options) - set(ATTACK_DEFAULTS) - {"seed"})
        if unknown:
            raise UsageError(f"--attack-options: {', '.join(unknown)} is not a setting of the patch attack on "
                             f"double masking ({', '.join(k for k in ATTACK_DEFAULTS if k != 'seed')})")
    elif args.method == "smoothing":
        if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma > 0):
            raise UsageError(f"--sigma must be a finite number > 0, got {args.sigma}")
        for name in ("n0", "n"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
            raise UsageError(f"--alpha must be a probability in (0, 1), got {args.alpha}")
        if args.attack_radius is not None and not (math.isfinite(args.attack_radius) and args.attack_radius >= 0):
            raise UsageError(f"--attack-radius must be a finite L2 radius >= 0, got {args.attack_radius}")
        if args.attack_examples < 1:
            raise UsageError(f"--attack-examples must be >= 1, got {args.attack_examples}")
        if args.sigma is not None:
            _certifiable(args.sigma, args)
        _radii(args.radii, "--radii")
    else:
        if args.eps is not None:
            from robust.base.threat import ThreatModel

            for value in (v.strip() for v in args.eps.split(",") if v.strip()):
                _linf_eps(ThreatModel("linf", value).eps)
        json_arg(args.attack_options, "--attack-options")


def _certifiable(sigma: float, args: argparse.Namespace) -> None:
    from robust.certify.smoothing import check_certifiable

    try:
        check_certifiable(sigma, args.n, args.alpha)
    except ValueError as err:
        raise UsageError(f"--n/--alpha/--sigma: {err}") from None


def _linf_eps(eps: float) -> float:
    if eps > 1:
        hint = f"; did you mean {eps:g}/255?" if eps <= 255 else ""
        raise UsageError(f"--eps {eps:g} is above 1: an L-inf ball that large covers every image in [0, 1] (eps is "
                         f"in pixel units{hint})")
    return eps


def _check_model(args: argparse.Namespace, model: Any, x: Any, y: Any, eps: list[float], options: dict) -> None:
    """Refuse, before anything is written, a model with non-finite weights, an attack that cannot be
    built, and (bound methods) a layer the bounds do not handle, on one example."""
    from robust.base.runtime import eval_mode, num_classes
    from robust.base.safe_load import check_finite_weights

    check_finite_weights(model, "certify")
    if args.method in ("smoothing", "patchcleanser") or not len(x):
        return
    from robust.attacks.independent import build_attack
    from robust.base.threat import ThreatModel
    from robust.certify.verify import margins

    with eval_mode(model):
        if args.attack.lower() != "none":
            build_attack(args.attack, ThreatModel("linf", eps[0]), num_classes(model, x), **options)
        margins(model, x[:1], y[:1], eps[0], args.method)


def run(argv: list[str]) -> int:
    args = parse_args(parser(), argv)
    _check_arguments(args)
    from robust.base import distributed
    from robust.certify import report as certification

    wandb_project(args)  # refuses a bad combination before the ranks start
    evaluation = _read_report(args.evaluation) if args.method != "smoothing" and args.evaluation else None
    x, y, data_desc, model, ckpt_threat, ckpt_method = load_source(args)
    eps: list[float] = []
    attack_options: dict[str, Any] = {}
    if args.method == "patchcleanser":
        patch, masks_per_axis, fill = _patchcleanser_settings(args, ckpt_method, tuple(x.shape[2:]))
    elif args.method == "smoothing":
        sigma = args.sigma if args.sigma is not None else getattr(ckpt_method, "sigma", None)
        if sigma is None:
            raise UsageError("give --sigma (this model was not trained with GaussianNoise)")
        _certifiable(sigma, args)
        radii = _radii(args.radii, "--radii")
    else:
        eps = [_linf_eps(threat.eps) for threat in resolve_threats(args, ckpt_threat, norm="linf")]
        attack_options = json_arg(args.attack_options, "--attack-options")
        if evaluation is not None:
            count = min(args.n_examples or len(y), len(y))
            certification.check_evaluation(evaluation, {"norm": "linf", "eps": eps[0]}, y[:count].tolist())
    _check_model(args, model, x, y, eps, attack_options)
    device = distributed.init_from_env(check_run_arguments(args))
    try:
        model = model.to(device).eval()
        out = Path(args.out)
        progress = not args.no_progress
        main = distributed.is_main()
        n = min(args.n_examples or len(y), len(y))
        processes = f", {distributed.world()[1]} processes" if distributed.world()[1] > 1 else ""
        if main:
            out.mkdir(parents=True, exist_ok=True)
        if args.method == "patchcleanser":
            report = _run_patchcleanser(args, model, x, y, data_desc, patch, masks_per_axis, fill, progress, main)
        elif args.method == "smoothing":
            state = resume_state(args, out, STATE_NAME, main)
            if main:
                print(f"certifying {args.checkpoint or args.model} on {data_desc}: {n} images, randomized "
                      f"smoothing sigma {sigma:g}, n0 {args.n0}, n {args.n}, alpha {args.alpha}{processes}",
                      file=sys.stderr)
            report = certification.smoothing_report(
                model, (x, y), sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                batch_size=args.batch_size or (10_000 if device.type == "cuda" else 1000),
                radii=radii, n_examples=args.n_examples, seed=args.seed, state_path=state,
                progress=progress, attack_radius=args.attack_radius, attack_examples=args.attack_examples,
                checkpoint=args.checkpoint, precision=args.precision)
        else:
            attack = None if args.attack.lower() == "none" else args.attack
            if main:
                print(f"verifying {args.checkpoint or args.model} on {data_desc}: {n} images, {args.method} at "
                      f"L-inf eps {', '.join(f'{e:g}' for e in eps)}, falsified by {attack or 'no attack'}"
                      f"{processes}", file=sys.stderr)
            report = certification.verification_report(
                model, (x, y), eps, method=args.method, attack=attack, attack_options=attack_options,
                n_examples=args.n_examples, batch_size=args.batch_size or 128, seed=args.seed, progress=progress,
                checkpoint=args.checkpoint)
            if evaluation is not None:
                certification.compare_with_evaluation(report, evaluation)
        if main:
            _write(args, report, out, data_desc, model, ckpt_method)
        return 0 if report["consistency"]["ok"] else 1
    finally:
        distributed.cleanup()


def _patchcleanser_settings(args: argparse.Namespace, method: Any, image_size: tuple[int, ...]
                            ) -> tuple[float | int, int, float]:
    """``(patch, masks per axis, fill)``: ``--masks`` and ``--fill`` default to the checkpoint's
    ``MaskedTraining``; the mask set is built once here so that a patch too large for the images is refused
    in one line."""
    from robust.certify.patchcleanser import PatchSizeError, mask_set

    trained = {k: getattr(method, k, None) for k in ("masks_per_axis", "fill")}
    patch = _patch_size(args.patchcleanser)
    masks_per_axis = args.masks if args.masks is not None else (trained["masks_per_axis"] or 6)
    fill = args.fill if args.fill is not None else (trained["fill"] if trained["fill"] is not None else 0.5)
    try:
        mask_set(image_size, patch, masks_per_axis)
    except PatchSizeError as err:
        raise UsageError(f"--patchcleanser {patch} --masks {masks_per_axis}: {err}") from None
    return patch, masks_per_axis, fill


def _run_patchcleanser(args: argparse.Namespace, model: Any, x: Any, y: Any, data_desc: str, patch: float | int,
                       masks_per_axis: int, fill: float, progress: bool, main: bool) -> dict:
    from robust.base.classes import class_metadata
    from robust.certify.patchcleanser import mask_set, patchcleanser_report

    meta = class_metadata(getattr(args, "dataset_name", None))
    n = min(args.n_examples or len(y), len(y))
    if main:
        masks = mask_set(tuple(x.shape[2:]), patch, masks_per_axis)
        print(f"certifying {args.checkpoint or args.model} on {data_desc}: {n} images, PatchCleanser against a "
              f"{masks.patch[0]}x{masks.patch[1]} px patch anywhere, {len(masks)} masks of "
              f"{masks.mask_size[0]}x{masks.mask_size[1]} px (stride {masks.stride[0]}), fill {fill:g}",
              file=sys.stderr)
    return patchcleanser_report(
        model, (x, y), patch, masks_per_axis=masks_per_axis, fill=fill, n_examples=args.n_examples,
        batch_size=args.batch_size or 512, progress=progress, class_names=meta.names if meta else None,
        safety=meta.safety if meta else (), attack_examples=args.patch_attack,
        attack_options=json_arg(args.attack_options, "--attack-options"), seed=args.seed,
        checkpoint=args.checkpoint)


def _write(args: argparse.Namespace, report: dict, out: Path, data_desc: str, model: Any, method: Any) -> None:
    """Report files, the wandb run and the summary on stdout (rank 0 of a torchrun run alone)."""
    from robust.reports.certification import log_certification, write_certification

    report["protocol"].update(data=data_desc, **describe_model(args, model, method))
    config = {"method": report["method"], **report["protocol"]}
    with wandb_run(args, out, "certify", config, record=report["protocol"]) as run_:
        written = write_certification(report, out)
        (out / STATE_NAME).unlink(missing_ok=True)
        if run_ is not None:
            log_certification(report, run_, images=written)
    _print_summary(report, written)


def _read_report(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"evaluation report not found: {file.resolve()}")
    try:
        report = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{file}: not a JSON report of robust evaluate") from None
    if not isinstance(report, dict) or not isinstance(report.get("threat"), dict) \
            or not isinstance(report.get("robust"), dict):
        raise UsageError(f"{file}: not a report of robust evaluate (no threat or robust accuracy)")
    counts = [report["robust"].get(k) for k in ("correct", "n")]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) or counts[0] > counts[1]:
        raise UsageError(f"{file}: its robust accuracy is not correct/n counts with correct <= n "
                         f"({report['robust']})"[:300])
    return report


def _print_summary(report: dict, written: dict[str, Path]) -> None:
    from robust.reports.format import fmt_accuracy

    print(f"clean accuracy:     {fmt_accuracy(report['clean'])}")
    if report["method"] == "patchcleanser":
        m, t = report["mask_set"], report["threat"]
        print(f"  undefended model: {fmt_accuracy(report['base_clean'])}")
        print(f"certified against a {t['side_px'][0]}x{t['side_px'][1]} px patch anywhere "
              f"({100 * t['area_fraction']:.2f}% of the image): {fmt_accuracy(report['certified'])}")
        print(f"mask set: {m['masks']} masks of {m['mask_size_px'][0]}x{m['mask_size_px'][1]} px, stride "
              f"{m['stride_px'][0]}x{m['stride_px'][1]} px ({m['positions'][0]}x{m['positions'][1]} positions, "
              f"k = {m['masks_per_axis']}), fill {report['settings']['fill']:g}")
        if report.get("empirical"):
            e = report["empirical"]
            print(f"patch attack on double masking, first {e['n_examples']}: robust {fmt_accuracy(e['robust'])}, "
                  f"certified {fmt_accuracy(e['certified'])}")
    elif report["method"] == "smoothing":
        for m in report["certified_accuracy"]:
            print(f"  certified at L2 radius {m['radius']:<6g} {fmt_accuracy(m['certified'])}")
        print(f"ACR {report['acr']:.4f}, abstained {100 * report['abstention_rate']:.2f}%, "
              f"{report['seconds_per_example']:.3f} s per example")
        if report.get("empirical"):
            e = report["empirical"]
            print(f"attack on the smoothed classifier at radius {e['radius']:g}: robust {fmt_accuracy(e['robust'])}, "
                  f"certified {fmt_accuracy(e['certified'])}")
    else:
        for s in report.get("sweep") or [report]:
            c = s["status_counts"]
            print(f"  eps {s['threat']['eps_str']:<8} certified {fmt_accuracy(s['certified'])}  empirical "
                  f"{fmt_accuracy(s['robust'])}  (verified {c['verified']}, inconclusive {c['inconclusive']}, "
                  f"falsified {c['falsified']})")
    check = report["consistency"]
    if check["ok"]:
        print(f"consistency: certified <= robust <= clean holds ({len(check['checks'])} checks)")
    else:
        print("consistency: VIOLATED: " + "; ".join(f["message"] for f in check["flags"]))
    print("written: " + ", ".join(str(p) for p in written.values()))
