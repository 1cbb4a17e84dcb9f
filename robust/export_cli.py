"""``robust export``: ship the hardened model as ONNX and TorchScript, verified against the original.

    robust export --checkpoint runs/.../best.ckpt --data digits --out runs/export

Writes ``model.onnx`` (one file, dynamic batch size) and ``model.torchscript.pt``, then checks on
the first ``--n-examples`` images that each exported model predicts exactly what the original
does, and that its robust accuracy on the adversarial examples crafted on the original agrees
within ``--tolerance`` points; ``export.json`` records it all. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robust.cli import ArgumentParser
from robust.evaluate_cli import UsageError, _json_arg, add_source_arguments, load_data, load_model


def parser() -> argparse.ArgumentParser:
    from robust.attacks.evaluation import list_attacks

    p = ArgumentParser(prog="robust export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--formats", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--norm", choices=("linf", "l2"), help="default: the checkpoint's threat model")
    p.add_argument("--eps", help="default: the checkpoint's")
    p.add_argument("--attack", default="pgd", help=f"attack crafted on the original ({', '.join(list_attacks())})")
    p.add_argument("--attack-options", default="{}", help='JSON settings of the attack, e.g. \'{"steps": 50}\'')
    p.add_argument("--n-examples", type=int, default=500, help="images to verify on")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed robust-accuracy gap, in points")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/export")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    args.prog = "robust export"
    from robust.export import FORMATS, export_model, verify_export
    from robust.threat import ThreatModel

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"--formats must name some of {', '.join(FORMATS)}, got {args.formats!r}")
    if args.n_examples < 1 or args.batch_size < 1:
        raise UsageError("--n-examples and --batch-size must be >= 1")
    if not 0 <= args.tolerance <= 100:
        raise UsageError(f"--tolerance is in points, between 0 and 100, got {args.tolerance}")
    x, y, num_classes, data_desc = load_data(args)
    model, ckpt_threat, _ = load_model(args, num_classes)
    if args.eps is None and ckpt_threat is None:
        raise UsageError("no threat model: give --norm and --eps (this model carries none)")
    threat = ThreatModel(args.norm or (ckpt_threat.norm if ckpt_threat else "linf"),
                         args.eps if args.eps is not None else ckpt_threat.eps)
    x, y = x[:args.n_examples], y[:args.n_examples]
    out = Path(args.out)
    files = export_model(model, x[:min(len(x), 8)], out, formats, opset=args.opset)
    report = verify_export(model, files, x, y, threat, args.attack, _json_arg(args.attack_options, "--attack-options"),
                           batch_size=args.batch_size, seed=args.seed, tolerance=args.tolerance / 100)
    report.update(source=args.checkpoint or args.model, data=data_desc)
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    orig = report["original"]
    print(f"original:     clean {100 * orig['clean']['accuracy']:.2f}%  robust {100 * orig['robust']['accuracy']:.2f}% "
          f"({args.attack} at {threat.norm} eps {threat.eps!r}, {report['n_examples']} images)")
    for fmt, r in report["exported"].items():
        print(f"{fmt:<12}  clean {100 * r['clean']['accuracy']:.2f}%  robust {100 * r['robust']['accuracy']:.2f}%  "
              f"predictions agree {100 * r['prediction_agreement']:.2f}%  max |logit diff| "
              f"{r['max_abs_logit_difference']:.2e}  {'ok' if r['ok'] else 'FAILED'}  -> {r['path']}")
    print(f"written: {out / 'export.json'}")
    if not report["ok"]:
        print("robust export: an exported model does not behave like the measured one", file=sys.stderr)
        return 1
    return 0
