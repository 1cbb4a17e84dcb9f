"""Load checkpoints and weight files from elsewhere without running code from them.

``torch.load`` of a pickle calls whatever the pickle names, so every ``.ckpt``/``.pt`` is read
with ``weights_only=True`` (tensors and plain data only). A checkpoint's hyperparameters are
then checked against the allowlist of :mod:`robust.base.spec` before Lightning (or jsonargparse,
which Lightning hands them to when a checkpoint names an ``_instantiator``) imports anything.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from robust.base import spec as specs
from robust.base.errors import InputError

_BLOCKED = re.compile(r"(unsupported GLOBAL [^\s]+|Unsupported global: [^\s]+|Unsupported operand [^\s]+)",
                      re.IGNORECASE)


class UnsafeFileError(InputError, ValueError):
    """A file that cannot be loaded as tensors and plain data: it needs code to load, or it is
    not a PyTorch file at all."""


def _reason(exc: BaseException) -> str:
    match = _BLOCKED.search(str(exc))
    return f" ({match.group(1).rstrip('.')})" if match else ""


def load_weights_only(path: Any, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    A pickle that names anything but tensors and plain data is refused with
    :class:`UnsafeFileError` and its payload never runs; a missing file raises
    ``FileNotFoundError``; a truncated or foreign file raises :class:`UnsafeFileError`.
    ``path`` may also be a binary file object (it is rewound afterwards).
    """
    source: Any = path
    if isinstance(path, (str, os.PathLike)):
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{what} not found: {file.resolve()}")
        source = file
        # zip checkpoints are memory-mapped: the check does not read the tensors
        mmap = zipfile.is_zipfile(file)
    else:
        mmap = False
    start = source.tell() if hasattr(source, "tell") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; the refusal below says it all
            return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and _reason(exc):
            raise UnsafeFileError(
                f"{path}: refused to load this {what}: it asks to run code{_reason(exc)}; only tensors and plain "
                f"data are loaded (weights_only=True), so it was not executed"
            ) from None
        raise UnsafeFileError(f"{path}: not a PyTorch {what} (it does not load with weights_only=True)") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeFileError(f"{path}: not a PyTorch {what}, or a truncated one ({first[:160]})") from None
    finally:
        if start is not None and hasattr(source, "seek"):
            source.seek(start)


def check_hyper_parameters(hparams: Any, source: Any = "checkpoint") -> None:
    """Refuse hyperparameters that name a ``class_path`` outside the allowlist, importing nothing."""
    if not isinstance(hparams, dict):
        return
    try:
        specs.check_tree(hparams, "hyper_parameters")
    except specs.SpecError as exc:
        raise specs.SpecError(f"{source}: {exc}") from None


def check_checkpoint(path: Any) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its hyperparameters; return it.

    Call this before handing the file to Lightning: it refuses pickled code and
    hyperparameters naming classes outside the allowlist before anything is imported.
    """
    checkpoint = load_weights_only(path, "checkpoint")
    if not isinstance(checkpoint, dict):
        raise UnsafeFileError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, not a dict)")
    check_hyper_parameters(checkpoint.get("hyper_parameters"), path)
    return checkpoint
