"""Checkpoints written atomically: a crash while saving leaves the previous file intact.

Lightning's own ``TorchCheckpointIO`` serialises to memory, then lets fsspec write a temporary
file made by ``tempfile.mkstemp()`` in the system temporary folder and ``shutil.move`` it onto the
target. When that folder is on another file system than the run (a tmpfs ``/tmp``, a network
checkpoint folder) the move is a copy onto the target: a process killed during the copy leaves a
truncated ``last.ckpt``, and nothing is fsynced, so a power loss can leave an empty one.

:class:`AtomicCheckpointIO` writes to a temporary file in the target's own folder, fsyncs it,
``os.replace``\\ s it onto the target (atomic on POSIX and Windows within one file system) and
fsyncs the folder. Remote paths (``s3://``, ...) keep Lightning's transaction. ``robust fit`` uses
it; with a ``Trainer`` of your own, pass ``plugins=[AtomicCheckpointIO()]``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

TEMP_SUFFIX = ".tmp"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is either its old content or the complete new one."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # mode: umask's
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power loss once the folder is synced
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring)."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}")
        atomic_torch_save(checkpoint, path)
