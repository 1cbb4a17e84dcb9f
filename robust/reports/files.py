"""Writing a document's files: JSON and TSV, all of them staged and then moved in together, fsync'd.

A report is several files (JSON, Markdown, plots, a table). :func:`write_staged` renders them in a
hidden folder beside the destination and moves each one in with ``os.replace`` only when all of
them were made, so a failure while rendering leaves the previous report whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robust.base.state import fsync_dir

__all__ = ["json_text", "write_json", "write_tsv", "write_staged"]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # tensors and numpy values
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON (paths as strings, tensors and arrays as lists) with a final newline."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def write_json(obj: Any, path: Path) -> Path:
    """Write :func:`json_text` of ``obj`` to ``path`` (a file in a staging folder)."""
    path.write_text(json_text(obj), encoding="utf-8")
    return path


def write_tsv(rows: Sequence[Mapping], columns: Sequence[str], path: Path) -> Path:
    """A tab-separated table of ``columns`` with a header line; floats with 4 significant digits."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(cell(r[c]) for c in columns) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def write_staged(out_dir: str | os.PathLike, render: Callable[[Path], dict[str, Path]]) -> dict[str, Path]:
    """Run ``render(stage)`` in a hidden staging folder inside ``out_dir``, then fsync every file it
    returns and move it into ``out_dir`` with ``os.replace``, in order (put ``report.json`` last): a
    failure while rendering leaves any earlier report untouched. Returns name -> final path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp:
        paths = render(Path(tmp))
        result = {}
        for name, staged in paths.items():
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, out / staged.name)
            result[name] = out / staged.name
    fsync_dir(out)
    return result
