"""Reproduce PGD adversarial training on the real MNIST digits available offline.

Data: the "mnist-t10k split" of ``../shared/data/mnist-t10k`` (the real MNIST test split:
first 8,000 images for training -- 7,000 train + 1,000 validation to pick the checkpoint --
and the last 2,000 held out). Published MNIST figures (Madry et al. 89% PGD at eps 0.3;
TRADES 92.5%) were trained on all 60,000 training images; numbers here say "mnist-t10k split".

Runs ``recipes/mnist/pgd_cnnmedium_t10k_cpu.yaml`` (or ``--recipe``), then measures the best
checkpoint on the held-out 2,000 images with torchattacks, independent of our training PGD:
PGD-50 (step 0.01, random start) and the AutoAttack pair APGD-CE followed by APGD-T
(100 iterations each, 9 target classes, fixed seed), an example counting as robust only if it
survives every attack. Prints the figures, the training time, and writes a JSON record.

    python scripts/reproduce_mnist_t10k.py [--recipe PATH] [--out runs/mnist_t10k] [--max-epochs N] [LightningCLI options]
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
import torchattacks
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robust.cli import _lightning_cli  # noqa: E402
from robust.data import default_mnist_t10k_root  # noqa: E402
from robust.module import RobustClassifier  # noqa: E402
from robust.evaluation.stats import clopper_pearson  # noqa: E402


def survives(attack_fn, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int,
             name: str = "attack") -> torch.Tensor:
    """Per-example bool: still correct on ``attack_fn(model)``'s adversarial examples."""
    out = torch.zeros(len(x), dtype=torch.bool)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        attack = attack_fn(model)
        for i in tqdm(range(0, len(x), batch), desc=name, unit="batch"):
            xb, yb = x[i:i + batch], y[i:i + batch]
            adv = attack(xb, yb)
            with torch.no_grad():
                out[i:i + batch] = model(adv).argmax(1) == yb
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes/mnist/pgd_cnnmedium_t10k_cpu.yaml"))
    parser.add_argument("--root", default=None, help="folder with t10k-*-ubyte.gz (default ../shared/data/mnist-t10k)")
    parser.add_argument("--out", default="runs/mnist_t10k")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--ckpt", default=None, help="skip training: measure this checkpoint")
    parser.add_argument("--batch", type=int, default=500, help="attack batch size")
    args, overrides = parser.parse_known_args(argv)
    root = args.root or default_mnist_t10k_root()
    if root is None:
        parser.error("../shared/data/mnist-t10k not found; pass --root DIR holding t10k-images-idx3-ubyte.gz")
    os.environ.setdefault("WANDB_SILENT", "true")
    out = Path(args.out)
    cli_args = ["--config", args.recipe, "--data.init_args.root", str(root), "--trainer.default_root_dir", str(out),
                "--trainer.logger.init_args.save_dir", str(out)]
    if args.max_epochs:
        cli_args += ["--trainer.max_epochs", str(args.max_epochs)]
    cli_args += overrides  # any further LightningCLI option, e.g. --model.lr 5e-4
    cli = _lightning_cli(cli_args, run=False)
    fit_seconds = None
    ckpt = args.ckpt
    if ckpt is None:
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_seconds = time.perf_counter() - start
        ckpt = cli.trainer.checkpoint_callback.best_model_path
        if hasattr(cli.trainer.logger, "finish"):
            cli.trainer.logger.finish()
    model = RobustClassifier.load_from_checkpoint(ckpt, map_location="cpu").model.eval()
    cli.datamodule.setup("test")
    x, y = cli.datamodule.test_tensors()
    eps = 0.3
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + args.batch]).argmax(1) for i in range(0, len(x), args.batch)]) == y
    start = time.perf_counter()
    pgd = clean & survives(lambda m: torchattacks.PGD(m, eps=eps, alpha=0.01, steps=50, random_start=True),
                           model, x, y, args.batch, seed=0, name="PGD-50")
    apgd_ce = clean & survives(lambda m: torchattacks.APGD(m, norm="Linf", eps=eps, steps=100, n_restarts=1,
                                                           loss="ce", seed=0), model, x, y, args.batch, seed=0, name="APGD-CE")
    idx = apgd_ce.nonzero().flatten()
    apgd_t = apgd_ce.clone()
    if len(idx):
        apgd_t[idx] = survives(lambda m: torchattacks.APGDT(m, norm="Linf", eps=eps, steps=100, n_restarts=1,
                                                            n_classes=10, seed=0), model, x[idx], y[idx], args.batch, seed=1,
                               name="APGD-T")
    attack_seconds = time.perf_counter() - start
    n = len(y)
    worst = apgd_t & pgd

    def figure(mask: torch.Tensor) -> dict:
        k = int(mask.sum())
        return {"accuracy": k / n, "ci95": clopper_pearson(k, n)}

    record = {
        "data": "mnist-t10k split (train 0..7999 with 7000..7999 as validation, test 8000..9999)",
        "recipe": args.recipe, "checkpoint": ckpt, "n_examples": n, "eps": eps,
        "clean": figure(clean), "pgd50": figure(pgd), "apgd_ce": figure(apgd_ce),
        "apgd_ce_then_apgd_t": figure(apgd_t), "worst_case_all": figure(worst),
        "fit_seconds": None if fit_seconds is None else round(fit_seconds, 1),
        "attack_seconds": round(attack_seconds, 1),
        "machine": f"{platform.platform()} | {os.cpu_count()} CPUs | torch threads {torch.get_num_threads()}",
        "versions": {"torch": torch.__version__, "torchattacks": torchattacks.__version__},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mnist_t10k.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nmnist-t10k split, held-out {n} images, L-inf eps {eps} (checkpoint {ckpt})")
    for key, label in (("clean", "clean"), ("pgd50", "PGD-50 (torchattacks)"), ("apgd_ce", "APGD-CE 100"),
                       ("apgd_ce_then_apgd_t", "APGD-CE then APGD-T 100"), ("worst_case_all", "worst case of all")):
        f = record[key]
        print(f"  {label:<26} {f['accuracy']:7.2%}  [{f['ci95'][0]:.2%}, {f['ci95'][1]:.2%}]")
    if fit_seconds is not None:
        print(f"  training time {fit_seconds / 60:.1f} min; attacks {attack_seconds:.0f} s; {record['machine']}")
    return record


if __name__ == "__main__":
    main()
