"""The LightningCLI behind ``robust fit|validate|test|predict`` and the quickstart: :func:`build_cli`.

Configs and ``--ckpt_path`` files are checked before jsonargparse or Lightning read them (YAML
only, class paths inside the allowlist), and :func:`quiet_framework` with :class:`PhaseProgress`
give a console of one progress bar per phase.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from robust.base.state import atomic_write_text
from robust.callbacks import ResumeState, WandbResults
from robust.data.base import RobustDataModule
from robust.module import RobustClassifier


def newest_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` below ``root`` (temporary files of an interrupted
    write start with a dot and are skipped), or ``None``."""
    found = [p for p in Path(root).rglob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


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

    from robust.base.spec import CONFIG_PREFIXES, SpecError, check_tree

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
    from robust.base.safe_load import check_checkpoint

    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--ckpt_path" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else None)
        if value is not None and value not in ("last", "best", "hpc", "registry", "null", "None", ""):
            check_checkpoint(Path(value))


def _restrict_imports() -> None:
    """jsonargparse imports only allowlisted paths named by values (configs, the command line)."""
    from jsonargparse import set_parsing_settings

    from robust.base.spec import CONFIG_PREFIXES

    set_parsing_settings(import_path_denylist=["*"],
                         import_path_allowlist=[p.rstrip(".") for p in CONFIG_PREFIXES])


class RobustCLI(LightningCLI):
    """LightningCLI with the trainer defaults adversarial work needs (``inference_mode=False``) and
    exact, crash-safe resumption (:class:`robust.callbacks.ResumeState`, atomic checkpoint writes)."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--results", default=None,
                            help="validate/test: also write the metrics (and checkpoint path) to this JSON file")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # Lightning warns when ``args`` and sys.argv are both given; the robust command always
        # hands over its own, rewritten, command line (or the quickstart's), so parse without it.
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

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
        atomic_write_text(path, json.dumps({"metrics": metrics, "ckpt_path": ckpt}, indent=2) + "\n")
        print(f"results written to {path}")

    def after_validate(self) -> None:
        self._write_results()

    def after_test(self) -> None:
        self._write_results()


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> RobustCLI:
    """The LightningCLI of ``robust fit|validate|test|predict`` over ``args`` (default: ``sys.argv[1:]``);
    ``run=False`` builds the model, data module and trainer without running a subcommand."""
    given = sys.argv[1:] if args is None else args
    check_configs(given)
    check_ckpt_path(given)
    _restrict_imports()
    return RobustCLI(
        RobustClassifier,
        RobustDataModule,
        subclass_mode_data=True,
        # ResumeState: RNG states and data position in every checkpoint (exact `--ckpt_path last` resumes);
        # AtomicCheckpointIO: a kill while a checkpoint is written leaves the previous file intact
        trainer_defaults={"inference_mode": False, "callbacks": [WandbResults(), ResumeState()],
                          "plugins": [{"class_path": "robust.callbacks.checkpoint_io.AtomicCheckpointIO"}]},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=None if args is None else list(args),
        run=run,
        parser_kwargs={"prog": "robust", "exit_on_error": False},
    )


@contextmanager
def quiet_framework() -> Iterator[None]:
    """Inside the block, Lightning's info lines (devices, tips, model summary, checkpoint restores) and
    the warnings Lightning raises, or torch raises about its own deprecations, are not shown."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class PhaseProgress(pl.Callback):
    """One progress bar per phase, in place of Lightning's per-step bars: training over epochs (with
    the latest validation figures) and testing over batches. Reads the trainer's state only."""

    def __init__(self, name: str = "") -> None:
        self.name = f"{name} " if name else ""
        self.bar: Any = None

    def _open(self, trainer: pl.Trainer, desc: str, total: int | None, initial: int = 0, unit: str = "it") -> None:
        from tqdm.auto import tqdm

        if trainer.is_global_zero:
            self.bar = tqdm(total=total, initial=initial, desc=f"{self.name}{desc}", unit=unit, dynamic_ncols=True)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self._open(trainer, "training", epochs, initial=trainer.current_epoch, unit="epoch")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            shown = {k.removeprefix("val/"): f"{float(v):.3f}" for k, v in trainer.callback_metrics.items()
                     if k.startswith("val/")}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._open(trainer, "testing", int(sum(trainer.num_test_batches)), unit="batch")

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
