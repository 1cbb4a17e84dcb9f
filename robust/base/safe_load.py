"""Load checkpoints and weight files from elsewhere without running code from them.

``torch.load`` of a pickle calls whatever the pickle names, so every ``.ckpt``/``.pt`` is read
with ``weights_only=True`` (tensors and plain data only). Before anything is computed from a file,
its zip records are checked against their CRC-32 (torch's memory-mapped loading does not) and its
weights must be finite. A checkpoint's hyperparameters are then checked against the narrow roles
of :func:`robust.base.spec.check_stored` before Lightning (or jsonargparse, which Lightning hands
them to when a checkpoint names an ``_instantiator``) imports or builds anything.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
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


class CorruptFileError(InputError, ValueError):
    """A file whose bytes changed after it was written (a failed CRC) or whose weights are not finite."""


class StateDictMismatchError(InputError, ValueError):
    """Weights that do not fit the model they are loaded into."""


def _reason(exc: BaseException) -> str:
    match = _BLOCKED.search(str(exc))
    return f" ({match.group(1).rstrip('.')})" if match else ""


def load_weights_only(path: Any, what: str = "checkpoint", map_location: Any = "cpu", verify: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    A pickle that names anything but tensors and plain data is refused with
    :class:`UnsafeFileError` and its payload never runs; a missing file raises
    ``FileNotFoundError``; a truncated or foreign file raises :class:`UnsafeFileError`.
    With ``verify`` a zip record that fails its CRC-32 check, or a non-finite weight, raises
    :class:`CorruptFileError` naming the record or the tensor (:func:`verify_zip`, :func:`check_finite`).
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
        if verify:
            verify_zip(source, path, what)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; the refusal below says it all
            loaded = torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and _reason(exc):
            raise UnsafeFileError(
                f"{path}: refused to load this {what}: it asks to run code{_reason(exc)}; only tensors and plain "
                f"data are loaded (weights_only=True), so it was not executed"
            ) from None
        raise UnsafeFileError(f"{path}: not a PyTorch {what} (it does not load with weights_only=True)") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeFileError(f"{path}: not a PyTorch {what}, or a truncated one ({first[:160]})") from None
    finally:
        if start is not None and hasattr(source, "seek"):
            source.seek(start)
    if verify:
        weights = loaded.get("state_dict") if isinstance(loaded, Mapping) and "state_dict" in loaded else loaded
        check_finite(weights, path, what)
    return loaded


def verify_zip(source: Any, name: Any = None, what: str = "checkpoint") -> None:
    """Check every record of a zip-format PyTorch file against its CRC-32 (reading it once); a file that
    is not a zip (torch's legacy format) has no checksums and passes. ``source``: a path or a
    seekable binary file object (left at the position it had)."""
    name = source if name is None else name
    position = source.tell() if hasattr(source, "tell") else None
    try:
        if not zipfile.is_zipfile(source):
            return
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as member:
                        while member.read(1 << 20):
                            pass
                except zipfile.BadZipFile as exc:
                    if "CRC" not in str(exc):
                        raise
                    raise CorruptFileError(
                        f"{name}: the {what} is corrupt: record {info.filename!r} fails its CRC-32 check (its "
                        f"bytes changed after it was written); it was not loaded") from None
    finally:
        if position is not None:
            source.seek(position)


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix or "tensor", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{prefix}[{i}]")


def check_finite(weights: Any, source: Any = "weights", what: str = "checkpoint") -> None:
    """Raise :class:`CorruptFileError` naming the first floating-point tensor in ``weights`` (a state
    dict, or any nest of mappings and lists) with NaN or infinite values, and how many it has."""
    bad = []
    for name, tensor in _tensors(weights):
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad.append((name, int((~finite).sum()), tensor.numel()))
    if bad:
        name, count, total = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CorruptFileError(
            f"{source}: {name} has {count} non-finite values (NaN or inf) of {total}{more}: the {what}'s weights "
            f"are corrupt or its training diverged; nothing was computed from it")


class NonFiniteWeightsError(InputError, ValueError):
    """A model with a NaN or infinite parameter or buffer (a corrupt checkpoint or a diverged training)."""


def check_finite_weights(model: torch.nn.Module, verb: str = "use") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first parameter or buffer of ``model`` that holds
    a NaN or infinite value (or no values at all: the meta device). A NaN weight makes every logit NaN;
    ``argmax`` then picks class 0 everywhere and a measurement looks plausible. ``verb`` ends the
    message (``"certify"``: "... certify another one")."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        if tensor.device.type == "meta":
            raise NonFiniteWeightsError(f"model tensor {name!r} is on the meta device (it holds no values); "
                                        "load real weights first")
        bad = int((~torch.isfinite(tensor.detach())).sum())
        if bad:
            raise NonFiniteWeightsError(
                f"model tensor {name!r} is not finite ({bad} of {tensor.numel()} values are NaN or inf): the "
                f"checkpoint is corrupt or its training diverged; {verb} another one")


def state_dict_mismatch(expected: Mapping[str, Any], given: Any, shown: int = 3) -> str | None:
    """What keeps ``given`` (a state dict) from loading into a model whose ``state_dict()`` is
    ``expected``: missing and unexpected keys and shape mismatches, the first ``shown`` of each,
    on one line; ``None`` when it fits."""
    if not isinstance(given, Mapping):
        return f"it holds a {type(given).__name__}, not a state dict of named tensors"
    if not given:
        return f"its state dict is empty (the model has {len(expected)} entries, e.g. {next(iter(expected), '-')})"

    def first(names: list[str]) -> str:
        more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
        return ", ".join(names[:shown]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {list(given[k].shape)} in the file, {list(expected[k].shape)} in the model"
              for k in expected if k in given and isinstance(given[k], torch.Tensor)
              and isinstance(expected[k], torch.Tensor) and given[k].shape != expected[k].shape]
    parts = []
    if shapes:
        parts.append(f"shape mismatch {first(shapes)}")
    if missing:
        parts.append(f"missing keys {first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {first(unexpected)}")
    return "; ".join(parts) or None


def check_hyper_parameters(hparams: Any, source: Any = "checkpoint", where: str = "hyper_parameters") -> None:
    """Refuse hyperparameters that name anything a model, method or threat model may not be
    (:func:`robust.base.spec.check_stored`), importing nothing."""
    if not isinstance(hparams, Mapping):
        return
    try:
        specs.check_stored(hparams, where)
    except specs.SpecError as exc:
        raise specs.SpecError(f"{source}: {exc}") from None


def check_checkpoint(path: Any) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, verify it (CRCs, finite weights) and check its
    hyperparameters; return it.

    Call this before handing the file to Lightning: it refuses pickled code, corrupt files and
    hyperparameters naming anything but a model, a method or a threat model, before anything is
    imported or built.
    """
    checkpoint = load_weights_only(path, "checkpoint")
    if not isinstance(checkpoint, dict):
        raise UnsafeFileError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, not a dict)")
    check_hyper_parameters(checkpoint.get("hyper_parameters"), path)
    return checkpoint
