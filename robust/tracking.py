"""Weights & Biases tracking: an offline-by-default Lightning logger and a reader for offline run logs.

On-disk format of ``run-<id>.wandb`` (written by wandb-core, checked on wandb 0.31): a 7-byte header
``b":W&B"`` + uint16 LE ``0xBEE1`` + uint8 version ``0``, then LevelDB-log records laid out in 32 KiB
blocks counted from the start of the file (the header sits in block 0). Each chunk is
``crc:uint32 LE | length:uint16 LE | type:uint8 | data``; type FULL=1, FIRST=2, MIDDLE=3, LAST=4; a block
tail shorter than 7 bytes is zero padding. Unlike LevelDB, the crc is plain zlib CRC-32 (IEEE) of
``type byte + data``, unmasked. Each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import configparser
import json
import netrc
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger", "WandbRun", "read_wandb_records", "read_wandb_run", "wandb_logger", "wandb_mode"]

_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_CHUNK = struct.Struct("<IHB")  # crc, length, type
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


# --------------------------------------------------------------------------------------------- logger


def _settings_files() -> list[Path]:
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
    workspace = Path(os.environ.get("WANDB_DIR") or ".") / "wandb" / "settings"
    return [Path(config_dir) / "settings", workspace]  # later wins, as in wandb


def wandb_mode() -> str:
    """The wandb mode to use without touching the network.

    ``$WANDB_MODE`` if set; else a ``mode`` in wandb's settings files; else ``"online"`` only if an API
    key is available (``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE``, ``api_key`` in a settings file,
    or a netrc entry for the server host); otherwise ``"offline"``.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    settings: dict[str, str] = {}
    for path in _settings_files():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (configparser.Error, OSError):
            continue
        if parser.has_section("default"):
            settings.update(parser["default"])
    if settings.get("mode"):
        return settings["mode"]
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or settings.get("api_key"):
        return "online"
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or "https://api.wandb.ai"
    host = urlsplit(base_url).hostname or ""
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        try:
            creds = netrc.netrc(os.path.expanduser(candidate)).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            continue
        if creds and creds[2]:
            return "online"
    return "offline"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, offline unless wandb is configured online (see :func:`wandb_mode`).

    ``offline=None`` picks the mode automatically; ``True``/``False`` force it. Offline runs land in
    ``<save_dir>/wandb/offline-run-*/`` (see :attr:`run_dir`) and upload later with ``wandb sync <dir>``.
    ``log_model=True`` (the default here) logs the checkpoints as a wandb ``model`` artifact when
    training ends, offline too (``"all"``: every checkpoint as it is written; False: none).
    """

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: str = ".",
        offline: Optional[bool] = None,
        project: str = "robust",
        log_model: Union[bool, str] = True,
        **kwargs: Any,
    ) -> None:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # jsonargparse passes every wandb.init default
        if "mode" not in kwargs:
            kwargs["mode"] = wandb_mode() if offline is None else ("offline" if offline else "online")
        os.makedirs(save_dir, exist_ok=True)  # wandb silently falls back to /tmp for a missing dir
        # `offline` is not forwarded: Lightning's version mutates os.environ["WANDB_MODE"].
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # wandb 0.31 warns about it even when None
            self._wandb_init.pop("anonymous", None)

    @property
    def mode(self) -> str:
        return self._wandb_init["mode"]

    @property
    def run_dir(self) -> Optional[Path]:
        """Local run folder holding ``run-<id>.wandb``; None until the run has started."""
        run = self._experiment
        sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
        return Path(sync_dir) if sync_dir else None

    def finish(self) -> Optional[Path]:
        """End the run and close its log; returns :attr:`run_dir`.

        ``wandb.finish()`` returns before wandb-core writes the log's last partial block (it is buffered
        until the file closes), so this also calls ``wandb.teardown()``, which waits for wandb-core to exit.
        """
        import wandb

        if self._experiment is not None:
            self._experiment.finish()
            wandb.teardown()
        return self.run_dir


def wandb_logger(
    project: str = "robust",
    name: Optional[str] = None,
    save_dir: str = ".",
    offline: Optional[bool] = None,
    **kw: Any,
) -> WandbLogger:
    """A :class:`WandbLogger`; offline by default unless wandb is configured online."""
    return WandbLogger(name=name, save_dir=save_dir, offline=offline, project=project, **kw)


# --------------------------------------------------------------------------------------------- reader


def _log_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(path.glob("run-*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected one run-*.wandb file, found {len(found)}")
    return found[0]


def read_wandb_records(path: str | os.PathLike) -> Iterator[Any]:
    """Yield each ``wandb_internal_pb2.Record`` of an offline run log (the ``.wandb`` file or its run dir).

    Raises ValueError naming the file and byte offset for a bad header, a truncated or corrupt record.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    path = _log_file(path)
    with open(path, "rb") as f:
        block = f.read(_BLOCK)
        if len(block) < _HEADER.size:
            raise ValueError(f"{path}: not a wandb run log (only {len(block)} bytes)")
        ident, magic, version = _HEADER.unpack_from(block)
        if ident != _IDENT or magic != _MAGIC:
            raise ValueError(f"{path}: not a wandb run log (header {block[:_HEADER.size]!r} at offset 0)")
        if version != _VERSION:
            raise ValueError(f"{path}: unsupported wandb run log version {version}")
        block_start, pos = 0, _HEADER.size
        parts: list[bytes] = []
        record_start = 0
        while True:
            while pos + _CHUNK.size <= len(block):
                offset = block_start + pos
                crc, length, kind = _CHUNK.unpack_from(block, pos)
                if kind == 0 and length == 0 and crc == 0:  # zero padding
                    break
                data = block[pos + _CHUNK.size : pos + _CHUNK.size + length]
                if len(data) < length:
                    raise ValueError(f"{path}: truncated record at offset {offset}")
                if zlib.crc32(bytes([kind]) + data) != crc:
                    raise ValueError(f"{path}: checksum mismatch in record at offset {offset}")
                if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or (kind in (_FULL, _FIRST)) == bool(parts):
                    raise ValueError(f"{path}: unexpected chunk type {kind} at offset {offset}")
                if kind in (_FULL, _FIRST):
                    record_start, parts = offset, []
                parts.append(data)
                pos += _CHUNK.size + length
                if kind in (_FULL, _LAST):
                    try:
                        yield Record.FromString(b"".join(parts))
                    except Exception as e:  # protobuf DecodeError
                        raise ValueError(f"{path}: undecodable record at offset {record_start}: {e}") from None
                    parts = []
            next_block = b"" if len(block) < _BLOCK else f.read(_BLOCK)
            if not next_block:
                if parts or block[pos:].strip(b"\0"):
                    raise ValueError(
                        f"{path}: truncated record at offset {record_start if parts else block_start + pos}"
                        " (if the run just ended, its log may not be closed yet: see WandbLogger.finish)"
                    )
                return
            block_start, block, pos = block_start + _BLOCK, next_block, 0


@dataclass
class WandbRun:
    """A run read back from its offline log. Nested keys are joined with ``/``; ``_wandb`` internals dropped."""

    run_id: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None  # typed HistoryItem
    if kind == "json":
        return json.loads(item.json)
    return None if kind in (None, "none") else getattr(item, kind)


def _apply(target: dict[str, Any], record: Any) -> None:
    for item in record.update:
        if not _key(item).startswith("_wandb"):
            target[_key(item)] = _value(item)
    for item in record.remove:
        target.pop(_key(item), None)


def read_wandb_run(path: str | os.PathLike) -> WandbRun:
    """Read config, history rows and summary of an offline run (the ``.wandb`` file or its run dir)."""
    run = WandbRun()
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id, record.run.project
            _apply(run.config, record.run.config)
            _apply(run.summary, record.run.summary)
        elif kind == "config":
            _apply(run.config, record.config)
        elif kind == "summary":
            _apply(run.summary, record.summary)
        elif kind == "history":
            run.history.append({_key(i): _value(i) for i in record.history.item})
    return run


def start_run(project: str, out_dir: str | os.PathLike, job_type: str, config: dict[str, Any]) -> Any:
    """A wandb run for a command's report (offline unless wandb is configured online), in ``out_dir``."""
    import wandb

    return wandb.init(project=project, mode=wandb_mode(), dir=str(out_dir), job_type=job_type, config=config)


def run_path(run: Any) -> str:
    """Where a reader opens the run: ``entity/project/id`` online, the local run folder offline."""
    if getattr(getattr(run, "settings", None), "mode", None) == "offline" or getattr(run, "offline", False):
        return str(Path(run.settings.sync_dir))
    return "/".join(str(p) for p in run.path) if isinstance(run.path, (list, tuple)) else str(run.path)


def finish_run(run: Any) -> None:
    """``run.finish()`` and wait for wandb-core to close the log (see :meth:`WandbLogger.finish`)."""
    import wandb

    run.finish()
    wandb.teardown()
