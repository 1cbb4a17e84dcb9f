"""What produced a number: package versions, the device, the model's and the checkpoint's sha256."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust.base.state import file_sha256, model_fingerprint

if TYPE_CHECKING:
    from torch import nn


def versions() -> dict[str, str]:
    """robust, torch, torchattacks and Python versions."""
    import torch
    import torchattacks

    import robust

    return {"robust": getattr(robust, "__version__", "0"), "torch": torch.__version__,
            "torchattacks": torchattacks.__version__, "python": platform.python_version()}


def describe_run(model: nn.Module, checkpoint: str | os.PathLike | None, model_sha256: str | None = None
                 ) -> dict[str, Any]:
    """Versions, device, the model's sha256 (pass it when already computed) and the checkpoint file's path
    and sha256, with a UTC timestamp."""
    import torch

    from robust.base.runtime import model_device

    ckpt = None
    if checkpoint is not None:
        p = Path(checkpoint)
        ckpt = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    device = model_device(model)
    return {"versions": versions(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "model_sha256": model_sha256 or model_fingerprint(model), "checkpoint": ckpt,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}
