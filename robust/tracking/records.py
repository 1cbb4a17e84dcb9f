"""Read an offline wandb run back: config, history and summary, without wandb's network client.

On-disk format of ``run-<id>.wandb`` (written by wandb-core, checked on wandb 0.31): a 7-byte header
``b":W&B"`` + uint16 LE ``0xBEE1`` + uint8 version ``0``, then LevelDB-log records laid out in 32 KiB
blocks counted from the start of the file (the header sits in block 0). Each chunk is
``crc:uint32 LE | length:uint16 LE | type:uint8 | data``; type FULL=1, FIRST=2, MIDDLE=3, LAST=4; a block
tail shorter than 7 bytes is zero padding. Unlike LevelDB, the crc is plain zlib CRC-32 (IEEE) of
``type byte + data``, unmasked. Each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WandbRun", "read_wandb_records", "read_wandb_run"]

_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_CHUNK = struct.Struct("<IHB")  # crc, length, type
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


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
