"""Reproduce PGD adversarial training on the real MNIST digits available offline.

Data: the "mnist-t10k split" of ``../shared/data/mnist-t10k`` (the real MNIST test split:
first 8,000 images for training -- 7,000 train + 1,000 validation to pick the checkpoint --
and the last 2,000 held out). Published MNIST figures (Madry et al. 89% PGD at eps 0.3;
TRADES 92.5%) were trained on all 60,000 training images; numbers here say "mnist-t10k split".

Runs ``recipes/mnist/pgd_cnnmedium_t10k_cpu.yaml`` (or ``--recipe``), then measures the best
checkpoint on the held-out 2,000 images through ``robust.evaluation.evaluate`` under the
checkpoint's threat (the recipe's: L-inf eps 0.3), with torchattacks-based attacks independent of
our training PGD: the test loop's PGD (the recipe's ``test_attack_*`` settings: 50 steps of 0.01,
random start) and the AutoAttack pair APGD-CE and APGD-T (100 iterations each, 9 target classes,
seeded), an example counting as robust only if it survives every attack. Prints the figures and
the training time, and writes a JSON record and the full evaluation report.

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robust.base.stats import accuracy_record  # noqa: E402
from robust.cli.lightning import build_cli  # noqa: E402
from robust.data import default_mnist_t10k_root  # noqa: E402
from robust.evaluation import evaluate  # noqa: E402
from robust.module import RobustClassifier  # noqa: E402

ATTACKS = ("pgd", "apgd-ce", "apgd-t")


def measure(module: RobustClassifier, x: torch.Tensor, y: torch.Tensor, batch: int, ckpt: str):
    """``evaluate`` the checkpoint's model under its own threat: the test loop's PGD, APGD-CE, APGD-T."""
    hp, threat = module.hparams, module.eval_threat
    if threat is None:
        raise SystemExit(f"{ckpt} has no threat model (its method has none): nothing to attack")
    step = float(threat.eps) / 10 if hp.test_attack_step_size is None else hp.test_attack_step_size
    pgd = {"steps": hp.test_attack_steps, "step_size": step, "restarts": hp.test_attack_restarts}
    return evaluate(module.model.eval(), (x, y), threat, attacks=ATTACKS, batch_size=batch, seed=0, audit=False,
                    attack_options={"pgd": pgd}, checkpoint=ckpt)


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
    cli = build_cli(cli_args, run=False)
    fit_seconds = None
    ckpt = args.ckpt
    if ckpt is None:
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_seconds = time.perf_counter() - start
        ckpt = cli.trainer.checkpoint_callback.best_model_path
        if hasattr(cli.trainer.logger, "finish"):
            cli.trainer.logger.finish()
    module = RobustClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    cli.datamodule.setup("test")
    x, y = cli.datamodule.test_tensors()
    report = measure(module, x, y, args.batch, ckpt)
    n, masks = report.n_examples, report.masks

    def figure(mask: torch.Tensor) -> dict:
        return accuracy_record(int(mask.sum()), n)

    steps = report.per_attack["pgd"]["settings"]["steps"]
    record = {
        "data": "mnist-t10k split (train 0..7999 with 7000..7999 as validation, test 8000..9999)",
        "recipe": args.recipe, "checkpoint": ckpt, "n_examples": n, "threat": report.threat,
        "eps": report.threat["eps"], "clean": report.clean, "pgd": figure(masks["pgd"]),
        "pgd_settings": report.per_attack["pgd"]["settings"], "apgd_ce": figure(masks["apgd-ce"]),
        "apgd_ce_then_apgd_t": figure(masks["apgd-ce"] & masks["apgd-t"]), "worst_case_all": report.robust,
        "fit_seconds": None if fit_seconds is None else round(fit_seconds, 1),
        "attack_seconds": round(report.seconds, 1),
        "machine": f"{platform.platform()} | {os.cpu_count()} CPUs | torch threads {torch.get_num_threads()}",
        "versions": report.protocol["versions"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mnist_t10k.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "evaluation.json").write_text(report.to_json() + "\n")
    threat = report.threat
    print(f"\nmnist-t10k split, held-out {n} images, {threat['norm']} eps {threat['eps_str']} (checkpoint {ckpt})")
    for key, label in (("clean", "clean"), ("pgd", f"PGD-{steps} (torchattacks)"), ("apgd_ce", "APGD-CE 100"),
                       ("apgd_ce_then_apgd_t", "APGD-CE and APGD-T 100"), ("worst_case_all", "worst case of all")):
        f = record[key]
        print(f"  {label:<26} {f['accuracy']:7.2%}  [{f['ci95'][0]:.2%}, {f['ci95'][1]:.2%}]")
    if fit_seconds is not None:
        print(f"  training time {fit_seconds / 60:.1f} min; attacks {report.seconds:.0f} s; {record['machine']}")
    return record


if __name__ == "__main__":
    main()
