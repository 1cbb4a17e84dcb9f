"""``robust export``: ship the hardened model as ONNX and TorchScript, verified against the original.

    robust export --checkpoint runs/.../best.ckpt --data digits --out runs/export

Writes ``model.onnx`` (one file, dynamic batch size) and ``model.torchscript.pt``, then checks on
the first ``--n-examples`` images that each exported model predicts exactly what the original
does, and that its robust accuracy on the adversarial examples crafted on the original agrees
within ``--tolerance`` points; ``export.json`` records it all. The files are made and checked in a
staging folder inside ``--out`` and replace an earlier export only when every check passes: a
refused or failed export leaves ``--out`` as it was. Exit status 2 for bad input, 1 when a check
fails.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from robust.cli.options import (
    ArgumentParser,
    UsageError,
    add_source_arguments,
    add_threat_arguments,
    attack_names,
    json_arg,
    load_source,
    parse_args,
    resolve_threat,
)
from robust.cli.options import check_options as shared_options


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="robust export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--formats", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (7 up to the newest the installed onnx knows; "
                                                         "written exactly or refused)")
    add_threat_arguments(p, "default: the checkpoint's threat model", "default: the checkpoint's")
    p.add_argument("--attack", default="pgd", help=f"attack crafted on the original ({attack_names()})")
    p.add_argument("--attack-options", default="{}", help='JSON settings of the attack, e.g. \'{"steps": 50}\'')
    p.add_argument("--n-examples", type=int, default=500, help="images to verify on")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed robust-accuracy gap, in points")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/export", help="output folder (an earlier export there is replaced only "
                                                        "by one that passes every check)")
    return p


def run(argv: list[str]) -> int:
    args = parse_args(parser(), argv)
    from robust.deploy.export import FORMATS, ExportError, check_opset, export_verified

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"--formats must name some of {', '.join(FORMATS)}, got {args.formats!r}")
    shared_options(args)  # counts, seed, device, --out, wandb project
    if not (math.isfinite(args.tolerance) and 0 <= args.tolerance <= 100):
        raise UsageError(f"--tolerance is in points, between 0 and 100, got {args.tolerance}")
    if "onnx" in formats:
        try:
            check_opset(args.opset)
        except ExportError as err:
            raise UsageError(f"--{err}") from None
    out = Path(args.out)
    from robust.attacks.registry import check_options

    attack_options = check_options(args.attack, json_arg(args.attack_options, "--attack-options"), "--attack-options: ")
    x, y, data_desc, model, ckpt_threat, _ = load_source(args)
    threat = resolve_threat(args, ckpt_threat)
    x, y = x[:args.n_examples], y[:args.n_examples]
    report = export_verified(model, x, y, out, threat, formats, opset=args.opset, attack=args.attack,
                             attack_options=attack_options, batch_size=args.batch_size, seed=args.seed,
                             tolerance=args.tolerance / 100,
                             record={"source": args.checkpoint or args.model, "data": data_desc})
    orig = report["original"]
    print(f"original:     clean {100 * orig['clean']['accuracy']:.2f}%  robust {100 * orig['robust']['accuracy']:.2f}% "
          f"({args.attack} at {threat.norm} eps {threat.eps!r}, {report['n_examples']} images)")
    for fmt, r in report["exported"].items():
        print(f"{fmt:<12}  clean {100 * r['clean']['accuracy']:.2f}%  robust {100 * r['robust']['accuracy']:.2f}%  "
              f"predictions agree {100 * r['prediction_agreement']:.2f}%  max |logit diff| "
              f"{r['max_abs_logit_difference']:.2e}  {'ok' if r['ok'] else 'FAILED'}  -> {r['path']}")
    if not report["ok"]:
        failed = ", ".join(fmt for fmt, r in report["exported"].items() if not r["ok"])
        print(f"robust: error: the exported {failed} model does not behave like the measured one; nothing in {out} "
              "was changed", file=sys.stderr)
        return 1
    print(f"written: {out / 'export.json'}")
    return 0
