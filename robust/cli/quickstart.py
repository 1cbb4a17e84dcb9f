"""``robust quickstart``: adversarial training visibly helps, measured honestly, in minutes on a CPU.

Trains the ``digits/pgd_cnnmedium`` recipe (PGD adversarial training at L-inf
eps = 0.2) and the ``digits/standard_cnnmedium`` recipe on scikit-learn's digits,
picks each checkpoint by *validation* PGD accuracy, and measures clean and robust
accuracy on the held-out *test* split under torchattacks' PGD-50 (step eps/10,
random start), an attack independent of the one used in training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from robust.base.state import atomic_write_text

RECIPES = {"pgd": "digits/pgd_cnnmedium.yaml", "standard": "digits/standard_cnnmedium.yaml"}


def recipes_dir() -> Path:
    """The repository's ``recipes/`` folder (the package is installed in editable mode)."""
    return Path(__file__).resolve().parents[2] / "recipes"


def run_recipe(recipe: Path, out: Path, epochs: int | None, progress: bool, wandb: bool = True,
               project: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Fit ``recipe`` into ``out``, then test its best checkpoint; return the measured figures.

    The console shows one bar for the training and one for the test; ``verbose`` shows Lightning's
    own per-step bars, info lines and warnings instead."""
    from robust.base.stats import clopper_pearson
    from robust.cli.lightning import PhaseProgress, build_cli, quiet_framework

    args = ["--config", str(recipe), "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", str(progress and verbose).lower()]
    args += ["--trainer.logger.init_args.save_dir", str(out)] if wandb else ["--trainer.logger", "false"]
    if wandb and project:
        args += ["--trainer.logger.init_args.project", project]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    with contextlib.nullcontext() if verbose else quiet_framework():
        cli = build_cli(args, run=False)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        if progress and not verbose:
            trainer.callbacks.append(PhaseProgress())
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        fit_seconds = time.perf_counter() - start
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        metrics = trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)[0]
        n = len(data.test_dataloader().dataset)
        logger = trainer.logger
        run_dir = logger.finish() if hasattr(logger, "finish") else None
    threat = model.eval_threat
    clean = round(metrics["test/clean_acc"] * n)
    robust = round(metrics["test/robust_acc"] * n)
    hp = model.hparams
    return {
        "recipe": str(recipe),
        "method": hp["method"]["class_path"],
        "clean_accuracy": clean / n,
        "clean_accuracy_ci95": clopper_pearson(clean, n),
        "robust_accuracy": robust / n,
        "robust_accuracy_ci95": clopper_pearson(robust, n),
        "n_examples": n,
        "split": "test (held out; checkpoints were chosen on the validation split)",
        "attack": {
            "name": "torchattacks.PGD" if threat.norm == "linf" else "torchattacks.PGDL2",
            "norm": threat.norm, "eps": float(threat.eps), "steps": hp["test_attack_steps"],
            "step_size": hp["test_attack_step_size"] or float(threat.eps) / 10, "random_start": True,
            "restarts": hp["test_attack_restarts"], "seed": hp["seed"],
        },
        "checkpoint": best,
        "wandb_run": str(run_dir) if run_dir else None,
        "fit_seconds": round(fit_seconds, 1),
    }


def leaderboard_entry(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard entry of one quickstart model (digits test split, torchattacks PGD-50)."""
    import hashlib

    import torch

    from robust.base.provenance import versions
    from robust.base.stats import accuracy_record

    n, attack = result["n_examples"], result["attack"]
    ckpt = Path(result["checkpoint"]) if result["checkpoint"] else None
    return {
        "name": f"quickstart {name} (CNNMedium)", "architecture": "CNNMedium", "dataset": "digits",
        "threat": "Linf" if attack["norm"] == "linf" else "L2", "eps": attack["eps"], "eps_str": f"{attack['eps']:g}",
        "clean": accuracy_record(round(result["clean_accuracy"] * n), n),
        "robust": accuracy_record(round(result["robust_accuracy"] * n), n),
        "attack_protocol": {"name": f"pgd-{attack['steps']}", "version": "torchattacks, random start, "
                            f"{attack['restarts']} restart(s)", "n_examples": n, "seed": attack["seed"],
                            "torchattacks": versions()["torchattacks"]},
        "training": {"method": result["method"], "recipe": result["recipe"], "seconds": result["fit_seconds"]},
        "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest() if ckpt and ckpt.is_file() else None,
        "versions": versions(), "hardware": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "wandb_run": result["wandb_run"],
    }


def main(argv: list[str] | None = None) -> int:
    from robust.cli.options import ArgumentParser

    parser = ArgumentParser(prog="robust quickstart", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="folder for checkpoints, wandb runs and results")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' max_epochs")
    parser.add_argument("--skip-standard", action="store_true", help="train only the PGD model")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--verbose", action="store_true",
                        help="show Lightning's per-step progress bars, info lines and warnings")
    parser.add_argument("--no-wandb", action="store_true", help="train without the recipes' wandb logger")
    parser.add_argument("--wandb-project", help="wandb project of the training runs (default: the recipes', robust)")
    parser.add_argument("--leaderboard", default=None,
                        help="board to add the results to (default: $ROBUST_LEADERBOARD or runs/leaderboard.db)")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    os.environ.setdefault("WANDB_SILENT", "true")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["pgd"] if args.skip_standard else ["pgd", "standard"]
    results: dict[str, Any] = {}
    for name in names:
        recipe = recipes_dir() / RECIPES[name]
        if not recipe.is_file():
            parser.error(f"recipe not found: {recipe} (install the repository with `pip install -e .`)")
        print(f"\n== training {RECIPES[name]} ==", flush=True)
        results[name] = run_recipe(recipe, out / name, args.epochs, not args.no_progress, wandb=not args.no_wandb,
                                   project=args.wandb_project, verbose=args.verbose)

    path = out / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    attack = results["pgd"]["attack"]
    print(f"\nHeld-out digits test split ({results['pgd']['n_examples']} images), "
          f"torchattacks PGD-{attack['steps']} at L-inf eps={attack['eps']:g} "
          f"(step {attack['step_size']:.3g}, random start, {attack['restarts']} restart(s)):")
    print(f"  {'model':<10} {'clean':>22} {'robust (PGD)':>22}")
    for name, r in results.items():
        c, rc = r["clean_accuracy_ci95"], r["robust_accuracy_ci95"]
        print(f"  {name:<10} {r['clean_accuracy']:>7.1%} [{c[0]:.1%}, {c[1]:.1%}] "
              f"{r['robust_accuracy']:>7.1%} [{rc[0]:.1%}, {rc[1]:.1%}]")
    for name, r in results.items():
        print(f"  {name} checkpoint: {r['checkpoint']}")
        if r["wandb_run"]:
            print(f"  {name} wandb run:  {r['wandb_run']}  (upload with `wandb sync {r['wandb_run']}`)")
    print(f"  results: {path}")

    from robust.leaderboard import Store
    from robust.leaderboard.formats import write

    store = Store(args.leaderboard)
    for name, r in results.items():
        store.add(leaderboard_entry(name, r))
    board = write(store.entries(), "html", Path(store.url).with_suffix(".html") if "://" not in store.url
                  else out / "leaderboard.html")
    print(f"  added to the leaderboard {store.url} ({len(store)} entries); board: {board.resolve()}")
    return 0
