"""Shared fixtures. wandb always runs offline and silently in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


@pytest.fixture(scope="session")
def digits():
    """The digits data module, set up for fit and test (no download, fixed split)."""
    from robust.data import Digits

    dm = Digits(batch_size=64)
    dm.setup("fit")
    dm.setup("test")
    return dm


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
