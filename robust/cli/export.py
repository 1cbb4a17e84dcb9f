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

from robust.base.state import atomic_write_text
from robust.cli.options import (
    ArgumentParser, UsageError, add_source_arguments, add_threat_arguments, attack_names, json_arg, load_source,
    parse_args, resolve_threat)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="robust export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--formats", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    add_threat_arguments(p, "default: the checkpoint's threat model", "default: the checkpoint's")
    p.add_argument("--attack", default="pgd", help=f"attack crafted on the original ({attack_names()})")
    p.add_argument("--attack-options", default="{}", help='JSON settings of the attack, e.g. \'{"steps": 50}\'')
    p.add_argument("--n-examples", type=int, default=500, help="images to verify on")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed robust-accuracy gap, in points")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/export")
    return p


def run(argv: list[str]) -> int:
    args = parse_args(parser(), argv)
    from robust.deploy.export import FORMATS, export_model, verify_export

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"--formats must name some of {', '.join(FORMATS)}, got {args.formats!r}")
    if args.n_examples < 1 or args.batch_size < 1:
        raise UsageError("--n-examples and --batch-size must be >= 1")
    if not 0 <= args.tolerance <= 100:
        raise UsageError(f"--tolerance is in points, between 0 and 100, got {args.tolerance}")
    x, y, data_desc, model, ckpt_threat, _ = load_source(args)
    threat = resolve_threat(args, ckpt_threat)
    x, y = x[:args.n_examples], y[:args.n_examples]
    out = Path(args.out)
    files = export_model(model, x[:min(len(x), 8)], out, formats, opset=args.opset)
    report = verify_export(model, files, x, y, threat, args.attack, json_arg(args.attack_options, "--attack-options"),
                           batch_size=args.batch_size, seed=args.seed, tolerance=args.tolerance / 100)
    report.update(source=args.checkpoint or args.model, data=data_desc)
    atomic_write_text(out / "export.json", json.dumps(report, indent=2) + "\n")
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
