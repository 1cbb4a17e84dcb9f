"""The results store: SQLite by default (one file, created on first use), any SQLAlchemy URL
for a shared team board (PostgreSQL in particular).

Safe under several writers: every entry is inserted in its own transaction, SQLite runs in WAL
mode with a generous busy timeout, and a unique fingerprint of the entry (all of it but the id)
makes adding the same measurement twice a no-op, so concurrent or repeated adds neither lose
nor duplicate anything. The schema carries its version in a ``meta`` table; a store written by
a newer ``robust`` is refused with a message that says so (version 1 is the first; a later
schema change comes with its explicit migration from the versions before it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError, ProgrammingError

from robust.base.errors import InputError
from robust.leaderboard.entry import fingerprint, validate

SCHEMA_VERSION = 1
DEFAULT_PATH = Path("runs") / "leaderboard.db"

_meta = sa.MetaData()
META = sa.Table("robust_meta", _meta, sa.Column("key", sa.String(64), primary_key=True),
                sa.Column("value", sa.Text, nullable=False))
ENTRIES = sa.Table(
    "robust_entries", _meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("threat", sa.String(16), nullable=False),
    sa.Column("eps", sa.Float, nullable=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)


class StoreError(InputError, RuntimeError):
    """A store that cannot be used as it is (newer schema, not a robust store, unreachable)."""


def default_url() -> str:
    """``$ROBUST_LEADERBOARD`` if set, else the SQLite file ``runs/leaderboard.db``."""
    return os.environ.get("ROBUST_LEADERBOARD") or str(DEFAULT_PATH)


def _engine(url: str) -> sa.Engine:
    if "://" not in url:  # a plain path: SQLite
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Store:
    """Entries in a database. ``Store()`` opens (or creates) the default SQLite board."""

    def __init__(self, url: str | os.PathLike | None = None) -> None:
        self.url = os.fspath(url) if url is not None else default_url()
        try:
            self.engine = _engine(self.url)
            self._ensure_schema()
        except DatabaseError as err:  # OperationalError included: unreachable, locked, not a database file
            raise StoreError(f"cannot open the leaderboard store {self.url!r}: {err.orig}") from None
        except (ArgumentError, ImportError) as err:  # a malformed URL, an unknown dialect or a missing driver
            raise StoreError(f"cannot open the leaderboard store {self.url!r}: {err}") from None
        except OSError as err:  # the folder of a SQLite file cannot be created
            raise StoreError(f"cannot open the leaderboard store {self.url!r}: {err.strerror}") from None

    # -------------------------------------------------------------------------------- schema
    def _ensure_schema(self) -> None:
        for attempt in range(20):  # several processes may create the schema at once
            try:
                _meta.create_all(self.engine, checkfirst=True)
                with self.engine.begin() as conn:
                    if conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).first() is None:
                        conn.execute(META.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                break
            except (IntegrityError, OperationalError, ProgrammingError):
                if attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(f"the leaderboard store {self.url!r} has schema version {version}, newer than this "
                             f"robust's {SCHEMA_VERSION}: upgrade robust to use it")

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).scalar()
        try:
            return int(value)
        except (TypeError, ValueError):
            raise StoreError(f"{self.url!r} is not a robust leaderboard store (schema version {value!r})") from None

    # ------------------------------------------------------------------------------- entries
    def add(self, entry: Mapping[str, Any]) -> tuple[str, bool]:
        """Validate and insert ``entry``; returns ``(id, added)``. The same measurement (same
        fingerprint) already in the store is not added again: its id is returned with False."""
        return self._insert(validate(entry))

    def add_many(self, entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, bool]]:
        """Validate every entry first (a bad one refuses the whole batch), then add them."""
        return [self._insert(e) for e in [validate(e) for e in entries]]

    def _insert(self, entry: dict[str, Any]) -> tuple[str, bool]:
        entry.pop("id", None)
        fp = fingerprint(entry)
        new_id = uuid.uuid4().hex
        row = {"id": new_id, "fingerprint": fp, "name": entry["name"], "dataset": entry["dataset"],
               "threat": entry["threat"], "eps": entry["eps"], "source": entry["source"], "created": time.time(),
               "data": json.dumps(entry, sort_keys=True)}
        attempts = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    conn.execute(ENTRIES.insert().values(**row))
                return new_id, True
            except IntegrityError:
                with self.engine.connect() as conn:
                    existing = conn.execute(sa.select(ENTRIES.c.id).where(ENTRIES.c.fingerprint == fp)).scalar()
                if existing is not None:
                    return existing, False
                raise
            except OperationalError as err:  # "database is locked" beyond the busy timeout
                attempts += 1
                if "locked" not in str(err).lower() or attempts == 50:
                    raise
                time.sleep(0.05)

    def entries(self, dataset: str | None = None, threat: str | None = None) -> list[dict[str, Any]]:
        """All entries (oldest first), each with its ``id``; optionally of one data set / threat."""
        query = sa.select(ENTRIES.c.id, ENTRIES.c.data).order_by(ENTRIES.c.created, ENTRIES.c.id)
        if dataset:
            query = query.where(ENTRIES.c.dataset == dataset.lower())
        if threat:
            query = query.where(ENTRIES.c.threat == threat)
        with self.engine.connect() as conn:
            return [{"id": i, **json.loads(d)} for i, d in conn.execute(query)]

    def get(self, entry_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(ENTRIES.c.data).where(ENTRIES.c.id == entry_id)).scalar()
        if data is None:
            raise KeyError(f"no entry {entry_id!r} in {self.url}")
        return {"id": entry_id, **json.loads(data)}

    def remove(self, entry_id: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(ENTRIES.delete().where(ENTRIES.c.id == entry_id)).rowcount == 0:
                raise KeyError(f"no entry {entry_id!r} in {self.url}")

    def __len__(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(ENTRIES)).scalar())

    def close(self) -> None:
        self.engine.dispose()
