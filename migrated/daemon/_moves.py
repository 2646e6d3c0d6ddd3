"""Moving apps between hosts: the source's coordinator and the destination's side of the hand-off.

The decisions are ``_handoff``'s; this module carries them out: chunks over the peer port (only those the
destination lacks), a journal of every migration in ``DIR/migrations/`` (each state on disk before the message
that depends on it), the freeze, the thaw, and the console of a moved app flowing back to its home.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc.aio

from migrated._names import check_app_name
from migrated.checkpoint import Codec, StoredChunk, chunk_hashes, package_mismatches, package_versions
from migrated.daemon import _code
from migrated.daemon._apps import AppRecord, AppSpec, AppTable, State, _spec_from_code
from migrated.daemon._handoff import (
    Abort,
    Action,
    AskDecision,
    Commit,
    Destination,
    DestState,
    Drop,
    Prepare,
    Record,
    Refuse,
    Reply,
    Resume,
    Retire,
    Source,
    SourceState,
    Thaw,
)
from migrated.daemon._home import HomeIO
from migrated.daemon._peers import Peers
from migrated.discovery._paired import PairedPeer
from migrated.errors import (
    AppNotFoundError,
    AppStateError,
    CheckpointError,
    MigError,
    PeerError,
    StaleCopyError,
    StateDirError,
    UsageError,
)
from migrated.transport._errors import error_name
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["MoveProgress", "Moves"]

log = logging.getLogger("migrated.moves")

BATCH_BYTES = 1 << 20  # chunk bytes per Stage message
CONSOLE_TAIL = 10_000  # console lines an old home hands to the new one
COMMIT_WAIT = 30.0  # seconds mig move waits for the destination to confirm; then it is asked in the background
RETRY_DELAY = 0.5
DISK_MARGIN = 2.5  # free space the destination wants, times the state: staged chunks pass through SQLite's WAL


async def fault_point(name: str) -> None:
    """Where the fault tests stop a daemon: with ``MIGRATED_FAULT_PAUSE=NAME`` it logs and waits here for ever,
    so a test can kill it at exactly this step of a hand-off. Unset in normal runs, it costs a dict lookup."""
    if os.environ.get("MIGRATED_FAULT_PAUSE") == name:
        log.warning("paused at %s (MIGRATED_FAULT_PAUSE)", name)
        await asyncio.Event().wait()


@dataclass(slots=True)
class MoveProgress:
    """How far a move is, for ``mig move``'s progress bar."""

    phase: str
    bytes_sent: int = 0
    bytes_total: int = 0
    chunks_sent: int = 0
    chunks_skipped: int = 0
    downtime: float = 0.0


Report = Callable[[MoveProgress], None]


class Journal:
    """Every migration this host takes part in: one JSON file each, replaced whole and fsynced."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, exist_ok=True)

    def save(self, entry: dict[str, Any]) -> None:
        """Write ``entry`` (it has an ``id``) durably; StateDirError (nothing half written) if it cannot."""
        path = self.directory / f"{entry['role']}-{entry['id']}.json"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(json.dumps(entry).encode())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateDirError(
                f"cannot record migration {entry['id'][:8]} in {self.directory} ({exc.strerror}); free some space"
            ) from None

    def get(self, role: str, migration: str) -> dict[str, Any] | None:
        """The entry of one migration in one role."""
        try:
            return dict(json.loads((self.directory / f"{role}-{migration}.json").read_bytes()))
        except FileNotFoundError:
            return None

    def all(self) -> list[dict[str, Any]]:
        """Every entry."""
        entries = []
        for path in sorted(self.directory.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                entries.append(dict(json.loads(path.read_bytes())))
        return entries


class Moves:
    """This host's moves, as source and as destination."""

    def __init__(
        self, apps: AppTable, peers: Peers, state_dir: Path, host: str, tasks: asyncio.TaskGroup, home_io: HomeIO
    ) -> None:
        self.apps = apps
        self.peers = peers
        self.home_io = home_io
        home_io.on_stale = self._stop_stale
        home_io.on_visitor = self._start_forwarder
        home_io.fence = self.fence
        self.store = apps.store
        self.host = host
        self.journal = Journal(state_dir / "migrations")
        self.code_dir = state_dir / "code"
        self.state_dir = state_dir
        self._tasks = tasks
        self._forwarders: dict[str, asyncio.Task[None]] = {}
        self._session = time.time()  # this daemon's console numbering starts anew with each start
        self._forwarded: dict[str, int] = {}  # the next console line each forwarder will send
        self._forwarded_more = asyncio.Event()  # set whenever a forwarder got lines home
        self._background: set[asyncio.Task[None]] = set()
        self._closed_moves: set[str] = set()  # moves of apps that did not run: undoing one runs nothing
        self._rehomes: dict[str, dict[str, str]] = {}  # moves that hand the home role over, by migration
        self._arrivals: dict[str, list[bytes]] = {}  # console lines an old home sent with a prepared rehome
        self._arrived_input: dict[str, list[str]] = {}  # and the input it had not delivered
        self._thawing: dict[str, asyncio.Task[AppRecord]] = {}  # by migration: a COMMIT repeated meanwhile waits

    def _spawn(self, work: Any, name: str) -> None:
        """Run ``work`` in the daemon's task group until done or until ``close``."""
        task = self._tasks.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush_consoles(self, within: float = 5.0) -> None:
        """Give the consoles of visitors (closed by a shutdown) ``within`` seconds to reach their homes."""
        forwarders = [task for task in self._forwarders.values() if not task.done()]
        if forwarders:
            await asyncio.wait(forwarders, timeout=within)

    def close(self) -> None:
        """Stop retrying and forwarding (the daemon stops); the journal says where each migration stands."""
        for task in [*self._background, *self._forwarders.values()]:
            task.cancel()

    # -- source

    async def move(
        self,
        name: str,
        host: str,
        report: Report,
        stop_and_copy: bool = False,
        closed: bool = False,
        stay_closed: bool = False,
        rehome: bool = False,
        move_files: bool = False,
    ) -> tuple[AppRecord, str]:
        """Move a running app to a paired peer: pre-copy, freeze, final copy, hand-off; return it and the peer.
        ``stop_and_copy`` leaves out the pre-copy (the baseline a benchmark compares against); ``closed`` moves
        an app that does not run, from its latest version, and runs it there (``mig open --on``), or, with
        ``stay_closed``, only hands it over closed (an app closed away from home goes back home). ``rehome`` hands
        the home role over with the app (its console, sockets and input); its files stay served by this host
        unless ``move_files``."""
        record = self.apps.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; it can be moved only from the host that runs it")
        if rehome and record.home_device:
            raise AppStateError(f"{name!r}'s home is {record.home}; only its home can hand the home role over")
        if closed:
            if record.running:
                raise AppStateError(f"{name!r} is running; `mig move {name} {host}` moves a running app")
            if not record.version:
                raise AppStateError(f"{name!r} has no checkpoint to open; start it again with mig run")
        elif record.state is not State.RUNNING:
            raise AppStateError(
                f"{name!r} is not running (it {record.state.value}); `mig open {name} --on {host}` moves a closed app"
            )
        if host in (self.host, str(self.peers.listen), self.peers.identity.device_id):
            raise UsageError(f"{name!r} runs on {host} already")
        peer, address = self.peers.paired_target(host)
        stub = self.peers.stub(peer, address)
        plan = self._rehome_plan(record, peer, move_files) if rehome else None
        record.moving = True
        source = Source(uuid.uuid4().hex, name, record.epoch + 1)
        if closed:
            self._closed_moves.add(source.id)
        if plan is not None:
            self._rehomes[source.id] = plan
        self._record_source(source, peer)
        frozen_at = 0.0
        try:
            if closed:
                report(MoveProgress("copy"))
                frozen_at = time.perf_counter()
                manifest = await asyncio.to_thread(self.store.manifest, name, record.version)
                await self._preflight(stub, source, manifest, peer)
                source = self._carry_source(*source.frozen(record.version), peer)
                staged = await self._send(stub, source, manifest, "copy", report)
            if not stop_and_copy and not closed:
                report(MoveProgress("pre-copy"))
                info, _ = await self.apps.checkpoint(name, "move", f"pre-copy for the move to {peer.name}")
                manifest = await asyncio.to_thread(self.store.manifest, name, info.version)
                await self._preflight(stub, source, manifest, peer)
                await self._send(stub, source, manifest, "pre-copy", report)
            if not closed:
                report(MoveProgress("freeze"))
                frozen_at = time.perf_counter()
                info = await self.apps.freeze(name, f"moved to {peer.name}")
                source = self._carry_source(*source.frozen(info.version), peer)
                await fault_point("source-frozen")
                manifest = await asyncio.to_thread(self.store.manifest, name, info.version)
                if stop_and_copy:
                    await self._preflight(stub, source, manifest, peer)
                staged = await self._send(stub, source, manifest, "final copy", report)
            report(MoveProgress("hand-off"))
            await self._flush_forwarder(record)  # a visitor's lines reach home before the next host's do
            await fault_point("source-before-prepare")
            await stub.Prepare(self._prepare_request(source, record, staged.version, stay_closed), timeout=60)
        except BaseException as exc:
            await self._abort(source, record, peer, frozen_at > 0 and not closed)
            raise self._move_error(exc, name, peer) from None
        await fault_point("source-prepared")
        source = self._carry_source(*source.prepared(), peer)  # HANDED_OFF is on disk: no way back
        await fault_point("source-handed-off")
        prepared_at = time.perf_counter()
        pid = await self._commit(stub, source, peer)
        await fault_point("source-committed")
        downtime = time.perf_counter() - frozen_at
        log.info(
            "%s moved to %s: frozen %.0f ms (freeze and copy %.0f ms, commit and thaw %.0f ms)",
            name, peer.name, downtime * 1000, (prepared_at - frozen_at) * 1000,
            (time.perf_counter() - prepared_at) * 1000,
        )  # fmt: skip
        await self._retire(record, source, peer, pid)
        report(MoveProgress("done", downtime=downtime))
        return record, peer.name

    def _prepare_request(self, source: Source, record: AppRecord, staged: int, closed: bool) -> pb.PrepareRequest:
        plan = self._rehomes.get(source.id)
        request = pb.PrepareRequest(
            migration=_ref(source),
            staged_version=staged,
            settings=_settings(record.spec),
            home=record.home or self.host,
            home_device_id=record.home_device or self.peers.identity.device_id,
            closed=closed,
            files_home=record.files_home,
            files_home_name=record.files_home_name,
        )
        if plan is not None:
            request.rehome = True
            request.home, request.home_device_id = plan["home_name"], plan["home"]
            request.files_home, request.files_home_name = plan["files_home"], plan["files_home_name"]
            tail = record.console.log.read(record.console.log.tail_start(CONSOLE_TAIL), CONSOLE_TAIL, 4 << 20)
            request.console.extend(data for _, data in tail.lines)
            record.handing_home = plan["home_name"]  # what is typed here from now on would be left behind
            request.input.extend(self.home_io.unhandled_input(record.name))
        return request

    def _rehome_plan(self, record: AppRecord, peer: PairedPeer, move_files: bool) -> dict[str, str]:
        """Who serves the app's files once ``peer`` is its home."""
        files = ("", "") if move_files else (record.files_home, record.files_home_name)
        if not move_files and not record.files_home:
            files = (self.peers.identity.device_id, self.host)  # this host goes on serving them
        if files[0] == peer.device_id:
            files = ("", "")
        if files[0] and files[0] != self.peers.identity.device_id:
            raise AppStateError(
                f"{record.name!r}'s files are served by {record.files_home_name}; rehome it with --files move, "
                f"or from {record.files_home_name}"
            )
        cwd = record.spec.home_cwd or record.spec.cwd
        return {"home": peer.device_id, "home_name": peer.name, "files_home": files[0], "files_home_name": files[1],
                "cwd": cwd}  # fmt: skip

    async def evacuate(
        self, to: str, rehome: bool = False, move_files: bool = False
    ) -> AsyncIterator[tuple[str, bool, str, float]]:
        """Move every app running here to ``to``, one after the other; one that fails stays and runs here. With
        ``rehome`` each app's home goes with it."""
        names = sorted(r.name for r in self.apps if r.state is State.RUNNING and not r.not_here())
        for name in names:
            downtime = 0.0

            def keep(update: MoveProgress) -> None:
                nonlocal downtime
                downtime = update.downtime or downtime

            try:
                _, where = await self.move(name, to, keep, rehome=rehome, move_files=move_files)
            except MigError as exc:
                yield name, False, exc.message, 0.0
                continue
            yield name, True, f"moved {name} to {where}: frozen {downtime * 1000:.0f} ms", downtime

    async def _preflight(self, stub: Any, source: Source, manifest: Any, peer: PairedPeer) -> None:
        """Refuse before anything is frozen when the destination cannot run the app."""
        request = pb.PreflightRequest(migration=_ref(source), manifest=manifest)
        problems = (await stub.Preflight(request, timeout=60)).problems
        if problems:
            raise AppStateError(f"{source.app!r} cannot run on {peer.name}: {'; '.join(problems)}; it stays here")

    async def _send(self, stub: Any, source: Source, manifest: Any, phase: str, report: Report) -> pb.StageReply:
        """Stage ``manifest`` at the destination, sending only the chunks it lacks."""
        started = time.perf_counter()
        hashes = list(dict.fromkeys(chunk_hashes(manifest)))
        missing = list((await stub.Missing(pb.MissingRequest(hashes=hashes), timeout=60)).missing)
        asked = time.perf_counter()
        chunks = await asyncio.to_thread(lambda: list(self.store.read_chunks(missing)))
        read = time.perf_counter()
        total = sum(len(chunk.data) for _, chunk in chunks)
        progress = MoveProgress(phase, 0, total, 0, len(hashes) - len(missing))
        report(replace(progress))

        async def requests() -> AsyncIterator[pb.StageRequest]:
            yield pb.StageRequest(migration=_ref(source), manifest=manifest)
            for batch in _batches(chunks):
                yield pb.StageRequest(chunks=batch)
                progress.bytes_sent += sum(len(chunk.data) for chunk in batch)
                progress.chunks_sent += len(batch)
                report(replace(progress))

        reply: pb.StageReply = await stub.Stage(requests(), timeout=3600)
        log.info(
            "%s: %s of %d chunks (%d skipped), %.1f MiB: asked %.0f ms, read %.0f ms, sent and stored %.0f ms",
            source.app, phase, len(hashes), len(hashes) - len(missing), total / 2**20, (asked - started) * 1000,
            (read - asked) * 1000, (time.perf_counter() - read) * 1000,
        )  # fmt: skip
        return reply

    async def _commit(self, stub: Any, source: Source, peer: PairedPeer) -> int:
        """Send COMMIT until the destination acknowledges (``COMMIT_WAIT`` s here, then in the background); the app
        runs nowhere meanwhile."""
        deadline = time.monotonic() + COMMIT_WAIT
        attempt = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = await stub.Commit(pb.CommitRequest(migration=_ref(source)), timeout=max(left, 1.0))
            except grpc.aio.AioRpcError as exc:
                log.warning("commit of %s to %s failed (%s); trying again", source.id, peer.name, exc.code().name)
                await asyncio.sleep(min(5.0, RETRY_DELAY * 2**attempt, max(0.0, deadline - time.monotonic())))
                attempt += 1
                continue
            self._carry_source(*source.committed(), peer)
            return int(reply.pid)
        self._spawn(self._commit_later(source, peer), f"commit {source.id}")
        raise PeerError(
            f"{peer.name} does not confirm taking {source.app!r}; it was handed off and will run there once "
            f"{peer.name} answers (this host keeps asking); `mig ps` shows it as moving meanwhile"
        )

    async def _commit_later(self, source: Source, peer: PairedPeer) -> None:
        record = self.apps.find(source.app)
        while True:
            try:
                peer_now, address = self.peers.paired_target(peer.device_id)
                reply = await self.peers.stub(peer_now, address).Commit(
                    pb.CommitRequest(migration=_ref(source)), timeout=60
                )
            except (grpc.aio.AioRpcError, MigError):
                await asyncio.sleep(2.0)
                continue
            self._carry_source(*source.committed(), peer)
            if record is not None:
                await self._retire(record, source, peer, int(reply.pid))
            return

    async def _abort(self, source: Source, record: AppRecord, peer: PairedPeer, frozen: bool) -> None:
        """Before the hand-off: tell the destination (best effort) and let the app go on here."""
        source, actions = source.failed()
        self._record_source(source, peer)
        for action in actions:
            if isinstance(action, Abort):
                self._spawn(self._send_abort(source, peer), f"abort {source.id}")
        record.moving, record.handing_home = False, ""
        if frozen and record.runner is not None and record.state is State.RUNNING:
            with contextlib.suppress(MigError):
                await record.runner.resume()
        elif record.state is State.CRASHED:  # its runner died during the move, which held its recovery back
            await self.apps.bring_back(record)

    async def _send_abort(self, source: Source, peer: PairedPeer) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, MigError):
            peer_now, address = self.peers.paired_target(peer.device_id)
            await self.peers.stub(peer_now, address).Abort(pb.AbortRequest(migration=_ref(source)), timeout=10)

    async def _retire(self, record: AppRecord, source: Source, peer: PairedPeer, pid: int) -> None:
        """The destination runs the app: end the frozen runner here without ``on_stop``; keep the record if home.

        The record stays ``moving`` (nothing opens or closes it) until it is AWAY or gone. A visitor's console
        lines were flushed home before the hand-off; what its ending adds here is not sent.
        """
        record.moving = True
        for entry in self.journal.all():  # the app left: a restart must not thaw it here from an old arrival
            if entry["role"] == "destination" and entry["app"] == record.name and not entry.get("left"):
                self.journal.save({**entry, "left": True})
        self._stop_forwarder(record.name)
        runner = record.runner
        if runner is not None and record.running:
            record.closing = True
            record.stop_reason = f"moved to {peer.name}"
            runner.kill()
            await record.ended.wait()
        record.epoch = source.epoch
        plan = self._rehomes.pop(source.id, None) or self._journal_rehome(source.id)
        if plan is not None:
            await self._hand_home_over(record, plan)
        elif record.home_device in ("", self.peers.identity.device_id):
            self._mark_away(record, peer, pid)
            record.console.reopen()
            await record.console.note(f"{record.name} moved to {peer.name} (epoch {record.epoch})")
        else:
            self.apps.forget(record.name)  # a visitor leaves; its versions stay for the next move here
        record.moving = False

    def _journal_rehome(self, migration: str) -> dict[str, str] | None:
        entry = self.journal.get("source", migration)
        return entry.get("rehome") if entry else None

    async def _hand_home_over(self, record: AppRecord, plan: dict[str, str]) -> None:
        """The app and its home went to another host: its sockets close here; its files may stay served here."""
        if plan["files_home"] == self.peers.identity.device_id:
            self.home_io.grant_files(record.name, plan["home"], plan["cwd"])
        await self.home_io.closed(record.name)
        self.apps.forget(record.name)

    def _mark_away(self, record: AppRecord, peer: PairedPeer, pid: int) -> None:
        if record.host_device != peer.device_id:  # else the fence let its copy there in already: keep its lines
            record.remote_state, record.console_applied = "", 0
        record.state, record.host, record.host_device, record.remote_pid = State.AWAY, peer.name, peer.device_id, pid
        record.home, record.home_device, record.reason = "", "", ""
        self.apps.save(record)

    async def _flush_forwarder(self, record: AppRecord, within: float = 10.0) -> None:
        """Wait until the home has every console line of this visitor (or ``within`` seconds pass)."""
        if record.name not in self._forwarders:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._forwarded.get(record.name, 1) < record.console.log.next_seq:
                    self._forwarded_more.clear()
                    await self._forwarded_more.wait()

    def _record_source(self, source: Source, peer: PairedPeer, resume: bool = True) -> None:
        resume = resume and source.id not in self._closed_moves
        rehome = self._rehomes.get(source.id) or self._journal_rehome(source.id)
        self.journal.save(
            {"role": "source", "id": source.id, "app": source.app, "epoch": source.epoch,
             "state": source.state.value, "version": source.version, "peer": peer.device_id, "resume": resume,
             "rehome": rehome}
        )  # fmt: skip

    def _carry_source(self, source: Source, actions: list[Action], peer: PairedPeer) -> Source:
        for action in actions:
            if isinstance(action, Record):
                self._record_source(source, peer)
            # Prepare, Commit and Retire are sent or done by the caller, in the order the protocol gives.
            assert isinstance(action, Record | Prepare | Commit | Retire | Abort | Resume), action
        return source

    def _move_error(self, exc: BaseException, name: str, peer: PairedPeer) -> BaseException:
        if isinstance(exc, MigError):
            return exc
        if isinstance(exc, grpc.aio.AioRpcError):
            return PeerError(
                f"moving {name!r} to {peer.name} failed: {_failure(exc, peer.name)}; it goes on running here"
            )
        return exc

    # -- destination

    def preflight(self, request: pb.PreflightRequest) -> list[str]:
        """Why the app could not run here, one phrase each (empty: it can)."""
        _checked(request.migration)
        manifest = request.manifest
        problems = []
        theirs, ours = manifest.runtime.python_version, _python_version()
        if theirs.rsplit(".", 1)[0] != ours.rsplit(".", 1)[0]:
            problems.append(f"it ran on Python {theirs}, this host has {ours}")
        problems += package_mismatches(manifest, package_versions(_all_modules()))
        free = shutil.disk_usage(self.state_dir).free
        if free < manifest.total_bytes * DISK_MARGIN:
            problems.append(
                f"this host has {free / 2**20:.0f} MiB free, the app needs {manifest.total_bytes / 2**20:.0f} MiB"
            )
        record = self.apps.find(request.migration.app)
        if record is not None and record.state is not State.AWAY:
            problems.append(f"an app called {request.migration.app!r} already exists on {self.host}")
        return problems

    async def missing(self, hashes: list[bytes]) -> list[bytes]:
        """Which of ``hashes`` this store lacks, in the order given."""
        lacking = await asyncio.to_thread(self.store.missing, hashes)
        return [digest for digest in hashes if digest in lacking]

    async def stage(self, requests: AsyncIterator[pb.StageRequest]) -> pb.StageReply:
        """Store an incoming version under a staging name; nothing is loaded."""
        first = await anext(aiter(requests))
        ref, manifest = _checked(first.migration), first.manifest
        self._check_epoch(ref)
        chunks: dict[bytes, StoredChunk] = {}

        def take(message: pb.StageRequest) -> None:
            for chunk in message.chunks:
                if chunk.codec not in _CODECS:
                    raise CheckpointError(f"a chunk of {ref.app!r} came with an unknown codec ({chunk.codec})")
                chunks[chunk.hash] = StoredChunk(Codec(chunk.codec), chunk.raw_size, chunk.data)

        take(first)
        async for message in requests:
            take(message)
        received = sum(len(chunk.data) for chunk in chunks.values())
        staged = type(manifest)()
        staged.CopyFrom(manifest)
        staged.app, staged.parent = _staging(ref.id), 0
        await fault_point("destination-staging")
        started = time.perf_counter()
        try:
            info = await asyncio.to_thread(self.store.put_version, staged, chunks)
        except (sqlite3.Error, OSError) as exc:
            raise CheckpointError(
                f"{self.host} cannot store {ref.app!r} ({exc}); free some space there and move it again"
            ) from None
        log.info("staged %s for %s: %.1f MiB stored in %.0f ms", ref.app, ref.id[:8], received / 2**20,
                 (time.perf_counter() - started) * 1000)  # fmt: skip
        return pb.StageReply(version=info.version, bytes_stored=received)

    async def prepare(self, request: pb.PrepareRequest, caller: PairedPeer) -> None:
        """PREPARE: the staged version is whole; record it, and wait for the decision."""
        ref = _checked(request.migration)
        if await asyncio.to_thread(self.store.latest, _staging(ref.id)) is None:
            raise AppStateError(f"nothing was staged for migration {ref.id} of {ref.app!r}; it cannot be prepared")
        entry = self.journal.get("destination", ref.id) or {}
        dest = _destination(ref, entry)
        dest, actions = dest.prepare(self._known_epoch(ref.app))
        for action in actions:
            if isinstance(action, Record):
                settings = request.settings
                self.journal.save(
                    {"role": "destination", "id": ref.id, "app": ref.app, "epoch": ref.epoch,
                     "state": dest.state.value if dest.state else "", "staged_version": request.staged_version,
                     "source": caller.device_id, "source_name": caller.name, "home": request.home,
                     "home_device": request.home_device_id, "closed": request.closed, "rehome": request.rehome,
                     "files_home": request.files_home, "files_home_name": request.files_home_name,
                     "settings": {"kind": settings.kind, "app_class": settings.app_class,
                                  "args": list(settings.args), "autosave": settings.autosave,
                                  "keep": settings.keep, "restart": settings.restart, "cwd": settings.cwd}}
                )  # fmt: skip
            elif isinstance(action, Refuse):
                raise AppStateError(action.reason)
        if request.rehome:
            self._arrivals[ref.id] = list(request.console)
            self._arrived_input[ref.id] = [line.decode(errors="replace") for line in request.input]
        await fault_point("destination-prepared")

    async def commit(self, request: pb.CommitRequest) -> int:
        """COMMIT: run the app here; return its runner's pid."""
        ref = _checked(request.migration)
        entry = self.journal.get("destination", ref.id)
        if entry is None:
            raise AppNotFoundError(f"migration {ref.id} of {ref.app!r} is not prepared on {self.host}")
        _, actions = _destination(ref, entry).commit()
        pid = 0
        for action in actions:
            if isinstance(action, Record):
                self.journal.save({**entry, "state": DestState.COMMITTED.value})
                await fault_point("destination-committed")
            elif isinstance(action, Thaw):
                pid = (await asyncio.shield(self._thaw_once(entry))).pid  # the caller may go; the thaw must not
            elif isinstance(action, Refuse):
                raise AppStateError(action.reason)
            elif isinstance(action, Reply) and not pid:
                record = self.apps.find(ref.app)
                if (record is None or not record.running) and not entry.get("left") and not entry.get("closed"):
                    record = await asyncio.shield(self._thaw_once(entry))  # committed; its thaw was cut short
                pid = record.pid if record is not None else 0
        return pid

    async def abort(self, request: pb.AbortRequest) -> None:
        """ABORT: forget what was staged or prepared for this migration."""
        ref = _checked(request.migration)
        entry = self.journal.get("destination", ref.id) or {"role": "destination", "id": ref.id, "app": ref.app,
                                                             "epoch": ref.epoch}  # fmt: skip
        dest, actions = _destination(ref, entry).abort()
        for action in actions:
            if isinstance(action, Record):
                try:
                    self.journal.save({**entry, "state": DestState.ABORTED.value})
                except MigError as exc:  # a full disk: drop the staged chunks all the same, they free space
                    log.warning("%s", exc.message)
            elif isinstance(action, Drop):
                await asyncio.to_thread(self.store.remove_app, _staging(ref.id))
            elif isinstance(action, Refuse):
                raise AppStateError(action.reason)
        if dest.state is DestState.ABORTED:
            with contextlib.suppress(MigError):
                await asyncio.to_thread(self.store.remove_app, _staging(ref.id))

    def decision(self, request: pb.DecisionRequest) -> str:
        """What a destination asking about a migration is told."""
        entry = self.journal.get("source", _checked(request.migration).id)
        return str(entry["state"]) if entry else SourceState.ABORTED.value

    def _thaw_once(self, entry: dict[str, Any]) -> asyncio.Task[AppRecord]:
        """The thaw of a committed migration; a second COMMIT (a retry, or the one a restart asks for) that
        arrives while it runs waits for the same thaw instead of starting a second runner."""
        task = self._thawing.get(entry["id"])
        if task is None:
            task = asyncio.get_running_loop().create_task(self._thaw(entry), name=f"thaw {entry['app']}")
            self._thawing[entry["id"]] = task

            def ended(done: asyncio.Task[AppRecord]) -> None:
                self._thawing.pop(entry["id"], None)
                if not done.cancelled() and (exc := done.exception()) is not None:
                    log.warning("the thaw of %s failed: %s", entry["app"], exc)

            task.add_done_callback(ended)
        return task

    async def _thaw(self, entry: dict[str, Any]) -> AppRecord:
        name, staging = entry["app"], _staging(entry["id"])
        if await asyncio.to_thread(self.store.latest, staging) is not None:
            await asyncio.to_thread(
                self.store.adopt, staging, entry["staged_version"], name, f"moved from {entry['source_name']}"
            )
        info, manifest, code = await asyncio.to_thread(self.store.load_code, name)
        settings = entry["settings"]
        record = self.apps.find(name)
        if record is not None and record.state is State.AWAY:
            spec = record.spec  # it comes home
        else:
            folder = await asyncio.to_thread(_code.unpack, self.code_dir, code)
            folder = _code.place(folder, self.code_dir, name)
            spec = _spec_from_code(name, folder, manifest, code, str(folder))
            spec = replace(
                spec,
                kind=settings["kind"],
                args=tuple(settings["args"]),
                autosave=settings["autosave"],
                keep=settings["keep"],
                restart=settings["restart"],
                home_cwd=settings["cwd"],
            )
        home_here = entry["home_device"] == self.peers.identity.device_id
        if entry.get("closed"):
            await self.home_io.closed(name)
            return self.apps.adopt_closed(spec, info.version, entry["epoch"])
        files_home = (entry.get("files_home", ""), entry.get("files_home_name", ""))
        if files_home[0] == self.peers.identity.device_id:
            files_home = ("", "")  # its files come home with it
            self.home_io.revoke_files(name)
        record = await self.apps.adopt(
            spec,
            info.version,
            epoch=entry["epoch"],
            home="" if home_here else entry["home"],
            home_device="" if home_here else entry["home_device"],
            files_home=files_home,
            console=self._arrivals.pop(entry["id"], None),
        )
        for line in self._arrived_input.pop(entry["id"], []):
            self.home_io.input(record, line)
        return record

    def _known_epoch(self, app: str) -> int:
        record = self.apps.find(app)
        return record.epoch if record is not None else -1

    def _check_epoch(self, ref: pb.MigrationRef) -> None:
        if ref.epoch <= self._known_epoch(ref.app):
            raise AppStateError(f"epoch {ref.epoch} of {ref.app!r} is stale on {self.host}")

    # -- closing an app that runs away from home

    async def close_away(self, name: str) -> AppRecord:
        """Home: ask the host that runs the app to close it and hand the closed version back here."""
        record = self.apps.get(name)
        if record.state is not State.AWAY:
            return await self.apps.close(name)
        peer, address = self.peers.paired_target(record.host_device)
        try:
            await self.peers.stub(peer, address).CloseAway(
                pb.CloseAwayRequest(app=name, epoch=record.epoch), timeout=3600
            )
        except grpc.aio.AioRpcError as exc:
            raise self._move_error(exc, name, peer) from None
        return self.apps.get(name)

    async def closing_away(self, request: pb.CloseAwayRequest, caller: PairedPeer) -> None:
        """Host: the app's home wants it closed; close it here, then hand the closed version home."""
        record = self.apps.get(request.app)
        if record.home_device != caller.device_id or record.epoch != request.epoch:
            raise AppStateError(f"{request.app!r} at epoch {request.epoch} is not {caller.name}'s to close here")
        if record.running:
            await self.apps.close(request.app)
        await self.move(request.app, caller.device_id, lambda _: None, closed=True, stay_closed=True)

    # -- the console of a moved app flows home

    async def console_append(self, request: pb.ConsoleAppendRequest, caller: PairedPeer) -> int:
        """Lines from the host that runs one of our apps; each line is applied once, in order.

        A higher epoch than the one on record means the app moved on (to the caller): the record follows it. A
        lower one comes from a stale copy, which is refused and told to stop.
        """
        record = self.fence(request.app, request.epoch, caller)
        if request.state:  # how it is doing there, for mig ps here
            record.remote_state, record.reason = request.state, request.reason
        if request.session != record.console_session:  # the host restarted: its numbering starts anew
            record.console_session, record.console_applied = request.session, 0
        skip = record.console_applied + 1 - request.first_seq
        for line in request.lines[max(0, skip) :]:
            await record.console.write(line)
        record.console_applied = max(record.console_applied, request.first_seq + len(request.lines) - 1)
        return record.console_applied

    def fence(self, app: str, epoch: int, caller: PairedPeer) -> AppRecord:
        """The home's check of a copy's I/O: the app runs away from here, at ``epoch`` on ``caller``, or at a
        newer epoch there (it moved on: the record follows). An older epoch is a stale copy, told to stop."""
        record = self.apps.find(app)
        handed_off = record is not None and record.moving and epoch > record.epoch  # it committed: decided
        if record is None or (record.state is not State.AWAY and not handed_off):
            raise AppStateError(f"{app!r} does not run away from {self.host}; stop that copy")
        if epoch < record.epoch:
            raise StaleCopyError(f"epoch {epoch} of {app!r} is stale (now {record.epoch}); stop it")
        if epoch > record.epoch or caller.device_id != record.host_device:
            if epoch == record.epoch:
                raise AppStateError(f"{app!r} at epoch {epoch} runs on {record.host}, not here")
            record.epoch, record.host, record.host_device = epoch, caller.name, caller.device_id
            record.console_applied, record.remote_state = 0, ""
            self.apps.save(record)
        return record

    def _start_forwarder(self, record: AppRecord) -> None:
        self._stop_forwarder(record.name)
        self._forwarders[record.name] = self._tasks.create_task(self._forward(record), name=f"console {record.name}")

    def _stop_forwarder(self, name: str) -> None:
        self._forwarded.pop(name, None)
        task = self._forwarders.pop(name, None)
        if task is not None:
            task.cancel()

    async def _forward(self, record: AppRecord) -> None:
        """Send the app's console lines to its home, at least once, until the app leaves or ends. The first
        call goes out at once, lines or not: it tells the home where the app runs now."""
        console, since, told = record.console, 1, False
        while self.apps.find(record.name) is record:
            read = console.log.read(since, 4096)
            if read.lines or not told:
                first = read.lines[0][0] if read.lines else since
                lines = [data for _, data in read.lines]
                if read.dropped and read.lines:  # the bound was hit: say so, under a lost line's number
                    first -= 1
                    lines.insert(0, _lost_marker(read.dropped, self.host))
                request = pb.ConsoleAppendRequest(
                    app=record.name,
                    epoch=record.epoch,
                    first_seq=first,
                    lines=lines,
                    session=self._session,
                    state=record.state.value,
                    reason=record.reason,
                )
                try:
                    peer, address = self.peers.paired_target(record.home_device)
                    await self.peers.stub(peer, address).ConsoleAppend(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if error_name(exc) == StaleCopyError.__name__:
                        await self._stop_stale(record, exc.details() or "")
                        return
                    await asyncio.sleep(1.0)  # the home is away: keep the lines, try again
                    continue
                except MigError:
                    await asyncio.sleep(1.0)
                    continue
                since, told = read.next_seq, True
                self._forwarded[record.name] = since
                self._forwarded_more.set()
                continue
            if console.closed:
                return
            await console.wait_change(since, 0)

    async def _stop_stale(self, record: AppRecord, why: str) -> None:
        """The home knows a newer copy of this app: this one must not go on."""
        log.warning("%s: the home refused this copy (%s); stopping it", record.name, why)
        await record.console.note(f"{record.name} stops here: its home knows a newer copy ({why})")
        if record.runner is not None and record.running:
            record.stop_reason = "a newer copy runs elsewhere"
            record.runner.kill()
            await record.ended.wait()
        self.apps.forget(record.name)

    # -- after a restart

    async def recover(self) -> None:
        """Finish or undo the migrations a restart interrupted, as the journal says."""
        for entry in self.journal.all():
            with contextlib.suppress(MigError):
                if entry["role"] == "source":
                    await self._recover_source(entry)
                else:
                    await self._recover_destination(entry)

    async def _recover_source(self, entry: dict[str, Any]) -> None:
        source = Source(entry["id"], entry["app"], entry["epoch"], SourceState(entry["state"]), entry["version"])
        peer = self.peers.paired.by_device(entry["peer"])
        record = self.apps.find(source.app)
        if record is None or record.epoch > source.epoch:
            return  # an older move: the app came back (or was removed) since
        if record.epoch == source.epoch and source.state not in (SourceState.HANDED_OFF, SourceState.DONE):
            return  # equal epochs are not enough: the home's fence takes the epoch of a committed copy early
        if source.state in (SourceState.HANDED_OFF, SourceState.DONE) and peer is not None:
            # Decided: the app is the destination's now; this host must never run or open it again.
            if entry.get("rehome"):
                await self._hand_home_over(record, entry["rehome"])
            elif record.home_device in ("", self.peers.identity.device_id):
                record.epoch = source.epoch
                self._mark_away(record, peer, 0)
            else:
                self.apps.forget(source.app)
        source, actions = source.restarted()
        for action in actions:
            if isinstance(action, Record) and peer is not None:
                self._record_source(source, peer, resume=entry.get("resume", True))
            elif isinstance(action, Abort) and peer is not None:
                self._spawn(self._send_abort(source, peer), f"abort {source.id}")
            elif isinstance(action, Resume):
                if not record.running and entry.get("resume", True):
                    await self.apps.open(source.app)
            elif isinstance(action, Commit) and peer is not None:
                self._spawn(self._commit_later(source, peer), f"commit {source.id}")

    async def _recover_destination(self, entry: dict[str, Any]) -> None:
        later = [e for e in self.journal.all() if e["role"] == "source" and e["app"] == entry["app"]]
        if entry.get("left") or any(e["epoch"] > entry["epoch"] for e in later):
            return  # it moved on from here afterwards: the source side of that move decides
        state = DestState(entry["state"]) if entry.get("state") else None
        ref = pb.MigrationRef(id=entry["id"], app=entry["app"], epoch=entry["epoch"])
        _, actions = Destination(ref.id, ref.app, ref.epoch, state).restarted()
        for action in actions:
            if isinstance(action, Thaw):
                record = self.apps.find(ref.app)
                if record is None or not record.running:
                    await self._thaw_once(entry)
            elif isinstance(action, AskDecision):
                self._spawn(self._ask(entry), f"ask {entry['id']}")

    async def _ask(self, entry: dict[str, Any]) -> None:
        """A prepared migration whose decision this host missed: ask its source until it answers."""
        ref = pb.MigrationRef(id=entry["id"], app=entry["app"], epoch=entry["epoch"])
        while True:
            try:
                peer, address = self.peers.paired_target(entry["source"])
                reply = await self.peers.stub(peer, address).Decision(pb.DecisionRequest(migration=ref), timeout=10)
            except (grpc.aio.AioRpcError, MigError):
                await asyncio.sleep(2.0)
                continue
            if reply.state in (SourceState.HANDED_OFF.value, SourceState.DONE.value):
                await self.commit(pb.CommitRequest(migration=ref))
                return
            if reply.state == SourceState.ABORTED.value:
                await self.abort(pb.AbortRequest(migration=ref))
                return
            await asyncio.sleep(2.0)  # not decided yet


def _failure(exc: grpc.aio.AioRpcError, peer: str) -> str:
    """Why a call to ``peer`` failed, in words (gRPC's own details name sockets and addresses)."""
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{peer} did not answer in time"
    if exc.code() == grpc.StatusCode.UNAVAILABLE and not error_name(exc):
        if "failed to connect" in details.lower():
            return f"{peer} cannot be reached (is its daemon running?)"
        return f"the connection to {peer} was lost"
    return details


def _lost_marker(dropped: int, host: str) -> bytes:
    return (
        f"[migrated] {dropped} console lines were lost: the home was unreachable and {host} keeps only "
        "the newest lines (raise the daemon's --console-lines or --console-bytes there)\n"
    ).encode()


_MIGRATION_ID = re.compile(r"[0-9a-f]{32}")
_CODECS = frozenset(int(codec) for codec in Codec)


def _checked(ref: pb.MigrationRef) -> pb.MigrationRef:
    """A migration named in a peer's message, refused unless well formed (a paired peer can still be buggy)."""
    if not _MIGRATION_ID.fullmatch(ref.id) or ref.epoch < 1:
        raise UsageError(f"the message names no valid migration (id {ref.id[:40]!r}, epoch {ref.epoch})")
    check_app_name(ref.app, "the peer's message")
    return ref


def _batches(chunks: list[tuple[bytes, StoredChunk]]) -> Iterator[list[pb.ChunkData]]:
    """The chunks as Stage messages of about ``BATCH_BYTES`` each."""
    batch: list[pb.ChunkData] = []
    size = 0
    for digest, chunk in chunks:
        batch.append(pb.ChunkData(hash=digest, codec=int(chunk.codec), raw_size=chunk.raw_size, data=bytes(chunk.data)))
        size += len(chunk.data)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ref(source: Source) -> pb.MigrationRef:
    return pb.MigrationRef(id=source.id, app=source.app, epoch=source.epoch)


def _staging(migration: str) -> str:
    return f"~move-{migration}"


def _destination(ref: pb.MigrationRef, entry: dict[str, Any]) -> Destination:
    state = DestState(entry["state"]) if entry.get("state") else None
    return Destination(ref.id, ref.app, ref.epoch, state)


def _settings(spec: AppSpec) -> pb.AppSettings:
    return pb.AppSettings(
        kind=spec.kind,
        app_class=spec.app_class,
        args=list(spec.args),
        autosave=spec.autosave,
        keep=spec.keep,
        restart=spec.restart,
        cwd=spec.home_cwd or spec.cwd,
    )


def _python_version() -> str:
    import platform

    return platform.python_version()


def _all_modules() -> dict[str, Any]:
    """Every installed top-level distribution counts as importable here, not only those the daemon imported."""
    import importlib.metadata

    return {name: None for name in importlib.metadata.packages_distributions()}
