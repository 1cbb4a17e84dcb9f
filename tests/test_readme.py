"""Every ```python block of README.md runs, so a snippet that names a moved module fails here.

Each block runs on its own (``exec``, in a fresh folder) in a namespace that gives the names the
README leaves to the reader: ``model`` (a small CNN trained for a few seconds on the 8x8 digits),
``x_test``, ``y_test`` and ``x`` (the first 16 digits test images and their labels). Where the
README's figures would take minutes, ``SUBSTITUTIONS`` swaps a piece of text for a smaller one;
each entry says why, and must still occur in some block (a stale entry fails).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _helpers import digits, one_thread, tiny_cnn, train  # noqa: F401 - one_thread: autouse fixture
from conftest import REPO

README = REPO / "README.md"

SUBSTITUTIONS: list[tuple[str, str, str]] = [
    ("max_epochs=30", "max_epochs=1", "one epoch shows the API; thirty are for accuracy"),
    ('"...ckpt"', "written_checkpoint()", "the placeholder path: the checkpoint the block's own Trainer wrote"),
    ('report.per_class["14"]', 'report.per_class["4"]', "GTSRB's stop sign is class 14; the digits have ten classes"),
    ("n=100_000", "n=10_000", "a tenth of the samples: the same call, 10x faster"),
    ('attacks=("autoattack",)',
     'attacks=("autoattack",), attack_options={"autoattack": {"steps": 10, "queries": 100}}, '
     'audit_options={"steps": 5, "strong_steps": 10, "square_queries": 100}',
     "AutoAttack and the audit with a tenth of their iterations or fewer: the same calls, seconds instead of minutes"),
]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced ```python block, ``line`` being where its code starts."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S):
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def substitute(code: str) -> str:
    for old, new, _ in SUBSTITUTIONS:
        code = code.replace(old, new)
    return code


def written_checkpoint() -> str:
    """The newest ``.ckpt`` under the current folder (where the block's Trainer wrote it)."""
    found = sorted(Path.cwd().rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert found, "the block wrote no checkpoint"
    return str(found[-1])


@pytest.fixture(scope="module")
def stand_ins() -> dict:
    x_test, y_test = digits("test")
    x_test, y_test = x_test[:16], y_test[:16]
    model = train(tiny_cnn(), epochs=3)
    return {"model": model, "x_test": x_test, "y_test": y_test, "x": x_test}


def test_the_readme_has_python_blocks_and_every_substitution_applies():
    assert len(BLOCKS) >= 3
    code = "".join(c for _, c in BLOCKS)
    stale = [old for old, _, _ in SUBSTITUTIONS if old not in code]
    assert not stale, f"SUBSTITUTIONS name text no README block holds any more: {stale}"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code, stand_ins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__", "written_checkpoint": written_checkpoint,
                 **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in stand_ins.items()}}
    exec(compile(substitute(code), f"README.md:{line}", "exec"), namespace)
