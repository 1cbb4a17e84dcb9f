"""The results store: SQLite by default (one file, created on first use), any SQLAlchemy URL
for a shared team board (PostgreSQL in particular).

Safe under several writers: every entry is inserted in its own transaction, SQLite runs in WAL
mode with a generous busy timeout, and a unique fingerprint of the entry (all of it but the id)
makes adding the same measurement twice a no-op, so concurrent or repeated adds neither lose
nor duplicate anything. The schema carries its version in a ``meta`` table; a store written by
a newer ``robust`` is refused with a message that says so (version 1 is the first; a later
schema change comes with its explicit migration from the versions before it).

A SQLite file is marked as ours with ``PRAGMA application_id`` (:data:`APPLICATION_ID`) when it is
created. An existing SQLite file is read (read-only, before SQLAlchemy opens it) and refused unless
it carries the mark, holds only our two tables (a board of an older ``robust``) or nothing at all:
an unrelated database never gets our tables. On a server (PostgreSQL) the tables live beside any
others; a table of ours whose columns are not ours is refused.

Entries are validated whole when added; a stored row that does not validate (written by an older
version, or edited by hand) is skipped with a warning naming its id, so one bad row never breaks
the board.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError, ProgrammingError

from robust.base.errors import InputError
from robust.leaderboard.entry import EntryError, fingerprint, validate

SCHEMA_VERSION = 1
DEFAULT_PATH = Path("runs") / "leaderboard.db"
APPLICATION_ID = 0x524F4254  # "ROBT" in the SQLite header: a leaderboard store made by robust
_SQLITE_MAGIC = b"SQLite format 3\x00"

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


class SkippedEntryWarning(UserWarning):
    """A stored row that is not a valid entry was left off the board."""


def default_url() -> str:
    """``$ROBUST_LEADERBOARD`` if set, else the SQLite file ``runs/leaderboard.db``."""
    return os.environ.get("ROBUST_LEADERBOARD") or str(DEFAULT_PATH)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store (a plain path or a ``sqlite:///`` URL); None for a server or in-memory store."""
    if "://" not in url:
        return Path(url)
    if not url.startswith("sqlite"):
        return None
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_schema(path: Path) -> tuple[list[str], int]:
    """``(tables and views, user_version)`` of a SQLite file, read without writing anything beside it."""
    live = path.with_name(path.name + "-wal").exists()  # a WAL in use: read through it; else the file alone
    uri = path.resolve().as_uri() + ("?mode=ro" if live else "?immutable=1")
    conn = sqlite3.connect(uri, uri=True, timeout=60)
    try:
        names = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")]
        return names, int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def check_sqlite_file(path: Path) -> bool:
    """Whether the SQLite store at ``path`` is new (absent or empty): the file to be created and marked.

    An existing file is accepted when it carries :data:`APPLICATION_ID`, holds only the tables of
    an older robust board, or is an empty database; anything else raises :class:`StoreError`. Only
    reads the file (its first 100 bytes, then its table names).
    """
    if not path.exists():
        return True
    if not path.is_file():
        raise StoreError(f"leaderboard store {path}: not a file")
    if path.stat().st_size == 0:
        return True
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"leaderboard store {path}: not a SQLite database; give a new file or a robust "
                         "leaderboard")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id == APPLICATION_ID:
        return False
    if application_id != 0:
        raise StoreError(f"leaderboard store {path}: a SQLite database of another application (application_id "
                         f"{application_id:#x}); give a new file or a robust leaderboard")
    try:
        tables, user_version = _sqlite_schema(path)
    except sqlite3.Error as err:
        raise StoreError(f"leaderboard store {path}: cannot be read as a SQLite database ({err})") from None
    ours = {META.name, ENTRIES.name}
    if (tables or user_version) and not (set(tables) <= ours and META.name in tables and user_version == 0):
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "") or f"user_version {user_version}"
        raise StoreError(f"leaderboard store {path}: a SQLite database that robust did not create ({shown}); "
                         "refusing to add leaderboard tables to it: give a new file or a robust leaderboard")
    return False


def _mark(path: Path) -> None:
    """Create the SQLite file at ``path`` with :data:`APPLICATION_ID` in its header."""
    conn = sqlite3.connect(path, timeout=60)
    try:
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.commit()
    finally:
        conn.close()


def _engine(url: str) -> sa.Engine:
    path = sqlite_path(url)
    if "://" not in url:  # a plain path: SQLite, its folder made on first use
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    if path is not None and check_sqlite_file(path):
        _mark(path)
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
        except sqlite3.Error as err:  # marking a new SQLite file
            raise StoreError(f"cannot open the leaderboard store {self.url!r}: {err}") from None
        except OSError as err:  # the folder of a SQLite file cannot be created
            raise StoreError(f"cannot open the leaderboard store {self.url!r}: {err.strerror}") from None

    # -------------------------------------------------------------------------------- schema
    def _check_tables(self) -> None:
        """Refuse a database whose ``robust_meta`` or ``robust_entries`` table has other columns than ours."""
        inspector = sa.inspect(self.engine)
        for table in (META, ENTRIES):
            if inspector.has_table(table.name):
                found = {c["name"] for c in inspector.get_columns(table.name)}
                wanted = {c.name for c in table.columns}
                if found != wanted:
                    raise StoreError(f"{self.url!r}: its table {table.name} has the columns {sorted(found)}, not "
                                     f"those of a robust leaderboard ({sorted(wanted)}); give another database")

    def _ensure_schema(self) -> None:
        for attempt in range(20):  # several processes may create the schema at once
            try:
                self._check_tables()
                _meta.create_all(self.engine, checkfirst=True)
                with self.engine.begin() as conn:
                    if conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).first() is None:
                        conn.execute(META.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    if self.engine.dialect.name == "sqlite" and \
                            conn.exec_driver_sql("PRAGMA application_id").scalar() != APPLICATION_ID:
                        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")  # an older board: mark it
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

    def entries(self, dataset: str | None = None, threat: str | None = None,
                warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """All valid entries (oldest first), each with its ``id``; optionally of one data set / threat.

        A stored row that is not a valid entry is left out and reported, one line naming its id, to
        ``warn`` (default: a :class:`SkippedEntryWarning`)."""
        query = sa.select(ENTRIES.c.id, ENTRIES.c.data).order_by(ENTRIES.c.created, ENTRIES.c.id)
        if dataset:
            query = query.where(ENTRIES.c.dataset == dataset.lower())
        if threat:
            query = query.where(ENTRIES.c.threat == threat)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        out = []
        for entry_id, data in rows:
            try:
                out.append(self._load(entry_id, data))
            except EntryError as err:
                message = f"skipped leaderboard entry {entry_id} in {self.url}: {err}"
                if warn is None:
                    warnings.warn(message, SkippedEntryWarning, stacklevel=2)
                else:
                    warn(message)
        return out

    @staticmethod
    def _load(entry_id: Any, data: Any) -> dict[str, Any]:
        """The stored entry of one row, validated; :class:`EntryError` for a row that is not one."""
        try:
            entry = json.loads(data)
        except (TypeError, ValueError):
            raise EntryError("its data is not JSON") from None
        if not isinstance(entry, dict):
            raise EntryError(f"its data is not a JSON object but {type(entry).__name__}")
        entry.pop("id", None)
        validate(entry)
        return {"id": str(entry_id), **entry}

    def get(self, entry_id: str) -> dict[str, Any]:
        """One entry by id; :class:`KeyError` when there is none, :class:`EntryError` when its row is not valid."""
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(ENTRIES.c.data).where(ENTRIES.c.id == entry_id)).scalar()
        if data is None:
            raise KeyError(f"no entry {entry_id!r} in {self.url}")
        try:
            return self._load(entry_id, data)
        except EntryError as err:
            raise EntryError(f"leaderboard entry {entry_id} in {self.url}: {err}") from None

    def remove(self, entry_id: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(ENTRIES.delete().where(ENTRIES.c.id == entry_id)).rowcount == 0:
                raise KeyError(f"no entry {entry_id!r} in {self.url}")

    def __len__(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(ENTRIES)).scalar())

    def close(self) -> None:
        self.engine.dispose()
