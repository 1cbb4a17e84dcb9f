"""Tools of the hostile-input corpus (``tests/test_hostile_*.py``).

Every case of the corpus is a test marked ``@pytest.mark.hostile("<class>")`` with one of
:data:`CLASSES`; ``pytest`` prints the number of cases per class at the end of a run that
collected any. A case runs a command in-process (:func:`run`), or the Python API, on input built
in the test, and asserts what the issue asks: a refusal with one ``robust: error: ...`` line and
the right exit status, no traceback, no side effect (:func:`snapshot`, :class:`Listener`), or a
flag where a number cannot be refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from robust.cli import main

CLASSES = {
    "construction": "built before refused",
    "numbers": "wrong numbers that look right",
    "export": "a failed export destroys the verified one",
    "board": "one entry breaks a board",
    "injection": "output injection",
    "corruption": "corruption goes unnoticed",
    "traceback": "tracebacks instead of robust: error",
    "determinism": "same command, different model",
}
LEGACY_CHECKPOINT = Path(__file__).resolve().parent / "data" / "legacy" / "pgd_cnn_small_digits.ckpt"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``robust <argv>`` in this process; an exception that escapes ``main`` fails the test (a
    traceback is what the corpus must never see)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exits
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return Outcome(int(code or 0), captured.out, captured.err)


def assert_refused(outcome: Outcome, *mentions: str, code: int = 2) -> None:
    """The command ended with exit ``code`` and one ``robust: error: ...`` line that names each of
    ``mentions`` (case-insensitive)."""
    assert outcome.code == code, (outcome.code, outcome.err[-2000:])
    line = outcome.last_line
    assert line.startswith("robust: error: "), outcome.err[-2000:]
    for needle in mentions:
        assert needle.lower() in line.lower(), (needle, line)


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """``{path: (sha256, mode)}`` of every file and folder under ``roots`` (folders: ``("dir", mode)``),
    to prove that a refused input changed nothing."""
    found: dict[str, tuple[str, int]] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        paths = [root] if root.is_file() else [root, *sorted(root.rglob("*"))]
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path)] = (digest, mode)
    return found


class Listener:
    """A TCP server on loopback that counts connection attempts: a hostile spec that names
    ``127.0.0.1:<port>`` must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def copy_checkpoint(folder: Path, name: str = "model.ckpt") -> Path:
    """A private copy of the committed PGD CNN-small digits checkpoint (trained, 8/255 L-inf)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(LEGACY_CHECKPOINT, target)
    os.chmod(target, 0o644)
    return target
