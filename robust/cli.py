"""The ``robust`` command.

``robust fit|validate|test --config recipes/...yaml`` run LightningCLI on
:class:`robust.module.RobustClassifier` and any ``robust.data`` module;
``robust quickstart`` trains and measures a PGD model on the embedded digits data.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
COMMANDS = {  # command -> "module:function(argv)", imported on use
    "evaluate": "robust.evaluate_cli:run", "certify": "robust.certify_cli:run", "audit": "robust.audit_cli:run",
    "export": "robust.export_cli:run", "leaderboard": "robust.leaderboard_cli:run",
    "quickstart": "robust.quickstart:main",
}
USAGE = """usage: robust <command> [options]

Harden PyTorch image classifiers against adversarial perturbations and measure how robust they are.

commands:
  quickstart   train PGD and standard models on the embedded digits data and measure them
               under torchattacks' PGD-50 on the held-out test split (no download needed)
  fit          train from a recipe:         robust fit --config recipes/digits/pgd_cnnmedium.yaml
               (--no-wandb: without the recipe's wandb logger; --wandb-project NAME: its project)
  validate     validate a checkpoint:       robust validate --config RECIPE --ckpt_path CKPT
  test         test a checkpoint:           robust test --config RECIPE --ckpt_path CKPT
  evaluate     measure a checkpoint (AutoAttack, RobustBench protocol, gradient-masking audit,
               eps sweep, corruptions, patch, spatial): robust evaluate --checkpoint CKPT --data digits
  certify      certify a checkpoint: randomized smoothing (L2), or IBP / CROWN bounds (L-inf) with an
               attack for what they cannot prove:  robust certify --method crown --checkpoint CKPT --data digits
  audit        one report for a reviewer: AutoAttack + gradient-masking audit, the certificate that
               applies, corruptions, provenance, leaderboard entry: robust audit --checkpoint CKPT --data digits
  export       ONNX and TorchScript files of a checkpoint, checked against it (predictions and
               robust accuracy on the same adversarial examples): robust export --checkpoint CKPT --data digits
  leaderboard  add reports or RobustBench records, show ranked boards, export md/csv/json/html:
               robust leaderboard add runs/evaluate/report.json; robust leaderboard export --format html

Run `robust <command> --help` for the options of a command.
"""


def recipes_dir() -> Path:
    """The repository's ``recipes/`` folder (the package is installed in editable mode)."""
    return Path(__file__).resolve().parents[1] / "recipes"


def _lightning_cli(args: Sequence[str] | None, run: bool = True) -> Any:
    from lightning.pytorch.cli import LightningCLI

    from robust.callbacks import WandbResults
    from robust.data.base import RobustDataModule
    from robust.module import RobustClassifier

    class RobustCLI(LightningCLI):
        """LightningCLI with the trainer defaults adversarial work needs (``inference_mode=False``)."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--results", default=None,
                                help="validate/test: also write the metrics (and checkpoint path) to this JSON file")

        def _write_results(self) -> None:
            path = self.config[self.subcommand].get("results")
            if not path:
                return
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
            ckpt = self.config[self.subcommand].get("ckpt_path")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps({"metrics": metrics, "ckpt_path": ckpt}, indent=2) + "\n")
            print(f"results written to {path}")

        def after_validate(self) -> None:
            self._write_results()

        def after_test(self) -> None:
            self._write_results()

    return RobustCLI(
        RobustClassifier,
        RobustDataModule,
        subclass_mode_data=True,
        trainer_defaults={"inference_mode": False, "callbacks": [WandbResults()]},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=None if args is None else list(args),
        run=run,
        parser_kwargs={"prog": "robust", "exit_on_error": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robust`` command; bad input ends with one line and exit status 2."""
    from robust.data.base import DataFormatError, DataNotFoundError
    from robust.evaluation.core import EvaluationStateError
    from robust.leaderboard.store import StoreError
    from robust.module import CheckpointError
    from robust.spec import SpecError

    try:
        return _main(argv)
    except (DataNotFoundError, DataFormatError, CheckpointError, SpecError, FileNotFoundError,
            EvaluationStateError, StoreError) as exc:
        print(f"robust: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"robust: error: {_first_reason(str(exc))}", file=sys.stderr)
        return 2


def _first_reason(message: str) -> str:
    """The first concrete reason in a jsonargparse union error, else the whole message."""
    reasons = [line.strip()[2:] for line in message.splitlines()
               if line.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in line]
    return reasons[0] if reasons else message.strip().splitlines()[0]


def _main(argv: Sequence[str] | None) -> int:
    from_python = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command in LIGHTNING_COMMANDS:
        if "--no-wandb" in argv:  # the recipes' WandbLogger off for this run
            argv = [a for a in argv if a != "--no-wandb"] + ["--trainer.logger", "false"]
            from_python = True
        if "--wandb-project" in argv[:-1]:  # shorthand for the recipes' logger's project
            i = argv.index("--wandb-project")
            argv = argv[:i] + ["--trainer.logger.init_args.project", argv[i + 1]] + argv[i + 2:]
            from_python = True
        _lightning_cli(argv if from_python else None)
        return 0
    if command in COMMANDS:
        module, function = COMMANDS[command].split(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    print(f"robust: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
