"""The options, loaders and run lifecycle every measuring command shares (evaluate, certify, audit, export).

Nothing here imports torch when the module loads, so ``robust <command> --help`` starts in a blink;
torch comes with the first loader or check that needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust.base.errors import InputError

if TYPE_CHECKING:
    import torch

    from robust.base.threat import ThreatModel


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the ``robust`` error format: one line on stderr, ``robust: error: ...``, exit 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"robust: error: {message} (see `{self.prog} --help`)\n")


class UsageError(InputError, ValueError):
    """Bad command-line arguments (reported on one line, exit status 2)."""


def json_arg(text: str, name: str) -> dict[str, Any]:
    """The JSON object given to option ``name`` (e.g. ``--attack-options``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{name} must be JSON, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, got {text!r}")
    return value


def attack_names() -> str:
    """The registry's evaluation attacks, comma-separated, for a help text (reads no torch)."""
    from robust.attacks.registry import list_attacks

    return ", ".join(list_attacks())


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The model (``--checkpoint`` or ``--model``) and data (``--config``, ``--data`` or ``--npz``) options."""
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", help="a robust checkpoint (.ckpt), loaded with weights_only=True")
    src.add_argument("--model", help="a registry model name (robust.models.list_models()) or torchvision:<name>")
    src.add_argument("--weights", help="with --model: a state_dict file (torch.save(model.state_dict()))")
    src.add_argument("--model-args", default="{}", help="with --model: JSON keyword arguments of the constructor")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--config", help="a recipe YAML: its data: section is used")
    data.add_argument("--data", help="a data module name (digits, mnist, mnist10k, cifar10, gtsrb, ...)")
    data.add_argument("--npz", help="an .npz with x_test/y_test or x/y (uint8 0..255 or floats in [0, 1])")
    data.add_argument("--data-root", help="root folder for --data (where it looks for or stores the files)")
    data.add_argument("--split", choices=("test", "val"), default="test", help="which split to evaluate")


def add_threat_arguments(p: Any, norm_help: str, eps_help: str) -> None:
    """``--norm`` and ``--eps``; :func:`resolve_threat` fills what is not given from the checkpoint."""
    p.add_argument("--norm", choices=("linf", "l2"), help=norm_help)
    p.add_argument("--eps", help=eps_help)


def add_run_arguments(p: argparse.ArgumentParser, verb: str, out: str, batch_size: int | None = 256,
                      batch_help: str | None = None, fresh: bool = True) -> Any:
    """The options every measuring command shares: examples, batch size, seed, device, output
    folder, resume state (``fresh``), wandb and progress bars. Returns the argument group."""
    run = p.add_argument_group("run")
    run.add_argument("--n-examples", type=int, help=f"{verb} the first N examples of the split")
    run.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="cpu, cuda or cuda:N; auto: cuda when available, else cpu")
    run.add_argument("--out", default=out, help="output folder")
    if fresh:
        run.add_argument("--fresh", action="store_true", help="discard a resume state left in --out by another run")
    run.add_argument("--wandb-project", help="log the report to a wandb run in this project (offline unless "
                                             "wandb is configured online)")
    run.add_argument("--no-wandb", action="store_true", help="no wandb run (the default without --wandb-project)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return run


def check_run_arguments(args: argparse.Namespace) -> torch.device:
    """Refuse bad shared options with a one-line message; return the device to run on."""
    import torch

    from robust.base.runtime import fast_cuda

    for name in ("n_examples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.device in (None, "auto"):
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available")
    fast_cuda(device)
    return device


def resolve_threats(args: argparse.Namespace, ckpt_threat: ThreatModel | None, norm: str | None = None
                    ) -> list[ThreatModel]:
    """The threat models to measure at: ``--norm``/``--eps`` where given (``--eps`` may list several
    radii, comma-separated), the checkpoint's evaluation threat for what is not.

    ``norm`` fixes the norm of a command without ``--norm`` (certify's bound methods: ``"linf"``);
    the checkpoint's radius then counts only when its threat has that norm. Without ``--eps`` the
    checkpoint's radius is kept even under another ``--norm``.
    """
    from robust.base.threat import ThreatModel

    given = norm or getattr(args, "norm", None)
    if args.eps is None:
        if ckpt_threat is None or (norm is not None and ckpt_threat.norm != norm):
            if norm is not None:
                from robust.reports.format import NORM_NAMES

                raise UsageError(f"give --eps (this model carries no {NORM_NAMES.get(norm, norm)} threat model)")
            if given is not None:
                raise UsageError("give --eps (this model carries no threat model)")
            raise UsageError("no threat model: give --norm and --eps (this model carries none)")
        return [ThreatModel(given or ckpt_threat.norm, ckpt_threat.eps)]
    values = [v.strip() for v in str(args.eps).split(",") if v.strip()]
    if not values:
        raise UsageError(f"--eps must name a radius, e.g. 8/255, got {args.eps!r}")
    return [ThreatModel(given or (ckpt_threat.norm if ckpt_threat is not None else "linf"), v) for v in values]


def resolve_threat(args: argparse.Namespace, ckpt_threat: ThreatModel | None) -> ThreatModel:
    """The one threat model of a command (:func:`resolve_threats` with a single ``--eps``)."""
    threats = resolve_threats(args, ckpt_threat)
    if len(threats) != 1:
        raise UsageError(f"--eps takes one radius here, got {args.eps!r}")
    return threats[0]


def wandb_project(args: argparse.Namespace) -> str | None:
    """The project to log to, refusing ``--wandb-project`` together with ``--no-wandb``."""
    if args.wandb_project and args.no_wandb:
        raise UsageError("give --wandb-project or --no-wandb, not both")
    return None if args.no_wandb else args.wandb_project


@contextmanager
def wandb_run(args: argparse.Namespace, out: Path, job_type: str, config: dict[str, Any],
              record: dict[str, Any] | None = None) -> Iterator[Any]:
    """The command's wandb run, or ``None`` without ``--wandb-project``: started in ``out`` with
    ``config``, its path written to ``record["wandb_run"]`` (``record`` defaults to ``config``; a
    leaderboard entry reads the path there), finished when the block ends."""
    project = wandb_project(args)
    if not project:
        yield None
        return
    from robust.tracking import finish_run, run_path, start_run

    run = start_run(project, out, job_type, config)
    (config if record is None else record)["wandb_run"] = run_path(run)
    try:
        yield run
    finally:
        finish_run(run)


def resume_state(args: argparse.Namespace, out: Path, name: str, main: bool = True) -> Path:
    """The command's resume state ``out/name``: removed first with ``--fresh``, announced on stderr
    when the run resumes from it. ``main``: this process writes (rank 0 under torchrun)."""
    state = out / name
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if args.fresh:
            state.unlink(missing_ok=True)
        if state.exists():
            print(f"{args.prog}: resuming from {state}", file=sys.stderr)
    return state


def describe_model(args: argparse.Namespace, model: torch.nn.Module, method: Any) -> dict[str, Any]:
    """What a report says about the model and the data: for leaderboard entries."""
    return {"dataset": getattr(args, "dataset_name", None),
            "model": {"architecture": type(model).__name__, "training": None if method is None else repr(method),
                      "source": args.checkpoint or args.model}}


def load_model(args: argparse.Namespace, num_classes: int | None) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, threat or None, training method or None)`` from ``--checkpoint`` or ``--model``/``--weights``."""
    if bool(args.checkpoint) == bool(args.model):
        raise UsageError("give exactly one of --checkpoint or --model")
    if args.checkpoint:
        from robust.module import RobustClassifier

        # refuses pickled code and class paths outside the allowlist before Lightning sees the file
        module = RobustClassifier.load_from_checkpoint(Path(args.checkpoint), map_location="cpu")
        return module.model, module.eval_threat, module.method
    from robust.models import create

    if num_classes is None:
        raise UsageError("--model needs data to know the number of classes")
    model = create(args.model, num_classes, **json_arg(args.model_args, "--model-args"))
    if args.weights:
        from robust.base.safe_load import load_weights_only
        from robust.module import CheckpointError

        path = Path(args.weights)
        state = load_weights_only(path, "weights file")
        if isinstance(state, dict) and "state_dict" in state:
            state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: does not fit {args.model} ({str(err).splitlines()[0]})") from None
    else:
        print(f"{args.prog}: warning: --model without --weights measures a randomly initialised network",
              file=sys.stderr)
    return model, None, None


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser``'s arguments, with ``args.prog`` (the command's name, for warnings) set."""
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return args


def load_source(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str, torch.nn.Module, Any, Any]:
    """``(x, y, data description, model, the checkpoint's threat or None, its training method or None)``
    from the data options and the model options."""
    x, y, num_classes, description = load_data(args)
    model, threat, method = load_model(args, num_classes)
    return x, y, description, model, threat, method


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """``(x, y, num_classes, description)`` from ``--config``, ``--data`` or ``--npz``."""
    given = [a for a in ("config", "data", "npz") if getattr(args, a)]
    if len(given) != 1:
        raise UsageError("give exactly one of --config, --data or --npz")
    args.dataset_name = (args.data or (Path(args.npz).stem if args.npz else None) or "").lower() or None
    if args.npz:
        from robust.data import Npz

        dm = Npz(args.npz)
        if "test" in dm._splits and args.split == "test" and not _only_xy(args.npz):
            x, y = dm.test_tensors()
            return x, y, dm.num_classes, f"npz {args.npz} (x_test)"
        return (*_all_xy(dm), dm.num_classes, f"npz {args.npz} (all of x/y)")
    if args.config:
        import yaml

        from robust.base.spec import build

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path.resolve()}")
        spec = (yaml.safe_load(path.read_text()) or {}).get("data")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise UsageError(f"{path}: has no data: section with a class_path")
        if args.data_root:
            spec = {**spec, "init_args": {**spec.get("init_args", {}), "root": args.data_root}}
        dm = build(spec)
        args.dataset_name = type(dm).__name__.lower()
    else:
        from robust.data import create_datamodule

        dm = create_datamodule(args.data, **({"root": args.data_root} if args.data_root else {}))
    dm.setup("test" if args.split == "test" else "fit")
    x, y = dm.test_tensors() if args.split == "test" else dm.val_tensors()
    return x, y, dm.num_classes, f"{type(dm).__name__} ({args.split} split)"


def _only_xy(path: str) -> bool:
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return "x_test" not in archive.files and "x" in archive.files


def _all_xy(dm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    from robust.data.base import absolute

    file = absolute(dm.path)
    with np.load(file, allow_pickle=False) as archive:
        return dm._images(file, "x", archive["x"]), dm._labels(file, "y", archive["y"], dm.num_classes)
