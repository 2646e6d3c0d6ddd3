"""The checkpoint store's SQLite schema, as sqlite-utils migrations (each runs in one transaction), and the
connection settings every connection to it uses.

Page size 64 KiB, chosen by measurement on this machine (bench/lean.py ``pages``: 128 MiB of blobs in one
transaction, WAL, synchronous=FULL, best of 3, under load): 64 KiB pages write 65,400-byte blobs at 287 MB/s and
take 1.005x the bytes held on disk; 16 KiB pages 239 MB/s and 1.03x. A blob of exactly 64 KiB does not fit one
64 KiB page (at most 65,501 bytes of a row do), so each left most of an overflow page empty: 1.146x on disk.
That is why buffers are cut into chunks of ``_chunker.BUFFER_CHUNK`` = 65,400 bytes.

The WAL: the writer checkpoints it once it holds ``WAL_LIMIT`` (SQLite's default, 1000 pages, is 62.5 MiB at
64 KiB pages), ``journal_size_limit`` truncates it to ``WAL_LIMIT`` whenever it starts over, and ``trim_wal``
(after a transaction that wrote more than that) checkpoints it and truncates it at once, unless a reader holds
it: without them it kept the size of the largest transaction ever written (77 MB beside a 132 MB store).
"""

from __future__ import annotations

import sqlite3
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrated._storage import disk_problem
from migrated._storage import fix as _fix
from migrated.errors import StateDirError

if TYPE_CHECKING:
    from sqlite_utils import Database

__all__ = [
    "BUSY_TIMEOUT_MS",
    "PAGE_SIZE",
    "WAL_LIMIT",
    "apply_migrations",
    "connect",
    "migrate",
    "migration",
    "trim_wal",
]

PAGE_SIZE = 65536
BUSY_TIMEOUT_MS = 10_000
WAL_LIMIT = 16 * 1024 * 1024
_TRIM_WAIT_MS = 200  # how long trim_wal waits for readers; it is tried again after the next large write
MIGRATION_SET = "migrated.checkpoint"
MIGRATIONS: list[Callable[[Database], None]] = []
"""In order of registration; append new ones, never edit, rename or reorder applied ones."""


def migration(step: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register ``step`` as the next schema migration (applied by sqlite-utils, each in one transaction)."""
    MIGRATIONS.append(step)
    return step


@migration
def m001_store(db: Database) -> None:
    """Apps, immutable numbered versions, content-addressed chunks, and which versions use which chunks."""
    for statement in _M001:
        db.execute(statement)


_M001 = (
    """CREATE TABLE apps (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        next_version INTEGER NOT NULL DEFAULT 1
    )""",
    """CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        parent INTEGER,
        created REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        bytes_added INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        manifest BLOB NOT NULL,
        UNIQUE (app_id, version)
    )""",
    """CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        codec INTEGER NOT NULL,
        raw_size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        data BLOB NOT NULL
    )""",
    """CREATE TABLE version_chunks (
        version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
        chunk_id INTEGER NOT NULL REFERENCES chunks (id),
        PRIMARY KEY (version_id, chunk_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX version_chunks_by_chunk ON version_chunks (chunk_id)",
    """CREATE TRIGGER versions_are_immutable BEFORE UPDATE ON versions
        BEGIN SELECT RAISE(ABORT, 'checkpoint versions are immutable'); END""",
    """CREATE TRIGGER chunks_are_immutable BEFORE UPDATE ON chunks
        BEGIN SELECT RAISE(ABORT, 'chunks are immutable'); END""",
)


@migration
def m002_manifest_hash(db: Database) -> None:
    """Each version keeps the BLAKE3 of its manifest, so ``verify`` and ``load`` find a damaged one."""
    from blake3 import blake3

    db.conn.create_function("manifest_hash", 1, lambda data: blake3(data).digest(), deterministic=True)
    db.execute("DROP TRIGGER versions_are_immutable")
    db.execute("ALTER TABLE versions ADD COLUMN manifest_hash BLOB")
    db.execute("UPDATE versions SET manifest_hash = manifest_hash(manifest)")
    db.execute(
        """CREATE TRIGGER versions_are_immutable BEFORE UPDATE ON versions
        BEGIN SELECT RAISE(ABORT, 'checkpoint versions are immutable'); END"""
    )


@migration
def m003_delta_chunks(db: Database) -> None:
    """A chunk may be a delta against base chunks (codec 2): its depth, and its bases in order. A base is kept
    while any chunk uses it (the foreign key refuses to delete it; ``gc`` deletes from the top of a chain)."""
    db.execute("ALTER TABLE chunks ADD COLUMN depth INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """CREATE TABLE chunk_bases (
        chunk_id INTEGER NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        base_id INTEGER NOT NULL REFERENCES chunks (id),
        PRIMARY KEY (chunk_id, position)
    ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX chunk_bases_by_base ON chunk_bases (base_id)")


@migration
def m004_chunk_use_by_trigger(db: Database) -> None:
    """A version's chunk rows keep their chunks by a trigger on delete instead of a foreign key. A foreign key
    check on insert reads the chunk's row, a 64 KiB page: 4,106 of them for a 256 MiB version, about 35 ms of
    each version stored, forked or adopted. The trigger reads the chunk index only, and only when a chunk goes."""
    for statement in _M004:
        db.execute(statement)


_M004 = (
    """CREATE TABLE version_chunks_m004 (
        version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
        chunk_id INTEGER NOT NULL,
        PRIMARY KEY (version_id, chunk_id)
    ) WITHOUT ROWID""",
    "INSERT INTO version_chunks_m004 (version_id, chunk_id) SELECT version_id, chunk_id FROM version_chunks",
    "DROP TABLE version_chunks",
    "ALTER TABLE version_chunks_m004 RENAME TO version_chunks",
    "CREATE INDEX version_chunks_by_chunk ON version_chunks (chunk_id)",
    """CREATE TRIGGER chunks_in_use BEFORE DELETE ON chunks
        WHEN EXISTS (SELECT 1 FROM version_chunks WHERE chunk_id = OLD.id)
        BEGIN SELECT RAISE(ABORT, 'a chunk that a version uses cannot be deleted'); END""",
)


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's settings."""
    target = str(path) if create else f"file:{urllib.parse.quote(str(path))}?mode=rw"
    try:
        conn = sqlite3.connect(target, uri=not create, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
    except sqlite3.DatabaseError as exc:
        problem = disk_problem(exc, path.parent)
        if problem:
            raise StateDirError(f"cannot open the checkpoint store {path}: {problem}; {_fix(problem)}") from None
        raise StateDirError(
            f"cannot open the checkpoint store {path} ({exc}); check the state directory, or move the file aside "
            "to start an empty store"
        ) from None
    return conn


def _applied(conn: sqlite3.Connection, name: str) -> list[str] | None:
    """The migrations of set ``name`` recorded as applied (sqlite-utils' table), in order; None before any."""
    query = "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid"
    try:
        rows = conn.execute(query, (name,)).fetchall()
    except sqlite3.OperationalError:  # no such table yet
        return None
    return [row[0] for row in rows]


def trim_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint the WAL into the database and truncate it, waiting briefly for readers (outside a
    transaction; the writer calls it after a large one)."""
    conn.execute(f"PRAGMA busy_timeout = {_TRIM_WAIT_MS}")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError:  # busy: journal_size_limit trims it when it next starts over
        pass
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Set up a new store (page size, incremental vacuum, WAL) and apply pending migrations, each in one
    transaction (sqlite-utils ``Migrations``, imported here only: it costs ~0.2 s, and readers never need it)."""
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, WAL_LIMIT // page_size)}")  # pages: 1000 was 62.5 MiB
    apply_migrations(conn, path, MIGRATION_SET, MIGRATIONS)


def apply_migrations(conn: sqlite3.Connection, path: Path, name: str, steps: list[Callable[[Database], None]]) -> None:
    """Apply the pending ``steps`` of the migration set ``name`` to the database, each in one transaction; refuse
    a database that a newer migrated has migrated further."""
    known = {step.__name__ for step in steps}
    done = _applied(conn, name)
    if done is not None and known <= set(done):  # nothing to do: sqlite-utils stays unloaded
        _refuse_newer(path, [applied for applied in done if applied not in known])
        return
    Database, Migrations = _sqlite_utils()
    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    migrations = Migrations(name)
    for step in steps:
        migrations()(step)
    _refuse_newer(path, [applied.name for applied in migrations.applied(db) if applied.name not in known])
    migrations.apply(db)


def _refuse_newer(path: Path, newer: list[str]) -> None:
    if newer:
        raise StateDirError(f"the store {path} was written by a newer migrated (schema {newer[-1]}); upgrade migrated")


def _sqlite_utils() -> tuple[Any, Any]:
    """sqlite-utils' ``Database`` and ``Migrations``, imported without NumPy and pandas, which it imports only
    to map their types to columns when they are installed: NumPy alone took 16 MiB of the daemon's RSS."""
    hidden = [name for name in ("numpy", "pandas") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        from sqlite_utils import Database
        from sqlite_utils.migrations import Migrations
    finally:
        for name in hidden:
            if sys.modules.get(name) is None:
                del sys.modules[name]
    return Database, Migrations
