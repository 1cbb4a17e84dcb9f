"""Durable files: atomic, fsync'd writes, the one resumable-state journal, and fingerprints.

Every file the package writes for later (training checkpoints, reports, resume states) goes
through :func:`atomic_write`: a temporary file in the target's own folder, fsynced, then
``os.replace``\\ d onto the target and the folder fsynced, so a crash leaves the old content or
the complete new one, never a torn file.

A :class:`Journal` is the resume state of long measurements (``robust evaluate``'s batches,
randomized smoothing's examples): a header naming what it belongs to (a ``kind`` and a ``key``
digest of model, data and settings), then one appended frame per finished round, each fsynced.
A process killed mid-append leaves a torn last frame, which the next run drops; a journal written
for anything else is refused with :class:`StateError`. Frames are ``torch.save`` payloads read
back with ``weights_only=True``: tensors and plain data only.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from robust.base.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

TEMP_SUFFIX = ".tmp"
JOURNAL_FORMAT = 2
_FRAME = struct.Struct("<Q")  # payload length, little-endian


class StateError(InputError, ValueError):
    """A resume state that belongs to another run, or is not one of ours."""


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` survive a power loss (a no-op where folders cannot be opened)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of :func:`atomic_write` for ``path`` whose writer is gone."""
    prefix = f".{path.name}."
    try:
        names = list(path.parent.iterdir())
    except OSError:  # a folder that cannot be listed: nothing to tidy
        return
    for stale in names:
        name = stale.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        pid, _, token = name[len(prefix):-len(TEMP_SUFFIX)].rpartition("-")
        if not token or any(c not in "0123456789abcdef" for c in token):
            continue
        if pid and (not pid.isdigit() or _running(int(pid))):  # not ours, or its writer is still at work
            continue
        stale.unlink(missing_ok=True)  # also the .<name>.<hex>.tmp of versions before the pid was in the name


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows has no signal 0 to probe with
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it and rename it onto ``path``.

    The temporary file (``.<name>.<pid>-<hex>.tmp``) is removed when anything fails; ones left by a
    process killed while writing are removed first (never one of a writer that is still running).
    The new file gets the mode the umask gives (as ``open`` would), not ``mkstemp``'s 0600.
    """
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically and durably."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically and durably (training checkpoints use it)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _frame(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    return _FRAME.pack(len(payload)) + payload


def _unframe(payload: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def _read_journal(path: Path, kind: str = "robust") -> tuple[dict[str, Any], dict[int, Any], int]:
    """``(header, rounds, end)``: the header, the merged rounds, and the byte offset after the last
    whole frame (a torn last frame is left out). Refuses a file that is not a journal."""
    data = path.read_bytes()
    frames, end = [], 0
    while end + _FRAME.size <= len(data):
        (length,) = _FRAME.unpack_from(data, end)
        if end + _FRAME.size + length > len(data):
            break
        frames.append((end, data[end + _FRAME.size:end + _FRAME.size + length]))
        end += _FRAME.size + length
    try:
        header = _unframe(frames[0][1]) if frames else None
    except Exception:  # noqa: BLE001 - any unreadable header is refused the same way
        header = None
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise StateError(f"{path}: not a robust {kind} state file; delete it or start again with --fresh")
    rounds: dict[int, Any] = {}
    for number, (offset, payload) in enumerate(frames[1:], start=2):
        try:
            rounds.update(_unframe(payload))
        except Exception:  # noqa: BLE001 - a frame that does not load is corrupt
            if number == len(frames):  # the last one: torn by a kill; left out
                end = offset
                break
            raise StateError(f"{path}: is corrupt at frame {number}; delete it or start again with --fresh") from None
    return header, rounds, end


def read_journal(path: str | os.PathLike) -> tuple[dict[str, Any], dict[int, Any]]:
    """The header and the finished rounds of a journal, without checking what it belongs to."""
    header, rounds, _ = _read_journal(Path(path))
    return header, rounds


class Journal:
    """An append-only resume state at ``path`` for work of one ``kind`` identified by ``key``.

    ``load()`` returns ``{index: record}`` of the rounds already finished (empty for a new file) and
    makes the file ready for appends; ``append({index: record, ...})`` adds one round durably. The
    command deletes the file once the result it feeds is written. ``describe`` names, in the
    refusal message, what a mismatching key covers (e.g. "model, data, threat, attacks, seed").
    """

    def __init__(self, path: str | os.PathLike, kind: str, key: Any, describe: str = "settings") -> None:
        self.path = Path(path)
        self.kind = kind
        self.key = key
        self.describe = describe

    def _refuse(self, why: str) -> StateError:
        return StateError(f"{self.path}: {why}")

    def invalid(self, why: str) -> StateError:
        """The error for a state whose rows fail the caller's checks (``why`` names the row and the value):
        a digest catches accidents, not edits, so what a state claims is checked before it is trusted."""
        return StateError(f"{self.path}: {why}; the state was edited or damaged: delete it or start again with --fresh")

    def load(self) -> dict[int, Any]:
        """The finished rounds; a torn last frame (a kill mid-append) is cut off the file."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write(self.path, lambda handle: handle.write(
                _frame({"format": JOURNAL_FORMAT, "kind": self.kind, "key": self.key})))
            return {}
        header, rounds, end = _read_journal(self.path, self.kind)
        if header.get("kind") != self.kind:
            raise self._refuse(f"is a {header.get('kind')} state, not a {self.kind} state")
        if header.get("key") != self.key:
            old = header.get("key")
            changed = (sorted(k for k in set(old) | set(self.key) if old.get(k) != self.key.get(k))
                       if isinstance(old, dict) and isinstance(self.key, dict) else [])
            raise self._refuse(f"was written by a different {self.kind} (different settings: "
                               f"{', '.join(changed) or self.describe}); delete it, start again with --fresh, "
                               "or pass another state path")
        if end < self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                os.fsync(handle.fileno())
        return rounds

    def append(self, records: dict[int, Any]) -> None:
        with open(self.path, "ab") as handle:
            handle.write(_frame(records))
            handle.flush()
            os.fsync(handle.fileno())


def digest(*parts: bytes | str) -> str:
    """sha256 hex digest of the parts in order."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
    return h.hexdigest()


def fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 over the bytes of the tensors in order (data, labels, weights: what a resume must match)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (float tensors as float32)."""
    return fingerprint(*[t.float() if t.is_floating_point() else t for t in model.state_dict().values()])


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
