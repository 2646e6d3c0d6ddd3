"""An app's versions, as the commands see them: checkpoint, close, open, restore, fork, export, import, history."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from migrated._names import check_app_name
from migrated.checkpoint import Store, VersionInfo
from migrated.daemon import _code
from migrated.daemon._exports import ExportTrust, Signer
from migrated.daemon._records import AppRecord, AppSpec, State
from migrated.daemon._runner import Captured
from migrated.daemon.apps._checkpointer import Checkpointer
from migrated.daemon.apps._files import code_of, export_file, read_export_file, spec_from_code
from migrated.daemon.apps._registry import AppRegistry
from migrated.daemon.apps._table import AppTable
from migrated.errors import AppExistsError, AppStateError

__all__ = ["AppVersions"]


class AppVersions:
    """The version commands over the app table (runs) and the store (versions)."""

    def __init__(
        self,
        table: AppTable,
        registry: AppRegistry,
        checkpointer: Checkpointer,
        store: Store,
        exports: ExportTrust,
        code_dir: Path,
    ) -> None:
        self.table = table
        self.registry = registry
        self.checkpointer = checkpointer
        self.store = store
        self._exports = exports
        self._code_dir = code_dir

    async def checkpoint(self, name: str, kind: str = "manual", message: str = "") -> tuple[VersionInfo, Captured]:
        """Capture a running app between two events and store it as a new version; the app keeps running."""
        record = self.registry.get(name)
        async with record.lock:
            return await asyncio.shield(self.checkpointer.take(record, kind, message))

    async def freeze(self, name: str, message: str) -> VersionInfo:
        """Checkpoint a running app for a move (kind ``move``) and hold it frozen until stopped or resumed."""
        record = self.registry.get(name)
        async with record.lock:
            info, _ = await asyncio.shield(self.checkpointer.take(record, "move", message, hold=True))
        return info

    async def close(self, name: str, why: str = "closed by mig close") -> AppRecord:
        """Checkpoint a running app and stop it; it stays listed as closed, to be opened again."""
        record = self.registry.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; close it there, or move it back first")
        async with record.lock:
            await asyncio.shield(self.checkpointer.take(record, "close", why, hold=True))
            record.closing = True
            await self.table.stop(name, reason=why)  # the app is frozen since its capture
        return record

    async def open(self, name: str, version: int = 0) -> AppRecord:
        """Thaw an app that does not run from its latest good version, or from ``version``."""
        record = self.registry.get(name)
        async with record.lock:
            if record.not_here():
                raise AppStateError(f"{record.not_here()}; it is not closed")
            if record.running:
                raise AppStateError(f"{name!r} is running already; mig close {name} first to open another version")
            if not record.version:
                raise AppStateError(f"{name!r} has no checkpoint to open; start it again with mig run")
            if version:
                await asyncio.to_thread(self.store.get_version, name, version)
            record.console.reopen()
            await self.table.start(record, record.spec.load_request(str(self.store.path), version))
            await self.registry.save(record, State.RUNNING)
        return record

    async def restore(self, name: str, version: int) -> AppRecord:
        """Make ``version`` the latest as a new version (history is kept); a running app goes on from it."""
        record = self.registry.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; move it back here to restore a version")
        await asyncio.to_thread(self.store.get_version, name, version)
        was_running = record.running
        if was_running:
            await self.checkpoint(name, "manual", f"before restore to version {version}")
            await self.table.stop(name, reason=f"restoring version {version}")
        info = await asyncio.to_thread(self.store.restore, name, version, f"restored version {version}")
        record.version = info.version
        await record.console.note(f"{name} restored version {version} as version {info.version}")
        if was_running:
            return await self.open(name, info.version)
        return record

    async def fork(self, name: str, new_name: str, version: int = 0) -> AppRecord:
        """A new, closed app from a version of ``name`` (its latest by default), sharing every chunk."""
        source = self.registry.get(name)
        spec = dataclasses.replace(source.spec, name=new_name)
        check_app_name(new_name)
        if new_name in self.registry:
            raise AppExistsError(f"an app called {new_name!r} exists already; choose another name for the fork")
        info = await asyncio.to_thread(self.store.fork, name, new_name, version or None)
        record = await self._add_closed(spec, info.version)
        await record.console.note(f"{new_name} forked from {name} version {version or source.version}")
        return record

    async def export(self, name: str, path: str, version: int = 0) -> tuple[VersionInfo, int]:
        """Write a version with its chunks and code to one signed file (replaced whole, never left half written)."""
        self.registry.get(name)
        info = await asyncio.to_thread(self.store.get_version, name, version) if version else None
        info = info or await asyncio.to_thread(self.store.latest, name)
        if info is None:
            raise AppStateError(f"{name!r} has no checkpoint to export; mig checkpoint {name} takes one")
        sign = self._exports.sign
        written = await asyncio.to_thread(export_file, self.store, name, info.version, Path(path), sign)
        return info, written

    async def import_(self, path: str, name: str, cwd: str) -> tuple[AppRecord, Signer]:
        """A new, closed app from an export file, and who signed it. Everything is checked first (the file whole,
        the name, the code paths, the signature); the version is stored in one transaction and its code unpacked
        beside it; a refused import leaves nothing behind."""
        export = await asyncio.to_thread(read_export_file, Path(path))
        signer = self._exports.signer(export, path)
        if name:
            check_app_name(name)
        else:
            name = check_app_name(export.manifest.app, f"{path} (an export)", "import it with --name NEW")
        await self._refuse_taken(name, "import it under another name with --name NEW")
        code = await asyncio.to_thread(code_of, export, path)
        folder = await asyncio.to_thread(_code.unpack, self._code_dir, code)
        try:
            info = await asyncio.to_thread(self.store.add_import, export, name)
        except BaseException:
            _code.discard(folder)
            raise
        try:
            folder = _code.place(folder, self._code_dir, name)
            record = await self._add_closed(spec_from_code(name, folder, export.manifest, code, cwd), info.version)
        except BaseException:
            _code.discard(folder)
            await asyncio.to_thread(self.store.remove_app, name)
            raise
        return record, signer

    async def history(self, name: str) -> list[VersionInfo]:
        """Every version of an app, oldest first."""
        self.registry.get(name)
        return await asyncio.to_thread(self.store.list_versions, name)

    async def _refuse_taken(self, name: str, fix: str) -> None:
        stored = await asyncio.to_thread(self.store.latest, name)
        if name in self.registry or stored is not None:
            raise AppExistsError(f"an app called {name!r} exists already; {fix}")

    async def _add_closed(self, spec: AppSpec, version: int) -> AppRecord:
        record = AppRecord(spec, self.registry.console(spec.name), state=State.CLOSED, version=version)
        record.ended.set()
        try:
            await self.registry.save(record, State.CLOSED, strict=True)
        except BaseException:
            record.console.destroy()
            raise
        self.registry.add(record)
        return record
