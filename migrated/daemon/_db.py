"""The daemon's durable state besides checkpoints: app records, the move journal, paired peers and file grants.

They live in the checkpoint store's SQLite database, as tables of a migration set of their own, and every write
goes through the store's one writer thread. A change is a function of the write connection; ``Db.write`` runs
several in one transaction, so a hand-off step that changes the journal and an app record changes both or
neither. Their owners (the app table, the move journal, the paired table, the file grants) define their rows;
this module holds the schema, in order, and takes up the JSON files of daemons before this schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from migrated.checkpoint import Store, immediate
from migrated.checkpoint._schema import apply_migrations
from migrated.errors import StateDirError, StorageError

if TYPE_CHECKING:
    from sqlite_utils import Database

__all__ = ["Change", "Db"]

log = logging.getLogger("migrated.daemon")

Change = Callable[[sqlite3.Connection], None]
T = TypeVar("T")
MIGRATION_SET = "migrated.daemon"
MIGRATIONS: list[Callable[[Database], None]] = []
"""In order of registration; append new ones, never edit, rename or reorder applied ones."""


def _migration(step: Callable[[Database], None]) -> Callable[[Database], None]:
    MIGRATIONS.append(step)
    return step


@_migration
def m001_daemon(db: Database) -> None:
    """App records, the move journal, paired peers and file grants."""
    for statement in _M001:
        db.execute(statement)


@_migration
def m002_console_session(db: Database) -> None:
    """The numbering of each app's console on this host (a visitor's lines the home lacks outlive a restart)."""
    db.execute("ALTER TABLE app_records ADD COLUMN console_session REAL NOT NULL DEFAULT 0")


_M001 = (
    """CREATE TABLE app_records (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        file TEXT NOT NULL,
        app_class TEXT NOT NULL,
        cwd TEXT NOT NULL,
        args TEXT NOT NULL,
        autosave REAL NOT NULL,
        keep TEXT NOT NULL,
        restart TEXT NOT NULL,
        home_cwd TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        host TEXT NOT NULL,
        host_device TEXT NOT NULL,
        home TEXT NOT NULL,
        home_device TEXT NOT NULL,
        files_home TEXT NOT NULL,
        files_home_name TEXT NOT NULL
    )""",
    """CREATE TABLE moves (
        id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('source', 'destination')),
        app TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        state TEXT NOT NULL,
        peer TEXT NOT NULL,
        peer_name TEXT NOT NULL,
        version INTEGER NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (id, role)
    )""",
    "CREATE INDEX moves_by_app ON moves (app)",
    """CREATE TABLE paired_peers (
        device_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        cert_pem TEXT NOT NULL,
        client_cert_hash TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL,
        paired_at REAL NOT NULL
    )""",
    """CREATE TABLE file_grants (
        app TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        cwd TEXT NOT NULL
    )""",
)


class Db:
    """The daemon's tables in ``store``'s database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self, state_dir: Path) -> None:
        """Apply pending migrations; take up the JSON state files of an older daemon in ``state_dir``."""
        try:
            self.store.write(lambda conn: apply_migrations(conn, self.store.path, MIGRATION_SET, MIGRATIONS))
            _take_up_json(self, state_dir)
        except StorageError as exc:
            raise StateDirError(f"cannot start: {exc.message}") from None

    def read(self, task: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on this thread (blocking: from a worker thread, or at start)."""
        return self.store.read(task)

    def write_now(self, *changes: Change) -> None:
        """Run ``changes`` in one transaction, blocking until it is durable."""

        def task(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                for change in changes:
                    change(conn)

        self.store.write(task, "not recorded")

    async def write(self, *changes: Change) -> None:
        """``write_now`` from the event loop (the writer thread does the work)."""
        await asyncio.to_thread(self.write_now, *changes)


# -- taking up the JSON files of daemons before this schema


def _take_up_json(db: Db, state_dir: Path) -> None:
    """Move ``apps/*.json``, ``migrations/*.json``, ``peers.json`` and ``file-grants.json`` into the tables, in
    one transaction, then remove them."""
    apps = sorted((state_dir / "apps").glob("*.json"))
    moves = sorted((state_dir / "migrations").glob("*.json"))
    files = [path for path in (state_dir / "peers.json", state_dir / "file-grants.json") if path.exists()]
    if not (apps or moves or files):
        return
    changes = [_old_app(path) for path in apps] + [_old_move(path) for path in moves]
    changes += _old_peers(state_dir / "peers.json") + _old_grants(state_dir / "file-grants.json")
    db.write_now(*(change for change in changes if change is not None))
    for path in [*apps, *moves, *files]:
        path.unlink(missing_ok=True)
    for folder in (state_dir / "apps", state_dir / "migrations"):
        with contextlib.suppress(OSError):
            folder.rmdir()
    log.info("took up %d app records and %d move records from JSON files", len(apps), len(moves))


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be taken up (%s); it is left out", path, exc)
        return None


def _old_app(path: Path) -> Change | None:
    data = _json(path)
    if not isinstance(data, dict):
        return None
    spec, place = dict(data.get("spec", {})), dict(data.get("place", {}))
    row = {
        **{key: spec.get(key, "") for key in ("name", "kind", "file", "app_class", "cwd", "keep", "home_cwd")},
        "args": json.dumps(list(spec.get("args", []))),
        "autosave": float(spec.get("autosave", 0.0)),
        "restart": spec.get("restart", "on-crash"),
        "state": str(data.get("state", "closed")),
        "reason": str(place.get("reason", "")),
        "epoch": int(place.get("epoch", 0)),
        **{key: str(place.get(key, "")) for key in _PLACE_TEXT},
    }
    return _inserting("app_records", row)


_PLACE_TEXT = ("host", "host_device", "home", "home_device", "files_home", "files_home_name")


def _old_move(path: Path) -> Change | None:
    data = _json(path)
    if not isinstance(data, dict) or data.get("role") not in ("source", "destination"):
        return None
    source = data["role"] == "source"
    kept = {"id", "role", "app", "epoch", "state", "version", "staged_version", "peer", "source", "source_name"}
    row = {
        "id": str(data.get("id", "")),
        "role": data["role"],
        "app": str(data.get("app", "")),
        "epoch": int(data.get("epoch", 0)),
        "state": str(data.get("state", "")),
        "peer": str(data.get("peer" if source else "source", "")),
        "peer_name": "" if source else str(data.get("source_name", "")),
        "version": int(data.get("version" if source else "staged_version", 0)),
        "detail": json.dumps({key: value for key, value in data.items() if key not in kept}),
    }
    return _inserting("moves", row)


def _old_peers(path: Path) -> list[Change]:
    data = _json(path) if path.exists() else None
    keys = ("device_id", "name", "cert_pem", "client_cert_hash", "address", "paired_at")
    rows = [{key: entry[key] for key in keys} for entry in data or () if isinstance(entry, dict)]
    return [_inserting("paired_peers", row) for row in rows]


def _old_grants(path: Path) -> list[Change]:
    data = _json(path) if path.exists() else None
    rows = [{"app": app, "device": grant["device"], "cwd": grant["cwd"]} for app, grant in dict(data or {}).items()]
    return [_inserting("file_grants", row) for row in rows]


def _inserting(table: str, row: dict[str, Any]) -> Change:
    return lambda conn: _insert(conn, table, row)


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    conn.execute(f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))
