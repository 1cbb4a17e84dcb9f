"""The LightningCLI behind ``robust fit|validate|test|predict`` and the quickstart: :func:`build_cli`.

Configs are checked before jsonargparse reads them (YAML only; the ``model:`` section within the
narrow roles of :func:`robust.base.spec.check_recipe`, the trainer's class paths inside the config
allowlist); options are never abbreviated (``--ckpt_pat`` is an error, not ``--ckpt_path``); the
``--ckpt_path`` file, with ``last`` resolved to the file it means, is verified and its
hyperparameters checked before LightningCLI reads them; ``--results`` must be writable before
anything runs. :func:`quiet_framework` with :class:`PhaseProgress` give a console of one progress
bar per phase.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from robust.base.errors import InputError
from robust.base.state import atomic_write_text
from robust.callbacks import ResumeState, WandbResults
from robust.data.base import RobustDataModule
from robust.module import RobustClassifier


def newest_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` below ``root`` (temporary files of an interrupted
    write start with a dot and are skipped), or ``None``."""
    found = [p for p in Path(root).rglob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


class UnwritableError(InputError, ValueError):
    """An output path that cannot be written."""


def _config_values(args: Sequence[str]) -> list[str]:
    """The values of ``--config``/``-c`` in ``args`` (each a file or an inline YAML/JSON string),
    in every spelling argparse accepts (``--config X``, ``--config=X``, ``-c X``, ``-cX``, ``-c=X``)."""
    values = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith("--config="):
            values.append(arg.split("=", 1)[1])
        elif arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
            values.append(arg[2:].removeprefix("="))
    return values


def check_configs(args: Sequence[str]) -> None:
    """Refuse a config (file or inline) that is not YAML, or that names a ``class_path`` outside the
    allowlist, before jsonargparse imports anything from it."""
    import yaml

    from robust.base.spec import SpecError, check_recipe

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
            check_recipe(config)
        except SpecError as exc:
            raise SpecError(f"config {value if is_file else '(inline)'}: {exc}") from None


LIGHTNING_CKPT_PATHS = ("best", "hpc", "registry")


def resolve_ckpt_path(value: Any, config: Any) -> Path | None:
    """The file ``--ckpt_path`` means: ``last`` is the newest ``last*.ckpt`` below the run's root folder
    (``trainer.default_root_dir``, else the working folder) or a ModelCheckpoint's ``dirpath``;
    ``None`` for no checkpoint, for ``last`` when there is none yet, and for Lightning's other names
    (``best``, ``hpc``, ``registry``: the files they resolve to are checked when Lightning loads them,
    by :class:`robust.callbacks.checkpoint_io.AtomicCheckpointIO`)."""
    if value in (None, "", "null", "None"):
        return None
    text = str(value)
    if text in LIGHTNING_CKPT_PATHS and not Path(text).is_file():
        return None
    if text != "last" or Path(text).is_file():
        return Path(text)
    trainer = (config.get("trainer") if config is not None else None) or {}
    roots = [Path(trainer.get("default_root_dir") or os.getcwd())]
    for callback in trainer.get("callbacks") or []:
        dirpath = (callback.get("init_args") or {}).get("dirpath") if hasattr(callback, "get") else None
        if dirpath:
            roots.append(Path(dirpath))
    found = [p for p in (newest_last_checkpoint(root) for root in roots if root.is_dir()) if p is not None]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def check_writable(path: Any, option: str) -> Path:
    """Refuse, before anything runs, an output file that cannot be written: a folder, a path below a
    file, or a folder where no file can be made (tried with a temporary file, removed at once)."""
    target = Path(str(path).removeprefix("file://"))
    if target.is_dir():
        raise UnwritableError(f"{option} {target}: is a folder; give a file name")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        with tempfile.TemporaryFile(dir=parent):
            pass
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(f"{target} is read-only")
    except OSError as exc:
        reason = exc.strerror if exc.strerror else str(exc)
        raise UnwritableError(f"{option} {target}: cannot be written ({reason}); give a path in a writable "
                              f"folder") from None
    return target


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
        self._check_inputs()

    def _check_inputs(self) -> None:
        """``--results`` writable, and the ``--ckpt_path`` file (``last`` resolved) verified and its
        hyperparameters checked, before LightningCLI merges them into the model's config."""
        from robust.base.safe_load import check_checkpoint

        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if config.get("results"):
            check_writable(config["results"], "--results")
        given = config.get("ckpt_path")
        path = resolve_ckpt_path(given, config)
        self.checkpoint: tuple[Path, dict[str, Any]] | None = None
        if path is None:
            return
        self.checkpoint = (path, check_checkpoint(path))
        if given == "last":
            print(f"{'resuming from' if subcommand == 'fit' else 'checkpoint'} {path}", file=sys.stderr)
        config["ckpt_path"] = str(path)

    def _check_before_run(self, stage: str) -> None:
        """Before the trainer starts (and writes anything): data that cannot be read, a model that does
        not fit the data (class count, image shape), and ``--ckpt_path`` weights that do not fit the
        model, each one line. (A data module's ``setup`` reads each split once; the trainer's call
        finds them read.)"""
        from robust.base.safe_load import StateDictMismatchError, state_dict_mismatch

        if not isinstance(self.model, RobustClassifier):
            return
        if isinstance(self.datamodule, RobustDataModule):
            self.datamodule.setup(stage)
        self.model.check_data(self.datamodule)
        if self.checkpoint is None:
            return
        path, checkpoint = self.checkpoint
        problem = state_dict_mismatch(self.model.state_dict(), checkpoint.get("state_dict"))
        if problem is not None:
            raise StateDictMismatchError(
                f"{path}: the weights do not fit the model ({type(self.model.model).__name__}): {problem}")

    def before_instantiate_classes(self) -> None:
        # One seed: the data order follows seed_everything (an int by now: LightningCLI has drawn
        # one if it was true), as initialisation, random starts and noise do.
        from robust.base.spec import check_recipe

        config = self.config[self.subcommand] if self.subcommand else self.config
        # the model and data as parsed: config files, command-line values and --ckpt_path hyperparameters
        # together, checked before anything is built from them
        parsed = {key: config[key].as_dict() if isinstance(config.get(key), Namespace) else config.get(key)
                  for key in ("model", "data") if key in config}
        check_recipe(parsed)
        seed = config.get("seed_everything")
        init_args = (config.get("data") or {}).get("init_args")
        if isinstance(seed, int) and not isinstance(seed, bool) and init_args is not None and "seed" in init_args:
            init_args["seed"] = seed

    # --ckpt_path last is resolved when the arguments are parsed (:func:`resolve_ckpt_path`): the newest
    # last*.ckpt anywhere under the run's root folder. Lightning looks only in the checkpoint callback's
    # folder, which with the recipes' wandb logger is named after the new run's id, so a rerun of the same
    # command would not find it.
    def before_fit(self) -> None:
        self._check_before_run("fit")

    def before_validate(self) -> None:
        self._check_before_run("validate")

    def before_test(self) -> None:
        self._check_before_run("test")

    def before_predict(self) -> None:
        self._check_before_run("predict")

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
        # allow_abbrev=False: ``--ckpt_pat``/``--conf`` are errors, never a way around the checks above
        parser_kwargs={"prog": "robust", "exit_on_error": False, "allow_abbrev": False},
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
