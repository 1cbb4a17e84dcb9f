"""What every figure shares: the colours, an Agg figure (no pyplot, no display), PNG saving, CI error bars."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "CLEAN_COLOR", "ROBUST_COLOR", "CERTIFIED_COLOR", "RIGHT_COLOR", "WRONG_COLOR", "figure", "save", "yerr"]

DPI = 120
CLEAN_COLOR, ROBUST_COLOR, CERTIFIED_COLOR = "#4c72b0", "#dd8452", "#55a868"
RIGHT_COLOR = CERTIFIED_COLOR  # an example whose prediction stayed right
WRONG_COLOR = "#c44e52"


def figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width`` x ``height`` inches drawn by Agg."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI`, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def yerr(records: Sequence[Mapping]) -> np.ndarray:
    """Asymmetric error bars in percent points from the records' 95% intervals (none where absent)."""
    acc = np.array([r["accuracy"] for r in records])
    lo = np.array([r.get("ci95", [a, a])[0] for r, a in zip(records, acc)])
    hi = np.array([r.get("ci95", [a, a])[1] for r, a in zip(records, acc)])
    return 100 * np.clip(np.stack([acc - lo, hi - acc]), 0, None)
