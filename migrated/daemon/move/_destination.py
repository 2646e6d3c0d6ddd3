"""The destination's side of a move: preflight, the chunks it lacks, the staged version, then the hand-off
machine's ``Destination`` decides and this module carries its actions out: record, thaw, drop, reply, refuse."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import platform
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from migrated._names import check_app_name
from migrated.checkpoint import Store, chunk_sizes, package_mismatches, package_versions
from migrated.daemon import _code
from migrated.daemon._faults import fault_point
from migrated.daemon._handoff import Action, AskDecision, DestState, Drop, Record, Refuse, Reply, SourceState, Thaw
from migrated.daemon._peers import Peers
from migrated.daemon._records import AppRecord, Place, State
from migrated.daemon._retry import ASK, retry
from migrated.daemon._spares import SpareRunners
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps import AppRegistry, AppTable, spec_from_code
from migrated.daemon.home import HomeIO
from migrated.daemon.move._journal import DestinationEntry, Journal, settings_of, settings_row
from migrated.daemon.move._transfer import receive, staging
from migrated.discovery._paired import PairedPeer
from migrated.errors import AppNotFoundError, AppStateError, MigError, UsageError
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["MoveDestination", "checked"]

log = logging.getLogger("migrated.moves")

READY_WAIT = 2.0  # seconds a pre-copy's reply waits at most for the runner readied for the app
DISK_MARGIN = 2.5  # free space the destination wants, times the state: staged chunks pass through SQLite's WAL
_MIGRATION_ID = re.compile(r"[0-9a-f]{32}")


def checked(ref: pb.MigrationRef) -> pb.MigrationRef:
    """A migration named in a peer's message, refused unless well formed (a paired peer can still be buggy)."""
    if not _MIGRATION_ID.fullmatch(ref.id) or ref.epoch < 1:
        raise UsageError(f"the message names no valid migration (id {ref.id[:40]!r}, epoch {ref.epoch})")
    check_app_name(ref.app, "the peer's message")
    return ref


class MoveDestination:
    """Apps moving here."""

    def __init__(
        self,
        registry: AppRegistry,
        table: AppTable,
        home: HomeIO,
        peers: Peers,
        journal: Journal,
        store: Store,
        spares: SpareRunners,
        tasks: Tasks,
        state_dir: Path,
        host: str,
    ) -> None:
        self.registry = registry
        self.table = table
        self.home = home
        self.peers = peers
        self.journal = journal
        self.store = store
        self._spares = spares
        self._tasks = tasks
        self._state_dir = state_dir
        self._code_dir = state_dir / "code"
        self.host = host
        self._arrivals: dict[str, tuple[list[bytes], list[str]]] = {}  # a rehome's console lines and unread input
        self._thawing: dict[str, asyncio.Task[AppRecord | MigError | None]] = {}  # a COMMIT repeated meanwhile waits

    async def preflight(self, request: pb.PreflightRequest) -> list[str]:
        """Why the app could not run here, one phrase each (empty: it can). The room it needs is for the chunks
        this host lacks (a move back, or one after a move cut short, needs less)."""
        checked(request.migration)
        manifest = request.manifest
        problems = []
        theirs, ours = manifest.runtime.python_version, platform.python_version()
        if theirs.rsplit(".", 1)[0] != ours.rsplit(".", 1)[0]:
            problems.append(f"it ran on Python {theirs}, this host has {ours}")
        installed = {name: None for name in importlib.metadata.packages_distributions()}
        problems += package_mismatches(manifest, package_versions(installed))  # type: ignore[arg-type]
        free = shutil.disk_usage(self._state_dir).free
        sizes = chunk_sizes(manifest)
        lacking = sum(sizes[digest] for digest in await asyncio.to_thread(self.store.missing, sizes))
        if free < lacking * DISK_MARGIN:
            problems.append(f"this host has {free / 2**20:.0f} MiB free, the app needs {lacking / 2**20:.0f} MiB")
        record = self.registry.find(request.migration.app)
        if record is not None and record.state is not State.AWAY:
            problems.append(f"an app called {request.migration.app!r} already exists on {self.host}")
        return problems

    async def missing(self, hashes: list[bytes]) -> list[bytes]:
        """Which of ``hashes`` this store lacks, in the order given."""
        lacking = await asyncio.to_thread(self.store.missing, hashes)
        return [digest for digest in hashes if digest in lacking]

    async def stage(self, requests: AsyncIterator[pb.StageRequest]) -> pb.StageReply:
        """Store an incoming version under a staging name; nothing is loaded. The first one of a move (its
        pre-copy) readies a runner for the app, and the reply waits for it (``READY_WAIT`` s at most): the freeze
        that follows then waits for none of it. Each later one (a pre-copy round, the final copy) supersedes the
        versions staged before it, which go in the background, so the adoption at the commit has one to drop."""
        ref, manifest, reply = await receive(requests, self.store, self.host, self._admit)
        ahead = {"modules": list(manifest.modules), "store": str(self.store.path), "app": staging(ref.id),
                 "version": reply.version}  # fmt: skip
        readied = self._tasks.spawn(self._spares.ready_for(ref.id, ahead), f"runner for {ref.app}")
        if reply.version > 1:  # a later pre-copy round or the final copy: the versions staged before are not needed
            older = list(range(1, reply.version))
            self._tasks.spawn(asyncio.to_thread(self.store.delete_versions, staging(ref.id), older), "staged before")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(readied), READY_WAIT)
        return reply

    def _admit(self, ref: pb.MigrationRef) -> pb.MigrationRef:
        checked(ref)
        if ref.epoch <= self._known_epoch(ref.app):
            raise AppStateError(f"epoch {ref.epoch} of {ref.app!r} is stale on {self.host}")
        return ref

    def _known_epoch(self, app: str) -> int:
        record = self.registry.find(app)
        return record.place.epoch if record is not None else -1

    async def prepare(self, request: pb.PrepareRequest, caller: PairedPeer) -> None:
        """PREPARE: the staged version is whole; record it, and wait for the decision."""
        ref = checked(request.migration)
        if await asyncio.to_thread(self.store.latest, staging(ref.id)) is None:
            raise AppStateError(f"nothing was staged for migration {ref.id} of {ref.app!r}; it cannot be prepared")
        entry = await self.journal.destination(ref.id) or _arrival(ref, request, caller)
        machine, actions = entry.machine.prepare(self._known_epoch(ref.app))
        await self._carry(_with(entry, machine.state), actions)
        if request.rehome:
            lines = [line.decode(errors="replace") for line in request.input]
            self._arrivals[ref.id] = (list(request.console), lines)
        await fault_point("destination-prepared")

    async def commit(self, request: pb.CommitRequest) -> int:
        """COMMIT: run the app here; return its runner's pid."""
        ref = checked(request.migration)
        entry = await self.journal.destination(ref.id)
        if entry is None:
            raise AppNotFoundError(f"migration {ref.id} of {ref.app!r} is not prepared on {self.host}")
        machine, actions = entry.machine.commit()
        return await self._carry(_with(entry, machine.state), actions)

    async def abort(self, request: pb.AbortRequest) -> None:
        """ABORT: forget what was staged or prepared for this migration."""
        ref = checked(request.migration)
        entry = await self.journal.destination(ref.id) or DestinationEntry(ref.id, ref.app, ref.epoch, None, 0, "", "")
        machine, actions = entry.machine.abort()
        await self._carry(_with(entry, machine.state), actions)
        if machine.state is DestState.ABORTED:
            await self._drop(ref.id)

    async def recover(self, entry: DestinationEntry) -> None:
        """A restart found this migration on record: carry out what the machine says now (an app that runs
        here already is not thawed again)."""
        _, actions = entry.machine.restarted()
        record = self.registry.find(entry.app)
        if record is not None and record.running:
            actions = [action for action in actions if not isinstance(action, Thaw)]
        await self._carry(entry, actions)

    async def _carry(self, entry: DestinationEntry, actions: list[Action]) -> int:
        """Carry out the machine's actions in order; return the pid of the app that runs (0 for none)."""
        pid = 0
        for action in actions:
            if isinstance(action, Record):
                await self._record(entry, action)
            elif isinstance(action, Thaw):
                pid = await self._thaw_once(entry)
            elif isinstance(action, Drop):
                await self._drop(entry.id)
            elif isinstance(action, Refuse):
                if entry.state is DestState.ABORTED:  # a stage that came after the abort: it goes too
                    await self._drop(entry.id)
                raise AppStateError(action.reason)
            elif isinstance(action, Reply) and not pid and entry.state is DestState.COMMITTED:
                pid = await self._running_pid(entry)
            elif isinstance(action, AskDecision):
                self._tasks.spawn(self._ask(entry), f"ask {entry.id}")
        return pid

    async def _record(self, entry: DestinationEntry, action: Record) -> None:
        try:
            await self.journal.record(entry)
        except MigError as exc:
            if action.state is not DestState.ABORTED:
                raise
            log.warning("%s", exc.message)  # a full disk: drop the staged chunks all the same, they free space
        if action.state is DestState.COMMITTED:
            await fault_point("destination-committed")

    async def _drop(self, migration: str) -> None:
        self._spares.forget(migration)
        try:
            await asyncio.to_thread(self.store.remove_app, staging(migration))
        except MigError as exc:
            log.warning("the staged version of migration %s stays until gc: %s", migration[:8], exc.message)

    async def _running_pid(self, entry: DestinationEntry) -> int:
        """A COMMIT repeated: the app runs here (its thaw may have been cut short by a restart: thaw it now)."""
        record = self.registry.find(entry.app)
        if (record is None or not record.running) and not entry.left and not entry.closed:
            return await self._thaw_once(entry)
        return record.pid if record is not None else 0

    async def _thaw_once(self, entry: DestinationEntry) -> int:
        """The thaw of a committed migration; a second COMMIT (a retry, or the one a restart asks for) that
        arrives while it runs waits for the same thaw instead of starting a second runner."""
        task = self._thawing.get(entry.id)
        if task is None:
            task = self._tasks.spawn(self._thaw_or_error(entry), f"thaw {entry.app}")
            self._thawing[entry.id] = task
            task.add_done_callback(lambda _: self._thawing.pop(entry.id, None))
        record = await asyncio.shield(task)  # the caller may go; the thaw must not
        if isinstance(record, MigError):
            raise record
        if record is None:
            raise AppStateError(f"{entry.app!r} could not be started on {self.host}; see its daemon's log")
        return record.pid

    async def _thaw_or_error(self, entry: DestinationEntry) -> AppRecord | MigError:
        try:
            return await self._thaw(entry)
        except MigError as exc:
            log.warning("the thaw of %s failed: %s", entry.app, exc.message)
            return exc

    async def _thaw(self, entry: DestinationEntry) -> AppRecord:
        started = time.perf_counter()
        record = await self._thaw_here(entry)
        log.info("thawed %s in %.0f ms", entry.app, (time.perf_counter() - started) * 1000)
        return record

    async def _thaw_here(self, entry: DestinationEntry) -> AppRecord:
        name, staged = entry.app, staging(entry.id)
        if await asyncio.to_thread(self.store.latest, staged) is not None:
            message = f"moved from {entry.source_name}"
            await asyncio.to_thread(self.store.adopt, staged, entry.staged_version, name, message)
        info, manifest, code = await asyncio.to_thread(self.store.load_code, name)
        record = self.registry.find(name)
        if record is not None and record.state is State.AWAY:
            spec = record.spec  # it comes home
        else:
            folder = _code.place(await asyncio.to_thread(_code.unpack, self._code_dir, code), self._code_dir, name)
            spec = spec_from_code(name, folder, manifest, code, str(folder)).with_settings(settings_of(entry.settings))
        if entry.closed:
            self._spares.forget(entry.id)
            await self.home.closed(name)
            return await self.table.arrive_closed(spec, info.version, entry.epoch)
        home_here = entry.home_device == self.peers.identity.device_id
        files = (entry.files_home, entry.files_home_name)
        if files[0] == self.peers.identity.device_id:
            files = ("", "")  # its files come home with it
            await self.home.revoke_files(name)
        place = Place(entry.epoch, "", "", "" if home_here else entry.home, "" if home_here else entry.home_device,
                      *files)  # fmt: skip
        console, lines = self._arrivals.pop(entry.id, ([], []))
        record = await self.table.arrive(spec, info.version, place, console, readied=entry.id)
        for line in lines:
            self.home.input(record, line)
        return record

    async def _ask(self, entry: DestinationEntry) -> None:
        """A prepared migration whose decision this host missed: ask its source until it answers."""

        async def ask() -> str:
            peer, _ = self.peers.paired_target(entry.source)
            reply = await self.peers.call(peer, "Decision", pb.DecisionRequest(migration=entry.ref), 10)
            if reply.state not in (SourceState.HANDED_OFF.value, SourceState.DONE.value, SourceState.ABORTED.value):
                raise AppStateError(f"migration {entry.id[:8]} of {entry.app!r} is not decided yet")
            return str(reply.state)

        state = await retry(ask, ASK, f"asking about migration {entry.id[:8]} of {entry.app}")
        if state == SourceState.ABORTED.value:
            await self.abort(pb.AbortRequest(migration=entry.ref))
        else:
            await self.commit(pb.CommitRequest(migration=entry.ref))


def _arrival(ref: pb.MigrationRef, request: pb.PrepareRequest, caller: PairedPeer) -> DestinationEntry:
    """The journal entry of a migration PREPARE announces."""
    return DestinationEntry(
        ref.id, ref.app, ref.epoch, None, request.staged_version, caller.device_id, caller.name,
        home=request.home, home_device=request.home_device_id, closed=request.closed, rehome=request.rehome,
        files_home=request.files_home, files_home_name=request.files_home_name,
        settings=settings_row(request.settings),
    )  # fmt: skip


def _with(entry: DestinationEntry, state: DestState | None) -> DestinationEntry:
    return replace(entry, state=state)
