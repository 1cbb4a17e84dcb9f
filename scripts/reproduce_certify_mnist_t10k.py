"""Reproduce certified training and certification on the real MNIST digits available offline.

Data: the "mnist-t10k split" of ``../shared/data/mnist-t10k`` (the real MNIST test split: first
8,000 images for training -- 7,000 train + 1,000 validation to pick the checkpoint -- and the
last 2,000 held out). Published MNIST certificates were trained on all 60,000 training images;
numbers here say "mnist-t10k split".

1. IBP: trains ``recipes/mnist/ibp_cnnsmall_t10k_cpu.yaml`` (small CNN, eps 0.1, eps_train 0.2)
   and verifies the held-out 2,000 images under the checkpoint's threat (the recipe's: L-inf eps
   0.1) with IBP and with CROWN intersected with IBP, PGD-50 falsifying what they cannot prove.
2. Randomized smoothing: trains ``recipes/mnist/noise_cnnsmall_t10k_cpu_sigma025.yaml`` and
   ``..._sigma05.yaml`` and certifies the first ``--smoothing-examples`` (500) held-out images with
   the checkpoint's sigma, n0 = 100, n = 10,000, alpha = 0.001, reporting certified accuracy at L2
   radius 0.5 (sigma 0.25) and 1.0 (sigma 0.5) and the time per example.

The eps and sigma are read from each checkpoint (its method's threat or noise), never written
here: a ``--ckpt`` trained with other settings is certified at its own.

Each part writes a full ``robust certify`` report (report.json, report.md, TSV, plot) under
``--out``; a summary is printed and written to ``<out>/summary.json``.

    python scripts/reproduce_certify_mnist_t10k.py [--parts ibp,smoothing] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robust.certify.report import smoothing_report, verification_report  # noqa: E402
from robust.cli.lightning import build_cli  # noqa: E402
from robust.data import default_mnist_t10k_root  # noqa: E402
from robust.module import RobustClassifier  # noqa: E402
from robust.reports.certification import write_certification  # noqa: E402

RECIPES = {
    "ibp": REPO / "recipes/mnist/ibp_cnnsmall_t10k_cpu.yaml",
    "sigma0.25": REPO / "recipes/mnist/noise_cnnsmall_t10k_cpu_sigma025.yaml",
    "sigma0.5": REPO / "recipes/mnist/noise_cnnsmall_t10k_cpu_sigma05.yaml",
}


def fit(recipe: Path, root: str, out: Path, accelerator: str, max_epochs: int | None,
        logger: bool = True) -> tuple[str, float, object]:
    """Train ``recipe``; return the best checkpoint, the training seconds and the data module."""
    args = ["--config", str(recipe), "--data.init_args.root", root, "--trainer.default_root_dir", str(out),
            "--trainer.accelerator", accelerator, "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.logger.init_args.save_dir", str(out)] if logger else ["--trainer.logger", "false"]
    if max_epochs:
        args += ["--trainer.max_epochs", str(max_epochs)]
    cli = build_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    if hasattr(cli.trainer.logger, "finish"):
        cli.trainer.logger.finish()
    return cli.trainer.checkpoint_callback.best_model_path, seconds, cli.datamodule


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="folder with t10k-*-ubyte.gz (default ../shared/data/mnist-t10k)")
    parser.add_argument("--out", default="runs/certify_mnist_t10k")
    parser.add_argument("--parts", default="ibp,smoothing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the recipes' epochs")
    parser.add_argument("--smoothing-examples", type=int, default=500)
    parser.add_argument("--n", type=int, default=10_000, help="Monte Carlo samples per certificate")
    parser.add_argument("--no-logger", action="store_true", help="train without the recipes' wandb logger")
    parser.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                        help="skip training NAME (ibp, sigma0.25, sigma0.5) and certify PATH")
    args = parser.parse_args(argv)
    root = args.root or default_mnist_t10k_root()
    if root is None:
        parser.error("../shared/data/mnist-t10k not found; pass --root DIR holding t10k-images-idx3-ubyte.gz")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    given = dict(item.split("=", 1) for item in args.ckpt)
    out = Path(args.out)
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    names = (["ibp"] if "ibp" in parts else []) + (["sigma0.25", "sigma0.5"] if "smoothing" in parts else [])
    summary: dict = {"data": "mnist-t10k split (train 0..7999 with 7000..7999 as validation, test 8000..9999)",
                     "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                     f"cpu ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})",
                     "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    for name in names:
        if name in given:
            ckpt, seconds = given[name], None
            from robust.data import MNIST10k

            dm = MNIST10k(root=str(root))
        else:
            ckpt, seconds, dm = fit(RECIPES[name], str(root), out / name, accelerator, args.max_epochs,
                                  logger=not args.no_logger)
        module = RobustClassifier.load_from_checkpoint(ckpt, map_location="cpu")
        model = module.model.to(device).eval()
        dm.setup("test")
        x, y = dm.test_tensors()
        if name == "ibp":
            threat = module.eval_threat
            if threat is None or threat.norm != "linf":
                raise SystemExit(f"{ckpt}: verification needs an L-inf threat in the checkpoint, got {threat}")
            report = verification_report(model, (x, y), [threat.eps], method="crown", attack="pgd", batch_size=250,
                                         checkpoint=ckpt)
            entry = {"clean": report["clean"], "verified_crown_and_ibp": report["certified"],
                     "verified_ibp_alone": report["verified_by"]["ibp"],
                     "verified_crown_alone": report["verified_by"]["crown"],
                     "pgd50_robust": report["robust"], "status_counts": report["status_counts"],
                     "certify_seconds": round(report["seconds"], 1)}
        else:
            sigma = getattr(module.method, "sigma", None)
            if sigma is None:
                raise SystemExit(f"{ckpt}: smoothing needs a model trained with GaussianNoise (its sigma)")
            report = smoothing_report(model, (x, y), sigma, n0=100, n=args.n, alpha=0.001,
                                      batch_size=10_000 if device.type == "cuda" else 1000,
                                      radii=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5), n_examples=args.smoothing_examples,
                                      checkpoint=ckpt)
            entry = {"clean_smoothed": report["clean"], "base_clean": report["base_clean"],
                     "certified": {f"{m['radius']:g}": m["certified"] for m in report["certified_accuracy"]},
                     "acr": round(report["acr"], 4), "abstention_rate": report["abstention_rate"],
                     "seconds_per_example": round(report["seconds_per_example"], 4)}
        report["protocol"]["data"] = summary["data"]
        write_certification(report, out / name)
        summary[name] = {"checkpoint": ckpt, "fit_seconds": None if seconds is None else round(seconds, 1), **entry}
        print(f"{name}: " + json.dumps(entry, default=str)[:600], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
