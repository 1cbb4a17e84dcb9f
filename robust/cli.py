"""The ``robust`` command.

``robust fit|validate|test --config recipes/...yaml`` run LightningCLI on
:class:`robust.module.RobustClassifier` and any ``robust.data`` module;
``robust quickstart`` trains and measures a PGD model on the embedded digits data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = """usage: robust <command> [options]

Harden PyTorch image classifiers against adversarial perturbations and measure how robust they are.

commands:
  quickstart   train PGD and standard models on the embedded digits data and measure them
               under torchattacks' PGD-50 on the held-out test split (no download needed)
  fit          train from a recipe:         robust fit --config recipes/digits/pgd_smallcnn.yaml
  validate     validate a checkpoint:       robust validate --config RECIPE --ckpt_path CKPT
  test         test a checkpoint:           robust test --config RECIPE --ckpt_path CKPT

Run `robust <command> --help` for the options of a command.
"""


def recipes_dir() -> Path:
    """The repository's ``recipes/`` folder (the package is installed in editable mode)."""
    return Path(__file__).resolve().parents[1] / "recipes"


def _lightning_cli(args: Sequence[str], run: bool = True) -> Any:
    from lightning.pytorch.cli import LightningCLI

    from robust.data.base import RobustDataModule
    from robust.module import RobustClassifier

    class RobustCLI(LightningCLI):
        """LightningCLI with the trainer defaults adversarial work needs (``inference_mode=False``)."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--results", default=None, help="write the test metrics to this JSON file")

    return RobustCLI(
        RobustClassifier,
        RobustDataModule,
        subclass_mode_data=True,
        trainer_defaults={"inference_mode": False},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=list(args),
        run=run,
        parser_kwargs={"prog": "robust", "exit_on_error": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command in LIGHTNING_COMMANDS:
        _lightning_cli(argv)
        return 0
    if command == "quickstart":
        from robust.quickstart import main as quickstart_main

        return quickstart_main(argv[1:])
    print(f"robust: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
