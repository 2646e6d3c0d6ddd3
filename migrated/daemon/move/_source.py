"""The source's side of a move. One entry point per mode: a running app (``move``), a closed one that runs
there (``open_on``), an app whose home goes with it (``rehome``), an app closed away that goes home closed
(``send_home_closed``). Each runs one hand-off, in which the hand-off machine's ``Source`` decides and this
module carries every action out: record, prepare, commit, abort, resume, retire."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from migrated.checkpoint import Store, chunk_hashes
from migrated.daemon._db import Change
from migrated.daemon._faults import fault_point
from migrated.daemon._handoff import Abort, Action, Commit, Prepare, Record, Resume, Retire, Source, SourceState
from migrated.daemon._peers import Peers
from migrated.daemon._records import AppRecord, Remote, State
from migrated.daemon._retry import COMMIT, TELL, retry
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps import AppRegistry, AppTable, AppVersions
from migrated.daemon.home import HomeIO
from migrated.daemon.move._journal import DestinationEntry, Journal, Rehome, SourceEntry, save
from migrated.daemon.move._transfer import MoveProgress, Report, send
from migrated.discovery._paired import PairedPeer
from migrated.errors import AppStateError, MigError, PeerError, UsageError
from migrated.transport.v1 import peer_pb2 as pb
from migrated.transport.v1.checkpoint_pb2 import CheckpointManifest

__all__ = ["COMMIT_WAIT", "MoveSource"]

log = logging.getLogger("migrated.moves")

T = TypeVar("T")
Step = tuple[Source, list[Action]]
COMMIT_WAIT = 30.0  # seconds mig move waits for the destination to confirm; then it is asked in the background
CONSOLE_TAIL = 10_000  # console lines an old home hands to the new one
ROUNDS = 4  # pre-copy rounds at most; each sends what changed during the one before
ROUND_SHRINK = 0.5  # another round only while each sends less than this share of the one before
ROUND_ENOUGH = 256 << 10  # bytes: a round that sent this little is the last
_FAULTS = {SourceState.FROZEN: "source-frozen", SourceState.HANDED_OFF: "source-handed-off"}


def _ignore(_: MoveProgress) -> None:
    pass


@dataclass(eq=False)
class _HandOff:
    """One hand-off as the source carries it out."""

    record: AppRecord
    peer: PairedPeer
    machine: Source
    report: Report
    running: bool  # the app runs here (frozen for the copy); else it moves from its latest version
    stay_closed: bool = False  # it arrives closed (an app closed away, going home)
    stop_and_copy: bool = False  # no pre-copy: the baseline a benchmark compares against
    rehome: Rehome | None = None
    recovering: bool = False  # carried on by a restarted daemon
    frozen: bool = False
    frozen_at: float = 0.0
    marks: list[tuple[str, float]] = field(default_factory=list)  # where the freeze's time went, for the log
    staged_chunks: set[bytes] | None = None  # what the destination has staged for this move: not asked again

    def mark(self, step: str) -> None:
        """Note that ``step`` of the freeze ended now."""
        self.marks.append((step, time.perf_counter()))

    def freeze_steps(self) -> str:
        """The freeze's steps and their milliseconds."""
        times = [self.frozen_at] + [at for _, at in self.marks]
        return ", ".join(
            f"{step} {(at - since) * 1000:.0f}" for (step, at), since in zip(self.marks, times, strict=False)
        )

    staged: int = 0
    downtime: float = 0.0
    error: MigError | None = None

    @property
    def ref(self) -> pb.MigrationRef:
        """The migration as messages name it."""
        machine = self.machine
        return pb.MigrationRef(id=machine.id, app=machine.app, epoch=machine.epoch)

    def entry(self) -> SourceEntry:
        """The journal entry of the hand-off as it stands."""
        machine = self.machine
        return SourceEntry(machine.id, machine.app, machine.epoch, machine.state, machine.version,
                           self.peer.device_id, self.peer.name, self.running, self.rehome)  # fmt: skip


class MoveSource:
    """Apps moving away from here."""

    def __init__(
        self,
        registry: AppRegistry,
        table: AppTable,
        versions: AppVersions,
        home: HomeIO,
        peers: Peers,
        journal: Journal,
        store: Store,
        tasks: Tasks,
        host: str,
    ) -> None:
        self.registry = registry
        self.table = table
        self.versions = versions
        self.home = home
        self.peers = peers
        self.journal = journal
        self.store = store
        self._tasks = tasks
        self.host = host

    # -- one entry point per mode

    async def move(self, name: str, host: str, report: Report, stop_and_copy: bool = False) -> tuple[AppRecord, str]:
        """Move a running app to a paired peer: pre-copy, freeze, final copy, hand-off; return it and the peer."""
        record, peer = self._movable(name, host)
        if record.state is not State.RUNNING:
            raise AppStateError(
                f"{name!r} is not running (it {record.state.value}); `mig open {name} --on {host}` moves a closed app"
            )
        return await self._hand_off(_HandOff(record, peer, self._machine(record), report, True,
                                             stop_and_copy=stop_and_copy))  # fmt: skip

    async def open_on(self, name: str, host: str) -> tuple[AppRecord, str]:
        """Run an app that does not run here on a paired peer, from its latest version (``mig open --on``)."""
        record, peer = self._movable(name, host)
        self._closed_with_a_version(record, f"`mig move {name} {host}` moves a running app")
        return await self._hand_off(_HandOff(record, peer, self._machine(record), _ignore, False))

    async def rehome(self, name: str, host: str, move_files: bool, report: Report = _ignore) -> tuple[AppRecord, str]:
        """Hand ``name``'s home role to ``host`` with the app (running, or closed as it is); its files stay served
        by this host unless ``move_files``."""
        record, peer = self._movable(name, host)
        if record.visitor:
            raise AppStateError(f"{name!r}'s home is {record.place.home}; only its home can hand the home role over")
        running = record.state is State.RUNNING
        if not running:
            self._closed_with_a_version(record, "")
        plan = self._rehome_plan(record, peer, move_files)
        hand = _HandOff(record, peer, self._machine(record), report, running, stay_closed=not running, rehome=plan)
        return await self._hand_off(hand)

    async def send_home_closed(self, name: str, home: str) -> tuple[AppRecord, str]:
        """Hand an app closed here back to its home ``home`` (a device id), closed."""
        record, peer = self._movable(name, home)
        return await self._hand_off(_HandOff(record, peer, self._machine(record), _ignore, False, stay_closed=True))

    async def decision(self, request: pb.DecisionRequest) -> str:
        """What a destination asking about a migration is told: committed only once handed off."""
        entry = await self.journal.source(request.migration.id)
        return entry.machine.decision().value if entry is not None else SourceState.ABORTED.value

    def _movable(self, name: str, host: str) -> tuple[AppRecord, PairedPeer]:
        record = self.registry.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; it can be moved only from the host that runs it")
        if host in (self.host, str(self.peers.listen), self.peers.identity.device_id):
            raise UsageError(f"{name!r} runs on {host} already")
        peer, _ = self.peers.paired_target(host)
        return record, peer

    def _closed_with_a_version(self, record: AppRecord, move_instead: str) -> None:
        if record.running and move_instead:
            raise AppStateError(f"{record.name!r} is running; {move_instead}")
        if not record.version:
            raise AppStateError(f"{record.name!r} has no checkpoint to open; start it again with mig run")

    def _machine(self, record: AppRecord) -> Source:
        return Source(uuid.uuid4().hex, record.name, record.place.epoch + 1)

    def _rehome_plan(self, record: AppRecord, peer: PairedPeer, move_files: bool) -> Rehome:
        """Who serves the app's files once ``peer`` is its home."""
        place, me = record.place, self.peers.identity.device_id
        files = ("", "") if move_files else (place.files_home, place.files_home_name)
        if not move_files and not place.files_home:
            files = (me, self.host)  # this host goes on serving them
        if files[0] == peer.device_id:
            files = ("", "")
        if files[0] and files[0] != me:
            raise AppStateError(
                f"{record.name!r}'s files are served by {place.files_home_name}; rehome it with --files move, "
                f"or from {place.files_home_name}"
            )
        return Rehome(peer.device_id, peer.name, files[0], files[1], record.spec.home_cwd or record.spec.cwd)

    # -- the hand-off

    async def _hand_off(self, hand: _HandOff) -> tuple[AppRecord, str]:
        record = hand.record
        record.moving = True
        await self.journal.record(hand.entry())
        try:
            version = await self._copy_ahead(hand)
        except BaseException:
            await self._drive(hand, hand.machine.failed())
            raise
        await self._drive(hand, hand.machine.frozen(version))
        if hand.error is not None:
            raise hand.error
        hand.report(MoveProgress("done", downtime=hand.downtime))
        return record, hand.peer.name

    async def _copy_ahead(self, hand: _HandOff) -> int:
        """Everything before the freeze: the preflight and, for a running app, the pre-copy; then the freeze.
        Return the version the app is frozen at (the latest version of an app that does not run)."""
        name, peer = hand.record.name, hand.peer
        if not hand.running:
            hand.report(MoveProgress("copy"))
            hand.frozen_at = time.perf_counter()
            await self._preflight(hand, hand.record.version)
            return hand.record.version
        if not hand.stop_and_copy:
            hand.report(MoveProgress("pre-copy"))
            info, _ = await self.versions.checkpoint(name, "move", f"pre-copy for the move to {peer.name}")
            manifest = await self._preflight(hand, info.version)
            staged = await self._remote(hand, send(self.peers, peer, hand.ref, manifest, self.store, "pre-copy",
                                                   hand.report))  # fmt: skip
            hand.staged_chunks = set(chunk_hashes(manifest))
            await self._rounds(hand, staged.bytes_stored)
        hand.report(MoveProgress("freeze"))
        hand.frozen_at = time.perf_counter()
        info = await self.versions.freeze(name, f"moved to {peer.name}")
        hand.frozen = True
        hand.mark("capture")
        return info.version

    async def _rounds(self, hand: _HandOff, sent: int) -> None:
        """More pre-copy rounds while each sends less than ``ROUND_SHRINK`` of the one before (what changes
        during a round is what the next one sends), so that the freeze sends little. A round's version is
        deleted once sent: the history keeps the first pre-copy and the frozen version."""
        name, peer = hand.record.name, hand.peer
        for number in range(2, ROUNDS + 1):
            if sent <= ROUND_ENOUGH:
                return
            phase, before = f"pre-copy round {number}", hand.record.version
            info, _ = await self.versions.checkpoint(name, "move", f"{phase} for the move to {peer.name}")
            manifest = await asyncio.to_thread(self.store.manifest, name, info.version)
            staged = await self._remote(hand, send(self.peers, peer, hand.ref, manifest, self.store, phase,
                                                   hand.report, hand.staged_chunks))  # fmt: skip
            async with hand.record.lock:
                await asyncio.to_thread(self.store.delete_versions, name, [info.version])
                if hand.record.version == info.version:
                    hand.record.version = before  # the latest version again
            if staged.bytes_stored > sent * ROUND_SHRINK:
                return
            sent = staged.bytes_stored

    async def _preflight(self, hand: _HandOff, version: int) -> CheckpointManifest:
        """The manifest of ``version``, once the destination says it can run it; refused before the freeze."""
        manifest = await asyncio.to_thread(self.store.manifest, hand.record.name, version)
        request = pb.PreflightRequest(migration=hand.ref, manifest=manifest)
        problems = (await self._remote(hand, self.peers.call(hand.peer, "Preflight", request, 60))).problems
        if problems:
            raise AppStateError(
                f"{hand.record.name!r} cannot run on {hand.peer.name}: {'; '.join(problems)}; it stays here"
            )
        return manifest

    async def _drive(self, hand: _HandOff, step: Step) -> None:
        """Carry out the machine's actions in order; an action's outcome may give the machine more."""
        hand.machine, actions = step
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            done = isinstance(action, Record) and action.state is SourceState.DONE
            if done and pending and isinstance(pending[0], Retire):  # one transaction: decision and app record
                pending.popleft()
                await self._retire(hand, done=True)
                continue
            after = await self._carry(hand, action)
            if after is not None:
                hand.machine, more = after
                pending.extend(more)

    async def _carry(self, hand: _HandOff, action: Action) -> Step | None:
        if isinstance(action, Record):
            await self.journal.record(hand.entry())
            point = _FAULTS.get(action.state) if isinstance(action.state, SourceState) else None
            if point is not None:
                await fault_point(point)
        elif isinstance(action, Prepare):
            return await self._prepare(hand)
        elif isinstance(action, Commit):
            return await self._commit(hand)
        elif isinstance(action, Abort):
            self._tasks.spawn(self._tell_abort(hand), f"abort {hand.machine.id}")
        elif isinstance(action, Resume):
            await self._resume(hand)
        elif isinstance(action, Retire):
            await self._retire(hand, done=False)
        return None

    async def _prepare(self, hand: _HandOff) -> Step:
        """The final copy and PREPARE; the machine decides on the outcome."""
        record, peer = hand.record, hand.peer
        try:
            manifest = await asyncio.to_thread(self.store.manifest, record.name, hand.machine.version)
            if hand.stop_and_copy:
                await self._preflight(hand, hand.machine.version)
            phase = "final copy" if hand.running else "copy"
            staged = await self._remote(
                hand, send(self.peers, peer, hand.ref, manifest, self.store, phase, hand.report, hand.staged_chunks)
            )
            hand.staged = staged.version
            hand.mark(phase)
            hand.report(MoveProgress("hand-off"))
            await self.home.flush(record)  # a visitor's lines reach home before the next host's do
            await fault_point("source-before-prepare")
            await self._remote(hand, self.peers.call(peer, "Prepare", self._prepare_request(hand), 60))
        except MigError as exc:
            hand.error = exc
            return hand.machine.failed()
        except Exception as exc:  # a bug: the move is undone all the same, and the bug logged whole
            log.exception("moving %s failed", record.name)
            hand.error = MigError(f"moving {record.name!r} to {peer.name} failed ({exc}); it goes on running here")
            return hand.machine.failed()
        await fault_point("source-prepared")
        hand.mark("prepare")
        return hand.machine.prepared()

    async def _remote(self, hand: _HandOff, call: Awaitable[T]) -> T:
        """A call to the destination; its failure says what failed, and that the app goes on here."""
        try:
            return await call
        except MigError as exc:
            where = "it goes on running here" if hand.running else "it stays here"
            raise type(exc)(f"moving {hand.record.name!r} to {hand.peer.name} failed: {exc.message}; {where}") from None

    def _prepare_request(self, hand: _HandOff) -> pb.PrepareRequest:
        record, place = hand.record, hand.record.place
        request = pb.PrepareRequest(
            migration=hand.ref,
            staged_version=hand.staged,
            settings=record.spec.settings(),
            home=place.home or self.host,
            home_device_id=place.home_device or self.peers.identity.device_id,
            closed=hand.stay_closed,
            files_home=place.files_home,
            files_home_name=place.files_home_name,
        )
        if hand.rehome is not None:
            plan = hand.rehome
            request.rehome = True
            request.home, request.home_device_id = plan.home_name, plan.home
            request.files_home, request.files_home_name = plan.files_home, plan.files_home_name
            console = record.console.log
            tail = console.read(console.tail_start(CONSOLE_TAIL), CONSOLE_TAIL, 4 << 20)
            request.console.extend(data for _, data in tail.lines)
            record.handing_home = plan.home_name  # what is typed here from now on would be left behind
            request.input.extend(self.home.unhandled_input(record.name))
        return request

    async def _commit(self, hand: _HandOff) -> Step | None:
        """COMMIT until the destination runs the app: ``COMMIT_WAIT`` s here, then on in the background (the app
        runs nowhere meanwhile)."""
        if hand.recovering:
            self._tasks.spawn(self._commit_later(hand), f"commit {hand.machine.id}")
            return None
        until = time.monotonic() + COMMIT_WAIT
        try:
            reply = await retry(lambda: self._send_commit(hand, until), COMMIT, f"commit of {hand.record.name}",
                                within=COMMIT_WAIT)  # fmt: skip
        except MigError:
            self._tasks.spawn(self._commit_later(hand), f"commit {hand.machine.id}")
            peer = hand.peer.name
            hand.error = PeerError(
                f"{peer} does not confirm taking {hand.record.name!r}; it was handed off and will run there once "
                f"{peer} answers (this host keeps asking); `mig ps` shows it as moving meanwhile"
            )
            return None
        hand.record.remote.pid = int(reply.pid)
        hand.downtime = time.perf_counter() - hand.frozen_at
        hand.mark("commit")
        await fault_point("source-committed")
        return hand.machine.committed()

    async def _send_commit(self, hand: _HandOff, until: float = 0.0) -> pb.CommitReply:
        deadline = max(1.0, until - time.monotonic()) if until else 60.0
        request = pb.CommitRequest(migration=hand.ref)
        reply: pb.CommitReply = await self.peers.call(hand.peer, "Commit", request, deadline)
        return reply

    async def _commit_later(self, hand: _HandOff) -> None:
        reply = await retry(lambda: self._send_commit(hand), COMMIT, f"commit of {hand.record.name}")
        hand.record.remote.pid = int(reply.pid)
        hand.recovering = True  # no bound any more: the machine's next Commit, if any, goes to the background
        await self._drive(hand, hand.machine.committed())

    async def _tell_abort(self, hand: _HandOff) -> None:
        """Best effort: a destination that misses it asks the source when it restarts."""
        request = pb.AbortRequest(migration=hand.ref)
        await retry(lambda: self.peers.call(hand.peer, "Abort", request, 10), TELL, f"abort of {hand.record.name}",
                    tries=3)  # fmt: skip

    async def _resume(self, hand: _HandOff) -> None:
        """Not handed off: the app goes on here (live if it still runs, else from its frozen version)."""
        record = hand.record
        record.moving, record.handing_home = False, ""
        if not hand.running:
            return
        if record.running and record.runner is not None:
            if hand.frozen:
                try:
                    await record.runner.resume()
                except MigError as exc:
                    log.warning("%s could not be resumed: %s", record.name, exc.message)
        elif record.state is State.CRASHED and not hand.recovering:
            await self.table.bring_back(record)  # its runner died during the move, which held its recovery back
        elif not hand.recovering:  # it exited by itself during the move: its run is over
            await record.console.close()
        elif hand.recovering:
            try:
                await self.versions.open(record.name)
            except MigError as exc:
                log.warning("%s could not be opened again after the move was undone: %s", record.name, exc.message)

    async def _retire(self, hand: _HandOff, done: bool) -> None:
        """The destination runs the app: end the frozen runner here without ``on_stop``; keep the record if this
        is its home (it runs away), else forget it. With ``done``, the journal's DONE is in the same transaction."""
        record, peer = hand.record, hand.peer
        record.moving = True
        more = [save(hand.entry())] if done else []
        more += [save(entry) for entry in await self._arrivals_left(record.name)]
        self.home.left(record.name)
        await self.table.end_copy(record, f"moved to {peer.name}")
        record.place.epoch = hand.machine.epoch
        if hand.rehome is not None:
            await self._hand_home_over(record, hand.rehome, more)
        elif record.place.home_device in ("", self.peers.identity.device_id):
            self._mark_away(record, peer)
            await self.registry.save(record, None, *more)
            record.console.reopen()
            await record.console.note(f"{record.name} moved to {peer.name} (epoch {record.place.epoch})")
        else:
            await self.registry.forget(record.name, *more)  # a visitor leaves; its versions stay for the next move
        record.moving = False
        log.info("%s moved to %s: frozen %.0f ms (%s)", record.name, peer.name, hand.downtime * 1000,
                 hand.freeze_steps())  # fmt: skip

    async def _arrivals_left(self, name: str) -> list[DestinationEntry]:
        """The arrivals of the app here, marked left: a restart must not thaw it here from an old arrival."""
        entries = await self.journal.of_app(name)
        return [replace(e, left=True) for e in entries if isinstance(e, DestinationEntry) and not e.left]

    async def _hand_home_over(self, record: AppRecord, plan: Rehome, more: list[Change]) -> None:
        """The app and its home went to another host: its sockets close here; its files may stay served here."""
        if plan.files_home == self.peers.identity.device_id:
            await self.home.grant_files(record.name, plan.home, plan.cwd)
        await self.home.closed(record.name)
        await self.registry.forget(record.name, *more)

    def _mark_away(self, record: AppRecord, peer: PairedPeer) -> None:
        place = record.place
        if place.host_device != peer.device_id:  # else the fence let its copy there in already: keep its lines
            record.remote = Remote(pid=record.remote.pid)
        record.state, place.host, place.host_device = State.AWAY, peer.name, peer.device_id
        place.home, place.home_device, record.reason = "", "", ""

    # -- after a restart

    async def recover(self, entry: SourceEntry) -> None:
        """A restart found this migration on record: finish or undo it, as the machine says now."""
        record = self.registry.find(entry.app)
        peer = self.peers.paired.by_device(entry.peer)
        if record is None or record.place.epoch > entry.epoch:
            return  # an older move: the app came back (or was removed) since
        decided = entry.state in (SourceState.HANDED_OFF, SourceState.DONE)
        if record.place.epoch == entry.epoch and not decided:
            return  # equal epochs are not enough: the home's fence takes the epoch of a committed copy early
        if peer is None:
            log.warning("migration %s of %s is on record with a host no longer paired", entry.id[:8], entry.app)
            return
        hand = _HandOff(record, peer, entry.machine, _ignore, entry.resume, rehome=entry.rehome, recovering=True)
        if decided:  # the app is the destination's now: this host must never run or open it again
            record.place.epoch = entry.epoch
            await self._decided(hand)
        await self._drive(hand, entry.machine.restarted())

    async def _decided(self, hand: _HandOff) -> None:
        record = hand.record
        if hand.rehome is not None:
            await self._hand_home_over(record, hand.rehome, [])
        elif record.place.home_device in ("", self.peers.identity.device_id):
            self._mark_away(record, hand.peer)
            await self.registry.save(record)
        else:
            await self.registry.forget(record.name)
