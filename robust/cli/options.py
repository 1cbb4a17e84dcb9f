"""The options, loaders and run lifecycle every measuring command shares (evaluate, certify, audit, export).

Nothing here imports torch when the module loads, so ``robust <command> --help`` starts in a blink;
torch comes with the first loader or check that needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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
    except RecursionError:
        raise UsageError(f"{name} is nested too deeply to be settings ({len(text)} characters)") from None
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
    data.add_argument("--npz", help="an .npz with x_test/y_test (--split val: x_val/y_val, else the part carved "
                                    "from x_train/y_train) or x/y (all of it, --split test); images uint8 0..255 "
                                    "or floats in [0, 1], labels 0..classes-1")
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
    run.add_argument("--n-examples", type=int, help=f"{verb} the first N examples of the split (all of them "
                                                    "when it has fewer, with a note)")
    run.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (where available); "
                                                      "auto: cuda when available, else cpu")
    run.add_argument("--out", default=out, help="output folder")
    if fresh:
        run.add_argument("--fresh", action="store_true", help="discard a resume state left in --out by another run")
    run.add_argument("--wandb-project", help="log the report to a wandb run in this project (offline unless "
                                             "wandb is configured online)")
    run.add_argument("--no-wandb", action="store_true", help="no wandb run (the default without --wandb-project)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return run


MAX_BATCH = 2**31 - 1
"""The largest batch size (torch's kernels index batches with 32-bit integers)."""
SEED_RANGE = (0, 2**32 - 1)
"""Seeds every generator takes (numpy's and Lightning's are 32-bit)."""


def check_options(args: argparse.Namespace) -> None:
    """Refuse bad shared options with a one-line message, before any data or model is loaded:
    counts, the seed, the device, the output folder and the wandb project (only those the command has)."""
    for name in ("n_examples", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None and batch_size > MAX_BATCH:
        raise UsageError(f"--batch-size must be at most {MAX_BATCH}, got {batch_size}")
    seed = getattr(args, "seed", None)
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UsageError(f"--seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed}")
    if getattr(args, "device", None) is not None:
        resolve_device(args.device)
    if getattr(args, "out", None) is not None:
        check_out(args.out)
    if hasattr(args, "wandb_project") and hasattr(args, "no_wandb"):
        wandb_project(args)


def device_choices() -> str:
    """The ``--device`` values that can run here, for a message."""
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        choices += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    if torch.backends.mps.is_available():
        choices.append("mps")
    return ", ".join(choices)


def resolve_device(text: str) -> torch.device:
    """The device ``--device text`` names (``auto``: cuda when available, else cpu), refused with one
    line when nothing can run there (``meta``, an accelerator this machine lacks, a CUDA index past the
    last GPU, a malformed name)."""
    import torch

    if text in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(text))
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {text!r} is not a device name; choose one of {device_choices()}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here; choose one of {device_choices()}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"choose one of {device_choices()}")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise UsageError(f"--device {text}: no model can run on {device.type!r} devices here; "
                     f"choose one of {device_choices()}")


def check_out(value: str | Path, option: str = "--out") -> Path:
    """``value`` as an output folder that exists or can be made, and can be written: refused with one
    line when it is a file, lies under a file, or its nearest existing folder is not writable. Creates
    nothing (a write test in that folder is removed at once)."""
    if "\0" in str(value):
        raise UsageError(f"{option} {value!r} holds a NUL character; give a folder path")
    out = Path(value)
    try:
        if out.is_symlink() and not out.exists():
            raise UsageError(f"{option} {value} is a link to nothing; give a folder")
        if out.exists() and not out.is_dir():
            raise UsageError(f"{option} {value} is a file, not a folder; give a new or existing folder")
        target = out.absolute()
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise UsageError(f"{option} {value}: {target} is a file, so no folder can be made under it")
        os.rmdir(tempfile.mkdtemp(prefix=".robust-write-check-", dir=target))
    except OSError as err:
        raise UsageError(f"{option} {value}: cannot write there ({err.strerror or err})") from None
    except ValueError as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"{option} {value!r} is not a usable path ({err})") from None
    return out


def check_run_arguments(args: argparse.Namespace) -> torch.device:
    """Refuse bad shared options with a one-line message; return the device to run on."""
    from robust.base.runtime import fast_cuda

    check_options(args)
    device = resolve_device(args.device)
    args.device = str(device)
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


WANDB_FORBIDDEN = frozenset("/\\#?%:")
"""Characters wandb refuses in a project name."""


def wandb_project(args: argparse.Namespace) -> str | None:
    """The project to log to, refusing ``--wandb-project`` together with ``--no-wandb``."""
    if args.wandb_project and args.no_wandb:
        raise UsageError("give --wandb-project or --no-wandb, not both")
    project = None if args.no_wandb else args.wandb_project
    if project:
        bad = sorted({c for c in project if c in WANDB_FORBIDDEN or not c.isprintable()})
        if bad or len(project) > 128:
            raise UsageError(f"--wandb-project {project!r} is not a wandb project name: at most 128 printable "
                             f"characters, none of {' '.join(sorted(WANDB_FORBIDDEN))}")
    return project


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
        check_out(out)
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


def load_model(args: argparse.Namespace, num_classes: int | None, image_shape: tuple[int, ...] | None = None
               ) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, threat or None, training method or None)`` from ``--checkpoint`` or ``--model``/``--weights``.
    ``image_shape`` ``(C, H, W)``: the data's images, which a ``--model`` must be built for."""
    if bool(args.checkpoint) == bool(args.model):
        raise UsageError("give exactly one of --checkpoint or --model")
    if args.checkpoint:
        if args.weights or str(args.model_args).strip() != "{}":
            raise UsageError("--weights and --model-args go with --model; a --checkpoint carries its model and weights")
        from robust.module import RobustClassifier

        # refuses pickled code and class paths outside the allowlist before Lightning sees the file
        module = RobustClassifier.load_from_checkpoint(Path(args.checkpoint), map_location="cpu")
        return module.model, module.eval_threat, module.method
    from robust.models import create
    from robust.models.registry import check_model_arguments

    if num_classes is None:
        raise UsageError("--model needs data to know the number of classes")
    kwargs = json_arg(args.model_args, "--model-args")
    check_model_arguments(args.model, kwargs)
    if image_shape is not None:
        _check_model_shape(args.model, kwargs, image_shape)
    model = create(args.model, num_classes, **kwargs)
    if args.weights:
        from robust.base.safe_load import load_weights_only, state_dict_mismatch
        from robust.module import CheckpointError

        path = Path(args.weights)
        state = load_weights_only(path, "weights file")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = {k.removeprefix("model."): v for k, v in state["state_dict"].items()
                     if isinstance(k, str) and k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError, ValueError) as err:
            why = state_dict_mismatch(model.state_dict(), state) or str(err).splitlines()[0]
            raise CheckpointError(f"{path}: does not fit {args.model} ({why})") from None
    else:
        print(f"{args.prog}: warning: --model without --weights measures a randomly initialised network",
              file=sys.stderr)
    return model, None, None


def _check_model_shape(name: str, kwargs: dict[str, Any], image_shape: tuple[int, ...]) -> None:
    """Refuse, before building it, a model whose ``in_channels``/``input_size`` (given or default) differ
    from the data's images, with the ``--model-args`` that fit."""
    from robust.models.registry import model_arguments

    params = model_arguments(name)
    data = {"in_channels": image_shape[0], "input_size": image_shape[-1]}
    wants = {}
    for key in data:
        param = params.get(key)
        value = kwargs.get(key, None if param is None else param.default)
        if isinstance(value, int) and not isinstance(value, bool):
            wants[key] = value
    wrong = [k for k, v in wants.items() if v != data[k]]
    if wrong:
        told = ", ".join(f"{k}={wants[k]}" + ("" if k in kwargs else " by default") for k in wrong)
        fix = json.dumps({**kwargs, **{k: data[k] for k in wants}})
        raise UsageError(f"--model {name} is built for {told}, but the data's images are "
                         f"{'x'.join(map(str, image_shape))}: pass --model-args '{fix}'")


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser``'s arguments, with ``args.prog`` (the command's name, for warnings) and ``args.explicit``
    (the options whose value differs from their default) set."""
    args = parser.parse_args(argv)
    args.prog = parser.prog
    args.explicit = {k for k, v in vars(args).items() if k != "prog" and v != parser.get_default(k)}
    return args


def load_source(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str, torch.nn.Module, Any, Any]:
    """``(x, y, data description, model, the checkpoint's threat or None, its training method or None)``
    from the data options and the model options.

    The shared options are checked first (:func:`check_options`); the model is then probed on one
    image (:func:`robust.base.runtime.check_fits`), so a model that does not fit the data is refused
    before any measuring. ``--n-examples`` above the split's size is lowered to it, with a note."""
    from robust.base.runtime import check_fits

    check_options(args)
    x, y, num_classes, description = load_data(args)
    model, threat, method = load_model(args, num_classes, tuple(x.shape[1:]))
    check_fits(model, x, num_classes if getattr(args, "exact_classes", True) else None, labels=y, data=description)
    n = getattr(args, "n_examples", None)
    if n is not None and n > len(y):
        if "n_examples" in getattr(args, "explicit", {"n_examples"}):
            print(f"{getattr(args, 'prog', 'robust')}: note: --n-examples {n} is more than the {len(y)} examples of "
                  f"{description}; using all {len(y)}", file=sys.stderr)
        args.n_examples = len(y)
    return x, y, description, model, threat, method


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """``(x, y, num_classes, description)`` from ``--config``, ``--data`` or ``--npz``, checked
    (:func:`robust.base.batching.check_images`: float images in [0, 1], one label each, not empty).
    Sets ``args.exact_classes``: whether ``num_classes`` is the data set's own (not inferred from labels)."""
    from robust.base.batching import check_images

    given = [a for a in ("config", "data", "npz") if getattr(args, a)]
    if len(given) != 1:
        raise UsageError("give exactly one of --config, --data or --npz")
    if args.data_root:
        _check_data_root(args)
    args.dataset_name = (args.data or (Path(args.npz).stem if args.npz else None) or "").lower() or None
    if args.npz:
        from robust.data import Npz

        dm = Npz(args.npz)
        x, y, description = _npz_split(dm, args.npz, args.split)
    else:
        dm = _config_datamodule(args) if args.config else _named_datamodule(args)
        dm.setup("test" if args.split == "test" else "fit")
        x, y = dm.test_tensors() if args.split == "test" else dm.val_tensors()
        description = f"{type(dm).__name__} ({args.split} split)"
        if getattr(dm, "source", None):
            description += f", {dm.source}"  # which copy of the data set (GTSRB: offline copy or torchvision)
    args.exact_classes = not getattr(dm, "classes_inferred", False)
    if len(y) == 0:
        raise UsageError(f"{description} holds no examples")
    try:
        check_images(x, y)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{description}: {err}") from None
    return x, y, dm.num_classes, description


def _check_data_root(args: argparse.Namespace) -> None:
    root = Path(args.data_root)
    if not (args.data or args.config):
        raise UsageError("--data-root goes with --data or --config (an --npz names its file itself)")
    if root.exists() and not root.is_dir():
        raise UsageError(f"--data-root {args.data_root} is a file, not a folder; give the folder that holds "
                         "(or will hold) the data set's files")
    if args.data:
        from robust.data.registry import datamodule_arguments, list_datamodules

        key = args.data.lower().replace("-", "_")
        if key in list_datamodules() and "root" not in datamodule_arguments(key):
            raise UsageError(f"--data-root does not apply to --data {args.data}, which reads no files from a folder")


def _named_datamodule(args: argparse.Namespace) -> Any:
    from robust.data import create_datamodule

    if args.data.lower() == "npz":
        raise UsageError("--data npz needs a file: give --npz FILE instead")
    return create_datamodule(args.data, **({"root": args.data_root} if args.data_root else {}))


def _config_datamodule(args: argparse.Namespace) -> Any:
    """The data module of the recipe ``--config`` (its ``data:`` section), with ``--data-root`` as its root."""
    import yaml

    from robust.base.spec import build

    path = Path(args.config)
    if path.is_dir():
        raise UsageError(f"--config {path} is a folder; give a recipe YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path.resolve()}")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a YAML recipe ({str(err).splitlines()[0]})") from None
    spec = recipe.get("data") if isinstance(recipe, dict) else None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise UsageError(f"{path}: has no data: section with a class_path")
    if args.data_root:
        init_args = spec.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise UsageError(f"{path}: data.init_args must be a mapping")
        spec = {**spec, "init_args": {**init_args, "root": args.data_root}}
    dm = build(spec, role="data")
    args.dataset_name = type(dm).__name__.lower()
    return dm


def _npz_split(dm: Any, path: str, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The examples an ``--npz`` gives to ``--split``: a file of ``x``/``y`` is a test set, measured whole;
    a file of per-split arrays gives ``x_test``/``y_test`` or ``x_val``/``y_val`` (else the validation
    part carved from ``x_train``)."""
    if dm.has_split("all"):
        if split != "test":
            raise UsageError(f"--split {split}: {dm.file} holds x/y, which --split test measures whole; for a "
                             f"{split} split store x_{split}/y_{split} (and x_test/y_test) instead")
        return (*dm.split_tensors("all"), f"npz {path} (all of x/y)")
    x, y = dm.split_tensors(split)
    return x, y, f"npz {path} ({dm.split_keys(split)})"
