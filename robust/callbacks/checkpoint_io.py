"""Checkpoints written atomically: a crash while saving leaves the previous file intact.

Lightning's own ``TorchCheckpointIO`` serialises to memory, then lets fsspec write a temporary
file made by ``tempfile.mkstemp()`` in the system temporary folder and ``shutil.move`` it onto the
target. When that folder is on another file system than the run (a tmpfs ``/tmp``, a network
checkpoint folder) the move is a copy onto the target: a process killed during the copy leaves a
truncated ``last.ckpt``, and nothing is fsynced, so a power loss can leave an empty one.

:class:`AtomicCheckpointIO` writes to a temporary file in the target's own folder, fsyncs it,
``os.replace``\\ s it onto the target (atomic on POSIX and Windows within one file system) and
fsyncs the folder (:func:`robust.base.state.atomic_save`, the one atomic write of the package).
Remote paths (``s3://``, ...) keep Lightning's transaction. ``robust fit`` uses it; with a
``Trainer`` of your own, pass ``plugins=[AtomicCheckpointIO()]``.

Every local checkpoint the trainer loads through it (``--ckpt_path`` and whatever Lightning resolves
``last``, ``best`` or ``hpc`` to) is first verified like any file from elsewhere
(:func:`robust.base.safe_load.check_checkpoint`: weights only, CRCs, finite weights, hyperparameters
within the roles of a model, a method and a threat model).
"""

from __future__ import annotations

from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from robust.base.safe_load import check_checkpoint
from robust.base.state import atomic_save


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
        atomic_save(checkpoint, path)

    @override
    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        if isinstance(get_filesystem(path), LocalFileSystem) and weights_only is not False:
            check_checkpoint(path)
        where = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=weights_only, **where)
