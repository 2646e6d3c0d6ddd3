"""The move journal: where each migration this host takes part in stands, as source or as destination, kept in
the daemon's ``moves`` table. Each state is written (``record``) before the message that depends on it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from migrated.daemon._db import Change, Db
from migrated.daemon._handoff import Destination, DestState, Source, SourceState
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["DestinationEntry", "Journal", "Rehome", "SourceEntry", "settings_of", "settings_row"]

log = logging.getLogger("migrated.moves")

_COLUMNS = "id, role, app, epoch, state, peer, peer_name, version, detail"


@dataclass(frozen=True, slots=True)
class Rehome:
    """A move that hands the home role over: the new home, and the host that serves the app's files then ("":
    the new home itself), from which folder."""

    home: str  # device id
    home_name: str
    files_home: str
    files_home_name: str
    cwd: str


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """A migration as its source recorded it."""

    id: str
    app: str
    epoch: int
    state: SourceState
    version: int  # the frozen version, once frozen
    peer: str  # the destination's device id
    peer_name: str = ""
    resume: bool = True  # whether the app goes on here on abort (not for an app moved closed)
    rehome: Rehome | None = None

    @property
    def machine(self) -> Source:
        """The hand-off machine in this state."""
        return Source(self.id, self.app, self.epoch, self.state, self.version)

    def at(self, source: Source) -> SourceEntry:
        """This entry with the machine's new state."""
        return dataclasses.replace(self, state=source.state, version=source.version)


@dataclass(frozen=True, slots=True)
class DestinationEntry:
    """A migration as its destination recorded it."""

    id: str
    app: str
    epoch: int
    state: DestState | None
    staged_version: int
    source: str  # the source's device id
    source_name: str
    home: str = ""
    home_device: str = ""
    closed: bool = False  # the app arrives closed and stays closed
    rehome: bool = False  # its home moves here with it
    files_home: str = ""
    files_home_name: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    left: bool = False  # it moved on from here since: a restart must not thaw it from this arrival

    @property
    def machine(self) -> Destination:
        """The hand-off machine in this state."""
        return Destination(self.id, self.app, self.epoch, self.state)

    @property
    def ref(self) -> pb.MigrationRef:
        """The migration as messages name it."""
        return pb.MigrationRef(id=self.id, app=self.app, epoch=self.epoch)


Entry = SourceEntry | DestinationEntry


def settings_row(settings: pb.AppSettings) -> dict[str, Any]:
    """An app's settings as the journal keeps them."""
    return {
        "kind": settings.kind,
        "app_class": settings.app_class,
        "args": list(settings.args),
        "autosave": settings.autosave,
        "keep": settings.keep,
        "restart": settings.restart,
        "cwd": settings.cwd,
    }


def settings_of(row: dict[str, Any]) -> pb.AppSettings:
    """An app's settings from the journal."""
    return pb.AppSettings(**{key: row[key] for key in settings_row(pb.AppSettings()) if key in row})


class Journal:
    """The ``moves`` table, typed."""

    def __init__(self, db: Db) -> None:
        self.db = db

    async def record(self, entry: Entry, *more: Change) -> None:
        """Write ``entry`` (and ``more``, in the same transaction) durably."""
        await self.db.write(save(entry), *more)

    async def source(self, migration: str) -> SourceEntry | None:
        """The source entry of a migration."""
        found = await self._select("WHERE id = ? AND role = 'source'", (migration,))
        return found[0] if found and isinstance(found[0], SourceEntry) else None

    async def destination(self, migration: str) -> DestinationEntry | None:
        """The destination entry of a migration."""
        found = await self._select("WHERE id = ? AND role = 'destination'", (migration,))
        return found[0] if found and isinstance(found[0], DestinationEntry) else None

    async def all(self) -> list[Entry]:
        """Every entry, oldest first."""
        return await self._select("", ())

    async def of_app(self, app: str) -> list[Entry]:
        """The entries of one app, oldest first."""
        return await self._select("WHERE app = ?", (app,))

    async def _select(self, where: str, args: tuple[Any, ...]) -> list[Entry]:
        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(f"SELECT {_COLUMNS} FROM moves {where} ORDER BY rowid", args).fetchall()

        entries = []
        for row in await asyncio.to_thread(self.db.read, read):
            try:
                entries.append(_entry(row))
            except (ValueError, KeyError, TypeError) as exc:  # a row a newer migrated wrote, or damage
                log.warning("move record %s of %s cannot be read (%s); it is left out", row[0], row[2], exc)
        return entries


def save(entry: Entry) -> Change:
    """The change that writes ``entry``."""
    if isinstance(entry, SourceEntry):
        rehome = dataclasses.asdict(entry.rehome) if entry.rehome else None
        detail: dict[str, Any] = {"resume": entry.resume, "rehome": rehome}
        values = (entry.id, "source", entry.app, entry.epoch, entry.state.value, entry.peer, entry.peer_name,
                  entry.version, json.dumps(detail))  # fmt: skip
    else:
        detail = {key: getattr(entry, key) for key in _DESTINATION_DETAIL}
        values = (entry.id, "destination", entry.app, entry.epoch, entry.state.value if entry.state else "",
                  entry.source, entry.source_name, entry.staged_version, json.dumps(detail))  # fmt: skip

    def change(conn: sqlite3.Connection) -> None:
        conn.execute(f"INSERT OR REPLACE INTO moves ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)

    return change


_DESTINATION_DETAIL = ("home", "home_device", "closed", "rehome", "files_home", "files_home_name", "settings", "left")


def _entry(row: tuple[Any, ...]) -> Entry:
    migration, role, app, epoch, state, peer, peer_name, version, detail_text = row
    detail = json.loads(detail_text)
    if role == "source":
        rehome = Rehome(**detail["rehome"]) if detail.get("rehome") else None
        return SourceEntry(migration, app, epoch, SourceState(state), version, peer, peer_name,
                           bool(detail.get("resume", True)), rehome)  # fmt: skip
    kept = {key: detail[key] for key in _DESTINATION_DETAIL if key in detail}
    return DestinationEntry(migration, app, epoch, DestState(state) if state else None, version, peer, peer_name,
                            **kept)  # fmt: skip
