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


@pytest.fixture
def listener():
    """A loopback TCP server that counts connections (see ``hostile.Listener``)."""
    from hostile import Listener

    server = Listener()
    yield server
    server.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The hostile-input corpus's size per class, when a run collected any of it."""
    from hostile import CLASSES

    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            kind = getattr(report, "hostile_class", None)
            if kind is not None and (report.when == "call" or outcome != "passed"):
                counts.setdefault(kind, {}).setdefault(outcome, 0)
                counts[kind][outcome] += 1
    if not counts:
        return
    terminalreporter.section("hostile-input corpus")
    for kind, label in CLASSES.items():
        tally = counts.get(kind, {})
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items())) or "none"
        terminalreporter.write_line(f"{kind:13s} {sum(tally.values()):4d}  ({text})  {label}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    marker = item.get_closest_marker("hostile")
    if marker is not None:
        outcome.get_result().hostile_class = marker.args[0]
