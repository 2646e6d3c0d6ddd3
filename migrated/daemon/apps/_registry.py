"""The app table's records: every app this daemon knows, by name, kept across restarts in the daemon's tables."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from migrated.checkpoint import Store
from migrated.daemon._console import Console
from migrated.daemon._db import Change, Db
from migrated.daemon._records import AppRecord, State
from migrated.daemon.apps import _rows
from migrated.errors import AppNotFoundError, StorageError

__all__ = ["AppRegistry"]

log = logging.getLogger("migrated.daemon")


class AppRegistry:
    """The records by name, their consoles, and what a restart needs of each (``save``)."""

    def __init__(self, db: Db, store: Store, console_dir: Path, console_lines: int, console_bytes: int) -> None:
        self.db = db
        self.store = store
        self._apps: dict[str, AppRecord] = {}
        self._console_dir = console_dir
        self._console_lines = console_lines
        self._console_bytes = console_bytes
        self._unsaved: dict[str, AppRecord] = {}  # records the disk refused to keep, saved again when it takes them

    def __iter__(self) -> Iterator[AppRecord]:
        return iter(list(self._apps.values()))

    def __contains__(self, name: str) -> bool:
        return name in self._apps

    def find(self, name: str) -> AppRecord | None:
        """The app called ``name``, if there is one."""
        return self._apps.get(name)

    def get(self, name: str) -> AppRecord:
        """The app called ``name``; ``AppNotFoundError`` if there is none."""
        try:
            return self._apps[name]
        except KeyError:
            raise AppNotFoundError(f"no app is called {name!r}; mig ps lists the apps") from None

    def current(self, record: AppRecord) -> bool:
        """Whether ``record`` is still the table's record of its app (not removed, forgotten or replaced)."""
        return self._apps.get(record.name) is record

    def console(self, name: str, keep: bool = False, session: float = 0.0) -> Console:
        """A console for the app called ``name`` (``keep``: take up what an earlier run of the daemon left, numbered
        in ``session``)."""
        return Console(self._console_lines, self._console_bytes, self._console_dir / name, keep, session)

    def add(self, record: AppRecord) -> None:
        """Put ``record`` in the table (it is saved by the caller)."""
        self._apps[record.name] = record

    def drop(self, record: AppRecord) -> None:
        """Take ``record`` out of the table without a trace (a run that never started)."""
        if self._apps.get(record.name) is record:
            del self._apps[record.name]
        record.console.destroy()

    async def forget(self, name: str, *more: Change) -> None:
        """Drop an app from the table, with its console (its versions stay in the store), with ``more`` changes in
        the same transaction."""
        record = self._apps.pop(name, None)
        self._unsaved.pop(name, None)
        if record is not None:
            record.console.destroy()
        await self.db.write(_rows.delete(name), *more)

    async def save(self, record: AppRecord, state: State | None = None, *more: Change, strict: bool = False) -> None:
        """Keep what a restart needs of ``record`` (with ``more`` changes in the same transaction). A disk that
        refuses is logged and tried again with the next save (``strict``: raise ``StorageError`` instead)."""
        try:
            await self.db.write(_rows.save(record, state), *more)
        except StorageError as exc:
            if strict:
                raise
            if record.name not in self._unsaved:
                log.warning("%s: %s", record.name, exc.message)
            self._unsaved[record.name] = record
            return
        self._unsaved.pop(record.name, None)
        for other in list(self._unsaved.values()):  # the disk takes writes again
            if self.current(other):
                await self.save(other)
            else:
                self._unsaved.pop(other.name, None)

    def changes(self, record: AppRecord, state: State | None = None) -> Change:
        """The change that keeps ``record``, for a caller's own transaction."""
        return _rows.save(record, state)

    async def load_saved(self) -> None:
        """Bring back the apps an earlier run of the daemon knew: closed ones stay closed and openable."""
        for saved in await asyncio.to_thread(self.db.read, _rows.load):
            record = await self._take_up(saved)
            self._apps[record.name] = record
            if record.state is not State.AWAY:
                await self.save(record)
        if self._console_dir.is_dir():
            for directory in self._console_dir.iterdir():
                if directory.name not in self._apps:  # an app removed while the daemon was not running
                    shutil.rmtree(directory, ignore_errors=True)

    async def _take_up(self, saved: _rows.Saved) -> AppRecord:
        name = saved.spec.name
        latest = await asyncio.to_thread(self.store.latest, name)
        # A visitor keeps its lines too, in their numbering, until its home has them (a link carries them there).
        console = self.console(name, keep=saved.place.home_device == "" or saved.console_session > 0,
                               session=saved.console_session)  # fmt: skip
        record = AppRecord(saved.spec, console, place=saved.place, version=latest.version if latest else 0)
        if console.log.next_seq > 1:
            await console.note("the daemon restarted; the lines above are from before")
        if saved.state == State.AWAY.value:
            record.state = State.AWAY
            record.remote.console_session, record.remote.console_applied = console.log.cursor
            return record
        if saved.state in (State.EXITED.value, State.CRASHED.value):  # it had ended: it stays as it ended
            record.state, record.reason = State(saved.state), saved.reason
        elif saved.state == State.CLOSED.value and latest is not None:
            record.state, record.reason = State.CLOSED, saved.reason
        elif latest is not None:
            record.state = State.CLOSED
            record.reason = f"the daemon stopped while it ran; mig open {name} resumes it from version {latest.version}"
        else:
            record.state = State.CRASHED
            record.reason = "the daemon stopped while it ran, before it had a checkpoint"
        record.ended.set()
        return record
