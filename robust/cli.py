"""The ``robust`` command.

``robust fit|validate|test --config recipes/...yaml`` run LightningCLI on
:class:`robust.module.RobustClassifier` and any ``robust.data`` module;
``robust quickstart`` trains and measures a PGD model on the embedded digits data.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the ``robust`` error format: one line on stderr, ``robust: error: ...``, exit 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"robust: error: {message} (see `{self.prog} --help`)\n")


def newest_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` below ``root`` (temporary files of an interrupted
    write start with a dot and are skipped), or ``None``."""
    found = [p for p in Path(root).rglob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def recipes_dir() -> Path:
    """The repository's ``recipes/`` folder (the package is installed in editable mode)."""
    return Path(__file__).resolve().parents[1] / "recipes"


def _config_values(args: Sequence[str]) -> list[str]:
    """The values of ``--config``/``-c`` in ``args`` (each a file or an inline YAML/JSON string)."""
    values = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith("--config="):
            values.append(arg.split("=", 1)[1])
    return values


def check_configs(args: Sequence[str]) -> None:
    """Refuse a config (file or inline) that is not YAML, or that names a ``class_path`` outside the
    allowlist, before jsonargparse imports anything from it."""
    import yaml

    from robust.spec import CONFIG_PREFIXES, SpecError, check_tree

    for value in _config_values(args):
        path = Path(value)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # an inline config too long or odd to be a path
            is_file = False
        if is_file:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(f"config {path}: cannot be read as text ({type(exc).__name__})") from None
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            raise FileNotFoundError(f"config not found: {path.resolve()}")
        else:
            text = value
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise SpecError(f"config {value if is_file else '(inline)'}: not valid YAML{at}: "
                            f"{getattr(exc, 'problem', None) or exc}") from None
        if is_file and not isinstance(config, dict):
            raise SpecError(f"config {path}: expected a mapping of sections (model:, data:, trainer:), "
                            f"got {type(config).__name__}")
        try:
            check_tree(config, "", CONFIG_PREFIXES)
        except SpecError as exc:
            raise SpecError(f"config {value if is_file else '(inline)'}: {exc}") from None


def check_ckpt_path(args: Sequence[str]) -> None:
    """Check a ``--ckpt_path`` file like any checkpoint from elsewhere (weights only, allowlisted
    class paths) before Lightning resumes from it; ``last``/``best``/``hpc``/``registry`` are Lightning's."""
    from robust.safe_load import check_checkpoint

    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--ckpt_path" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else None)
        if value is not None and value not in ("last", "best", "hpc", "registry", "null", "None", ""):
            check_checkpoint(Path(value))


def _restrict_imports() -> None:
    """jsonargparse imports only allowlisted paths named by values (configs, the command line)."""
    from jsonargparse import set_parsing_settings

    from robust.spec import CONFIG_PREFIXES

    set_parsing_settings(import_path_denylist=["*"],
                         import_path_allowlist=[p.rstrip(".") for p in CONFIG_PREFIXES])


def _lightning_cli(args: Sequence[str] | None, run: bool = True) -> Any:
    from lightning.pytorch.cli import LightningCLI

    from robust.callbacks import ResumeState, WandbResults
    from robust.data.base import RobustDataModule
    from robust.module import RobustClassifier

    class RobustCLI(LightningCLI):
        """LightningCLI with the trainer defaults adversarial work needs (``inference_mode=False``) and
        exact, crash-safe resumption (:class:`robust.callbacks.ResumeState`, atomic checkpoint writes)."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--results", default=None,
                                help="validate/test: also write the metrics (and checkpoint path) to this JSON file")

        def before_instantiate_classes(self) -> None:
            # One seed: the data order follows seed_everything (an int by now: LightningCLI has drawn
            # one if it was true), as initialisation, random starts and noise do.
            config = self.config[self.subcommand] if self.subcommand else self.config
            seed = config.get("seed_everything")
            init_args = (config.get("data") or {}).get("init_args")
            if isinstance(seed, int) and not isinstance(seed, bool) and init_args is not None and "seed" in init_args:
                init_args["seed"] = seed

        def before_fit(self) -> None:
            # --ckpt_path last: the newest last*.ckpt anywhere under the run's root folder. Lightning
            # looks only in the checkpoint callback's folder, which with the recipes' wandb logger is
            # named after the new run's id, so a rerun of the same command would not find it.
            if self.config_init["fit"].get("ckpt_path") == "last":
                found = newest_last_checkpoint(self.trainer.default_root_dir)
                if found is not None:
                    print(f"resuming from {found}", file=sys.stderr)
                    self.config_init["fit"]["ckpt_path"] = str(found)

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

    check_configs(sys.argv[1:] if args is None else args)
    check_ckpt_path(sys.argv[1:] if args is None else args)
    _restrict_imports()
    return RobustCLI(
        RobustClassifier,
        RobustDataModule,
        subclass_mode_data=True,
        # ResumeState: RNG states and data position in every checkpoint (exact `--ckpt_path last` resumes);
        # AtomicCheckpointIO: a kill while a checkpoint is written leaves the previous file intact
        trainer_defaults={"inference_mode": False, "callbacks": [WandbResults(), ResumeState()],
                          "plugins": [{"class_path": "robust.checkpoint_io.AtomicCheckpointIO"}]},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=None if args is None else list(args),
        run=run,
        parser_kwargs={"prog": "robust", "exit_on_error": False},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robust`` command; bad input ends with one line and exit status 2."""
    from robust.data.base import DataFormatError, DataNotFoundError
    from robust.evaluation.core import EvaluationStateError
    from robust.leaderboard.store import StoreError
    from robust.module import CheckpointError
    from robust.safe_load import UnsafeFileError
    from robust.spec import SpecError

    try:
        return _main(argv)
    except (DataNotFoundError, DataFormatError, CheckpointError, SpecError, FileNotFoundError,
            EvaluationStateError, StoreError, UnsafeFileError) as exc:
        print(f"robust: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except (ValueError, argparse.ArgumentError) as exc:  # jsonargparse's parse errors are ArgumentErrors
        print(f"robust: error: {_first_reason(str(exc))}", file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"robust: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # training diverged: not bad input, but one line all the same
        print(f"robust: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.strip().splitlines() if part.strip()) or "failed"


def _first_reason(message: str) -> str:
    """The most specific reason in a (nested) jsonargparse error, on one line, after the keys that lead to it.

    jsonargparse nests ``Parser key "k":`` and ``Problem with given class_path ...:`` headers and
    lists one ``- reason`` per type of a union; the last concrete line that is not about ``None``
    names the problem.
    """
    from robust.spec import CONFIG_PREFIXES

    denied = re.search(r"Importing '([^']+)' is not allowed", message)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    keys: list[str] = []
    reason = lines[0] if lines else "invalid input"
    for line in lines:
        text = line[2:] if line.startswith("- ") else line
        key = re.match(r'Parser key "([^"]+)":\s*(.*)$', text)
        if key:
            if not keys or keys[-1] != key.group(1):
                keys.append(key.group(1))
            text = key.group(2)
        if (not text or text.endswith(":") or "NoneType" in text
                or text.startswith(("Does not validate against", "Subtypes:", "Errors:", "Given value"))):
            continue
        reason = text
        if denied:
            break
    if denied:
        reason = (f"class_path {denied.group(1)!r} is outside the allowlist "
                  f"({', '.join(p + '*' for p in CONFIG_PREFIXES)}); refusing to import it")
    where = ": ".join(keys)
    return f"{where}: {reason}" if where and not reason.startswith("Parser key") else reason


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
