"""The two sides of a move in one process, with fakes for the peers, the runner and home I/O, and the real
store, journal and hand-off machines: the order in which each side records and sends, what a refused PREPARE
or a missing COMMIT acknowledgement does, and what a restart takes up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from migrated.checkpoint import Store, VersionInfo, make_draft, serialise
from migrated.daemon._db import Db
from migrated.daemon._handoff import DestState, SourceState
from migrated.daemon._records import AppRecord, AppSpec, Place, State
from migrated.daemon._spares import SpareRunners
from migrated.daemon.apps import AppRegistry
from migrated.daemon.move import Journal, MoveDestination, MoveSource, _source, recover
from migrated.daemon.move._journal import SourceEntry
from migrated.daemon.move._transfer import staging
from migrated.discovery._paired import PairedPeer
from migrated.errors import AppNotFoundError, AppStateError, MigError, PeerError, PeerUnreachableError
from migrated.transport.v1 import peer_pb2 as pb

HERE, THERE = "a" * 64, "b" * 64


def peer(device: str, name: str) -> PairedPeer:
    return PairedPeer(name, device, "", device[:8], "127.0.0.1:1", 0.0)


class FakeRunner:
    """A runner frozen for a move: resumed or killed, nothing else."""

    def __init__(self) -> None:
        self.resumed = 0
        self.pid = 4242

    async def resume(self) -> None:
        self.resumed += 1


@dataclass
class FakeVersions:
    """Checkpoints as ``AppVersions`` takes them, stored for real (a draft of a small state)."""

    store: Store
    registry: AppRegistry
    frozen: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)

    async def _put(self, name: str, kind: str) -> VersionInfo:
        draft = make_draft(name, serialise({"n": len(self.frozen) + 1, "blob": b"x" * 70_000}), kind=kind)
        info = await asyncio.to_thread(self.store.put_draft, draft)
        self.registry.get(name).version = info.version
        return info

    async def checkpoint(self, name: str, kind: str = "manual", message: str = "") -> tuple[VersionInfo, None]:
        return await self._put(name, kind), None

    async def freeze(self, name: str, message: str) -> VersionInfo:
        self.frozen.append(name)
        return await self._put(name, "move")

    async def open(self, name: str, version: int = 0) -> AppRecord:
        self.opened.append(name)
        return self.registry.get(name)


@dataclass
class FakeTable:
    ended: list[str] = field(default_factory=list)
    brought_back: list[str] = field(default_factory=list)
    arrived: list[tuple[AppSpec, int, Place]] = field(default_factory=list)

    async def end_copy(self, record: AppRecord, why: str) -> None:
        self.ended.append(record.name)
        record.state, record.runner = State.CLOSED, None

    async def bring_back(self, record: AppRecord) -> None:
        self.brought_back.append(record.name)

    async def arrive(
        self, spec: AppSpec, version: int, place: Place, console: Any = None, readied: str = ""
    ) -> AppRecord:
        self.arrived.append((spec, version, place))
        record = AppRecord(spec, _console(), place=place, state=State.RUNNING, version=version)
        record.runner = FakeRunner()  # type: ignore[assignment]
        return record


class FakeHome:
    """Home I/O as the move sees it: nothing to flush, nothing served."""

    def __init__(self) -> None:
        self.closed_apps: list[str] = []

    async def flush(self, record: AppRecord, within: float = 10.0) -> None:
        pass

    def left(self, name: str) -> None:
        pass

    async def closed(self, name: str) -> None:
        self.closed_apps.append(name)

    def unhandled_input(self, name: str) -> list[bytes]:
        return []

    async def revoke_files(self, app: str) -> None:
        pass

    def input(self, record: AppRecord, text: str) -> None:
        pass


class Identity:
    device_id = HERE


class FakePeers:
    """The peer port of the other host, in process: each call is answered by ``answer`` (or fails as told)."""

    def __init__(self, answer: Callable[[str, Any], Awaitable[Any]]) -> None:
        self.answer = answer
        self.calls: list[str] = []
        self.identity = Identity()
        self.listen = "127.0.0.1:1"
        self.paired_peers = {THERE: peer(THERE, "there"), HERE: peer(HERE, "here")}

    def paired_target(self, host: str) -> tuple[PairedPeer, str]:
        found = self.paired_peers.get(host) or next((p for p in self.paired_peers.values() if p.name == host), None)
        if found is None:
            raise PeerUnreachableError(f"no peer {host}")
        return found, found.address

    @property
    def paired(self) -> FakePeers:
        return self

    def by_device(self, device: str) -> PairedPeer | None:
        return self.paired_peers.get(device)

    async def call(self, target: PairedPeer, method: str, request: Any, deadline: float) -> Any:
        self.calls.append(method)
        return await self.answer(method, request)

    async def stage(self, target: PairedPeer, requests: AsyncIterator[pb.StageRequest]) -> pb.StageReply:
        self.calls.append("Stage")
        reply: pb.StageReply = await self.answer("Stage", requests)
        return reply


class Tasks:
    """Background work, kept so a test can wait for it."""

    def __init__(self) -> None:
        self.running: list[asyncio.Task[Any]] = []

    def spawn(self, work: Any, name: str, on_failure: Any = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.running.append(task)
        return task


def _console() -> Any:
    from migrated.daemon._console import Console

    return Console(1000, 1 << 20)


@dataclass
class Side:
    """One host's move machinery: real store and journal, fakes around them."""

    store: Store
    db: Db
    journal: Journal
    registry: AppRegistry
    versions: FakeVersions
    table: FakeTable
    home: FakeHome
    peers: FakePeers
    tasks: Tasks
    source: MoveSource
    destination: MoveDestination


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Callable[[Callable[[str, Any], Awaitable[Any]]], Side]]:
    stores: list[Store] = []

    def make(answer: Callable[[str, Any], Awaitable[Any]]) -> Side:
        store = Store(tmp_path / f"s{len(stores)}.sqlite")
        stores.append(store)
        db = Db(store)
        db.open(tmp_path)
        registry = AppRegistry(db, store, tmp_path / f"console{len(stores)}", 1000, 1 << 20)
        versions, table, home, peers = FakeVersions(store, registry), FakeTable(), FakeHome(), FakePeers(answer)
        journal_, tasks = Journal(db), Tasks()
        source = MoveSource(registry, table, versions, home, peers, journal_, store, tasks, "here")  # type: ignore[arg-type]
        spares = SpareRunners(tasks, 0)  # type: ignore[arg-type]
        destination = MoveDestination(registry, table, home, peers, journal_, store, spares, tasks, tmp_path, "here")  # type: ignore[arg-type]
        return Side(store, db, journal_, registry, versions, table, home, peers, tasks, source, destination)

    yield make
    for store in stores:
        store.close()


def running_app(side: Side, name: str = "sim") -> AppRecord:
    spec = AppSpec(name=name, kind="script", file="/x/sim.py", app_class="Sim", cwd="/x")
    record = AppRecord(spec, _console(), state=State.RUNNING)
    record.runner = FakeRunner()  # type: ignore[assignment]
    side.registry.add(record)
    return record


def _states(side: Side, role: str) -> list[str]:
    rows = side.db.read(lambda conn: conn.execute("SELECT state FROM moves WHERE role = ?", (role,)).fetchall())
    return [state for (state,) in rows]


class Destination:
    """The other host's answers, scriptable per method."""

    def __init__(self, fail: dict[str, MigError] | None = None) -> None:
        self.fail = fail or {}
        self.staged: list[int] = []
        self.prepared = self.committed = 0

    async def __call__(self, method: str, request: Any) -> Any:
        if method in self.fail:
            raise self.fail[method]
        if method == "Preflight":
            return pb.PreflightReply()
        if method == "Missing":
            return pb.MissingReply(missing=list(request.hashes))
        if method == "Stage":
            async for _ in request:
                pass
            self.staged.append(len(self.staged) + 1)
            return pb.StageReply(version=len(self.staged))
        if method == "Prepare":
            self.prepared += 1
            return pb.PrepareReply()
        if method == "Commit":
            self.committed += 1
            return pb.CommitReply(pid=777)
        return None


def ignore(_: Any) -> None:
    pass


def test_a_move_records_each_step_before_the_message_that_depends_on_it(side: Any) -> None:
    there = Destination()
    s = side(there)
    record = running_app(s)
    recorded_when: dict[str, list[str]] = {}
    real_record = s.journal.record

    async def spy(entry: Any, *more: Any) -> None:
        recorded_when.setdefault(entry.state.value, list(s.peers.calls))
        await real_record(entry, *more)

    s.journal.record = spy
    moved, where = asyncio.run(s.source.move("sim", "there", ignore))
    assert where == "there" and moved is record
    assert s.peers.calls == [
        "Preflight",
        "Missing",
        "Stage",
        "Stage",
        "Prepare",
        "Commit",
    ]  # the final copy asks nothing
    assert recorded_when["started"] == [] and recorded_when["frozen"] == ["Preflight", "Missing", "Stage"]
    assert "Prepare" not in recorded_when["frozen"] and "Commit" not in recorded_when["handed_off"]
    assert recorded_when["handed_off"][-1] == "Prepare"  # decided only once PREPARE was acknowledged
    assert _states(s, "source") == ["done"]
    assert (record.state, record.place.host, record.place.epoch, record.remote.pid) == (State.AWAY, "there", 1, 777)
    assert s.table.ended == ["sim"] and not record.moving


def test_a_refused_prepare_aborts_and_the_app_goes_on_here(side: Any) -> None:
    there = Destination(fail={"Prepare": MigError("the destination said no")})
    s = side(there)
    record = running_app(s)
    with pytest.raises(MigError, match="moving 'sim' to there failed: the destination said no; it goes on running"):
        asyncio.run(_move_and_settle(s))
    assert _states(s, "source") == ["aborted"]
    assert "Commit" not in s.peers.calls and "Abort" in s.peers.calls  # the abort is told
    assert record.runner.resumed == 1 and record.state is State.RUNNING and not record.moving  # type: ignore[union-attr]


def test_an_unconfirmed_commit_is_sent_again_in_the_background_and_never_undone(
    side: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_source, "COMMIT_WAIT", 0.3)
    there = Destination(fail={"Commit": PeerUnreachableError("there cannot be reached")})
    s = side(there)
    record = running_app(s)

    async def scenario() -> None:
        with pytest.raises(PeerError, match="does not confirm taking 'sim'; it was handed off"):
            await s.source.move("sim", "there", ignore)
        assert _states(s, "source") == ["handed_off"] and record.moving
        assert record.runner.resumed == 0  # type: ignore[union-attr]  # decided: never resumed here
        del there.fail["Commit"]  # the destination answers again
        await asyncio.wait_for(asyncio.gather(*s.tasks.running), 10)

    asyncio.run(scenario())
    assert _states(s, "source") == ["done"] and record.state is State.AWAY and not record.moving


def test_a_restart_takes_up_a_decided_move_and_undoes_an_undecided_one(side: Any) -> None:
    there = Destination()
    s = side(there)
    decided, undecided = running_app(s, "decided"), running_app(s, "undecided")
    decided.state = undecided.state = State.CLOSED  # as a restarted daemon lists them

    async def scenario() -> None:
        await s.journal.record(SourceEntry("1" * 32, "decided", 1, SourceState.HANDED_OFF, 3, THERE, "there"))
        await s.journal.record(SourceEntry("2" * 32, "undecided", 1, SourceState.FROZEN, 3, THERE, "there"))
        await recover(s.journal, s.source, s.destination)
        await asyncio.wait_for(asyncio.gather(*s.tasks.running), 10)

    asyncio.run(scenario())
    assert sorted(_states(s, "source")) == ["aborted", "done"]
    assert decided.state is State.AWAY and decided.place.host == "there"  # never opened here again
    assert s.versions.opened == ["undecided"] and "Abort" in s.peers.calls and "Commit" in s.peers.calls


def test_a_source_answers_the_decision_it_recorded(side: Any) -> None:
    s = side(Destination())

    async def scenario() -> tuple[str, str]:
        await s.journal.record(SourceEntry("3" * 32, "x", 2, SourceState.HANDED_OFF, 1, THERE, "there"))
        ref = pb.MigrationRef(id="3" * 32, app="x", epoch=2)
        unknown = pb.MigrationRef(id="4" * 32, app="x", epoch=2)
        return (
            await s.source.decision(pb.DecisionRequest(migration=ref)),
            await s.source.decision(pb.DecisionRequest(migration=unknown)),
        )

    assert asyncio.run(scenario()) == ("handed_off", "aborted")


# -- the destination


async def stage_version(s: Side, migration: str, app: str = "sim") -> int:
    draft = make_draft(staging(migration), serialise({"n": 1}), kind="move", code=[("sim.py", b"import migrated\n")],
                       app_module="_mig_app_sim", app_class="Sim")  # fmt: skip
    return (await asyncio.to_thread(s.store.put_draft, draft)).version


def prepare_request(migration: str, version: int, epoch: int = 1) -> pb.PrepareRequest:
    return pb.PrepareRequest(
        migration=pb.MigrationRef(id=migration, app="sim", epoch=epoch),
        staged_version=version,
        settings=pb.AppSettings(kind="script", app_class="Sim", cwd="/home/me"),
        home="home",
        home_device_id="c" * 64,
    )


def test_a_destination_thaws_once_however_often_commit_comes(side: Any) -> None:
    s = side(Destination())
    migration = "5" * 32
    commit = pb.CommitRequest(migration=pb.MigrationRef(id=migration, app="sim", epoch=1))

    async def scenario() -> list[int]:
        version = await stage_version(s, migration)
        await s.destination.prepare(prepare_request(migration, version), peer(THERE, "there"))
        assert _states(s, "destination") == ["prepared"] and s.table.arrived == []
        return list(await asyncio.gather(*(s.destination.commit(commit) for _ in range(3))))

    pids = asyncio.run(scenario())
    assert pids == [4242] * 3 and len(s.table.arrived) == 1  # one thaw for three COMMITs
    spec, _, place = s.table.arrived[0]
    assert (place.epoch, place.home, spec.home_cwd) == (1, "home", "/home/me")
    assert _states(s, "destination") == ["committed"]


def test_a_destination_refuses_what_it_was_not_told_to_do(side: Any) -> None:
    s = side(Destination())
    migration = "6" * 32
    ref = pb.MigrationRef(id=migration, app="sim", epoch=1)

    async def scenario() -> None:
        with pytest.raises(AppNotFoundError, match="is not prepared"):
            await s.destination.commit(pb.CommitRequest(migration=ref))
        await s.destination.abort(pb.AbortRequest(migration=ref))  # ABORT overtook PREPARE
        version = await stage_version(s, migration)
        with pytest.raises(AppStateError, match="was aborted"):
            await s.destination.prepare(prepare_request(migration, version), peer(THERE, "there"))
        assert await asyncio.to_thread(s.store.latest, staging(migration)) is None  # what was staged is dropped

    asyncio.run(scenario())
    assert _states(s, "destination") == ["aborted"] and s.table.arrived == []


def test_a_restarted_destination_asks_the_source_and_does_as_it_says(side: Any) -> None:
    decisions = {"7" * 32: "handed_off", "8" * 32: "aborted"}

    async def answer(method: str, request: Any) -> Any:
        assert method == "Decision"
        return pb.DecisionReply(state=decisions[request.migration.id])

    s = side(answer)

    async def scenario() -> None:
        for migration in decisions:
            version = await stage_version(s, migration, "sim")
            await s.destination.prepare(prepare_request(migration, version), peer(THERE, "there"))
        await recover(s.journal, s.source, s.destination)
        await asyncio.wait_for(asyncio.gather(*s.tasks.running), 10)

    asyncio.run(scenario())
    rows = s.db.read(lambda conn: dict(conn.execute("SELECT id, state FROM moves WHERE role = 'destination'")))
    assert rows == {"7" * 32: DestState.COMMITTED.value, "8" * 32: DestState.ABORTED.value}
    assert len(s.table.arrived) == 1


async def _move_and_settle(s: Side) -> None:
    try:
        await s.source.move("sim", "there", ignore)
    finally:
        await asyncio.gather(*s.tasks.running, return_exceptions=True)
