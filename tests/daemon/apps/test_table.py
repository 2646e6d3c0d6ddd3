"""The app table with real runners and a real store, home I/O recorded by a fake: a run, a stop, crash recovery
(from the last version, not without one, held back while the app moves), and the table's records kept."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from migrated.checkpoint import Store
from migrated.daemon._db import Db
from migrated.daemon._records import AppRecord, AppSpec, State
from migrated.daemon._runner import Runner
from migrated.daemon._spares import SpareRunners
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps import AppRegistry, AppTable, Checkpointer
from migrated.errors import AppExistsError, AppStateError
from migrated.runtime._wire import Frame, Kind, encode, io_payload

pytestmark = pytest.mark.integration  # real runner processes

COUNTER = """
import migrated

class Counter(migrated.App):
    def start(self):
        self.n = 0
        self.block = bytearray(1 << 20)  # a buffer of its own, kept apart from the stream

    def step(self):
        self.n += 1
        print(f"n={self.n}", flush=True)
        return 0.02
"""


class IO:
    """Home I/O as the table drives it, recorded; a runner's one call at start (home.resume) is answered with
    nothing held at home."""

    def __init__(self) -> None:
        self.attached: list[str] = []
        self.runners: list[Runner] = []
        self.ends: list[tuple[str, State]] = []
        self.closes: list[str] = []
        self.inputs: list[tuple[str, str]] = []

    def attach(self, record: AppRecord, runner: Runner) -> Callable[[Frame], None]:
        self.attached.append(record.name)
        self.runners.append(runner)

        def receive(frame: Frame) -> None:
            if frame.kind is Kind.IO:
                header, _ = frame.io()
                assert header["op"] == "home.resume"
                runner.push(encode(Kind.IO_REPLY, io_payload({"id": header["id"], "out": 0})))

        return receive

    async def ended(self, record: AppRecord) -> None:
        self.ends.append((record.name, record.state))

    async def closed(self, name: str) -> None:
        self.closes.append(name)

    def input(self, record: AppRecord, text: str) -> None:
        self.inputs.append((record.name, text))


@dataclass
class Rig:
    table: AppTable
    registry: AppRegistry
    store: Store
    io: IO
    folder: Path

    def spec(self, name: str, **more: Any) -> AppSpec:
        path = self.folder / f"{name}.py"
        path.write_text(textwrap.dedent(COUNTER).lstrip())
        return AppSpec(name=name, kind="script", file=str(path), app_class="", cwd=str(self.folder), **more)


@asynccontextmanager
async def rig(tmp_path: Path, spares: int = 0) -> AsyncIterator[Rig]:
    """A table as the daemon composes it; at the end its runners are stopped and their watchers waited for, as
    when the daemon stops."""
    store = Store(tmp_path / "checkpoints.sqlite")
    try:
        db = Db(store)
        db.open(tmp_path)
        registry = AppRegistry(db, store, tmp_path / "console", 10_000, 1 << 22)
        async with asyncio.TaskGroup() as group:
            tasks = Tasks(group)
            io = IO()
            spare_runners = SpareRunners(tasks, spares)
            table = AppTable(registry, Checkpointer(store, 5.0), io, tasks, store, tmp_path, spare_runners)
            yield Rig(table, registry, store, io, tmp_path)
            spare_runners.close()
            for record in registry:
                if record.running:
                    await table.stop(record.name, force=True)
            tasks.cancel()
            for runner in io.runners:  # each process reaped while the loop runs
                runner.kill()
                await runner.proc.wait()
    finally:
        store.close()


def console_text(record: AppRecord) -> str:
    record.console.log.flush()
    return b"".join(data for _, data in record.console.log.read(0, 100_000).lines).decode()


async def counted(record: AppRecord, past: int) -> int:
    """Wait until the app's console shows a count past ``past``; return the last count."""
    async with asyncio.timeout(15):
        while True:
            counts = [int(n) for n in re.findall(r"^n=(\d+)$", console_text(record), re.M)]
            if counts and counts[-1] > past:
                return counts[-1]
            await asyncio.sleep(0.05)


async def first_count(record: AppRecord, mark: int) -> int:
    """Wait for the first count the console shows past its first ``mark`` characters; return it."""
    async with asyncio.timeout(15):
        while True:
            counts = re.findall(r"^n=(\d+)$", console_text(record)[mark:], re.M)
            if counts:
                return int(counts[0])
            await asyncio.sleep(0.05)


async def shown(record: AppRecord, text: str) -> None:
    """Wait until the app's console shows ``text``."""
    async with asyncio.timeout(20):
        while True:
            if text in console_text(record):
                return
            await asyncio.sleep(0.05)


def test_a_run_and_a_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            record = await r.table.run(r.spec("counter"))
            assert record.state is State.RUNNING and record.pid > 0 and r.io.attached == ["counter"]
            await counted(record, 3)
            with pytest.raises(AppExistsError, match="exists already"):
                await r.table.run(r.spec("counter"))
            await r.table.stop("counter")
            assert (record.state, record.reason) == (State.EXITED, "stopped by mig kill") and record.pid == 0
            assert r.io.ends == [("counter", State.EXITED)]
            with pytest.raises(AppStateError, match="is not running"):
                await r.table.stop("counter")

    asyncio.run(scenario())


def test_a_crash_comes_back_from_the_last_version_and_not_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            saved = await r.table.run(r.spec("saved"))
            unsaved = await r.table.run(r.spec("unsaved"))
            await counted(saved, 5)
            async with saved.lock:
                await r.table.checkpointer.take(saved, "manual", "")
            at = await counted(saved, 0)
            for record in (saved, unsaved):
                os.kill(record.pid, signal.SIGKILL)
            await shown(saved, "saved is back from version 1")
            assert unsaved.state is State.CRASHED and "it has no checkpoint to come back from" in unsaved.reason
            versions = await asyncio.to_thread(r.store.list_versions, "saved")
            assert [v.kind for v in versions] == ["manual", "crash"]
            assert await counted(saved, at)  # it counts on, from the version it came back from

    asyncio.run(scenario())


def test_a_crash_during_a_move_is_held_back_until_the_move_says(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            record = await r.table.run(r.spec("mover"))
            async with record.lock:
                await r.table.checkpointer.take(record, "manual", "")
            record.moving = True
            os.kill(record.pid, signal.SIGKILL)
            await record.ended.wait()
            await asyncio.sleep(1.5)  # a recovery would start within 0.5 s
            assert record.state is State.CRASHED and record.restarts == 0 and not record.console.closed
            record.moving = False  # the move was undone
            await r.table.bring_back(record)
            await shown(record, "mover is back from version 1")
            assert record.running and record.restarts == 1

    asyncio.run(scenario())


def test_input_is_taken_while_the_app_moves_also_once_its_copy_here_ended(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            record = await r.table.run(r.spec("mover"))
            record.moving = True
            await r.table.end_copy(record, "moved to h1")  # handed off; the record is not marked away yet
            assert record.state is State.CLOSED
            await r.table.send("mover", "typed meanwhile")  # its home keeps it for the copy that goes on
            assert r.io.inputs == [("mover", "typed meanwhile")]
            record.moving = False
            with pytest.raises(AppStateError, match="it cannot take input"):
                await r.table.send("mover", "typed once it closed")

    asyncio.run(scenario())


BURST = """
import migrated

class Burst(migrated.App):
    def start(self):
        self.n = 0

    def step(self):
        for _ in range(3000):  # 150 KB: more than the pipe and the daemon's read buffer hold
            self.n += 1
            print(f"line {self.n:05d} " + "x" * 40)
        return 60.0
"""


def test_a_checkpoint_is_stored_once_the_console_has_what_its_state_printed(tmp_path: Path) -> None:
    """The output comes on a pipe of its own and may lag behind the checkpoint's frames (the soak lost a line so,
    with a daemon killed just after a checkpoint): the runner says how far its output went when it captured, and
    the version is stored once the console has it, its cursor past the last line the captured state printed."""

    async def scenario() -> None:
        async with rig(tmp_path) as r:
            spec = r.spec("burst")
            await asyncio.to_thread(Path(spec.file).write_text, textwrap.dedent(BURST).lstrip())
            record = await r.table.run(spec)
            await shown(record, "line 00001 ")  # the step runs: the capture comes after its 3000 lines
            async with record.lock:  # while the last of them are still on their way
                info, captured = await r.table.checkpointer.take(record, "manual", "")
            assert captured.output >= 3000 * len("line 00001 " + "x" * 40 + "\n")  # how far its output went
            cursor = (await asyncio.to_thread(r.store.manifest, "burst", info.version)).console_cursor
            record.console.log.flush()
            seen = record.console.log.read(1, 10_000, 1 << 22).lines
            last = [seq for seq, data in seen if data.startswith(b"line 03000 ")]
            assert last and cursor >= last[0], (cursor, last)

    asyncio.run(scenario())


def maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as mapped:
        return mapped.read()


def test_an_arrival_thaws_in_the_runner_readied_for_it_and_reads_its_own_version(tmp_path: Path) -> None:
    """A move readies a runner during its pre-copy (here: from version 1); the thaw of the final version (2, a
    later count) takes that runner and goes on from version 2. A readied runner that died is passed over."""

    async def scenario() -> None:
        async with rig(tmp_path, spares=1) as r:
            record = await r.table.run(r.spec("mover"))
            await counted(record, 3)
            async with record.lock:
                await r.table.checkpointer.take(record, "manual", "")
            before = await counted(record, await counted(record, 0) + 3)  # version 1 counted less than this
            async with record.lock:
                await r.table.checkpointer.take(record, "manual", "")
            after = await counted(record, 0)  # version 2 counted at least `before`, at most this
            await r.table.stop("mover", force=True)
            spares, store = r.table.spares, str(r.store.path)
            for key in ("move-1", "move-2"):  # "decimal": a module a runner does not import by itself
                await spares.ready_for(key, {"modules": ["decimal"], "store": store, "app": "mover", "version": 1})
            readied, dead = spares._ahead["move-1"], spares._ahead["move-2"]
            assert "_decimal" in maps(readied.pid)  # what the app had imported, imported ahead
            os.kill(dead.pid, signal.SIGKILL)
            await dead.proc.wait()
            for key in ("move-1", "move-2"):
                mark = len(console_text(record))
                record = await r.table.arrive(r.spec("mover"), 2, record.place, readied=key)
                assert (record.pid == readied.pid) == (key == "move-1") and record.pid != dead.pid
                first = await first_count(record, mark)
                assert before < first <= after + 1  # from version 2, not from version 1
                await r.table.stop("mover", force=True)
            assert not spares._ahead

    asyncio.run(scenario())


def test_the_table_keeps_what_a_restart_needs(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, State, str]]:
        async with rig(tmp_path) as r:
            record = await r.table.run(r.spec("kept", autosave=0.0, args=("a", "b c")))
            async with record.lock:
                await r.table.checkpointer.take(record, "manual", "")
            await r.table.stop("kept")
        async with rig(tmp_path) as again:
            await again.registry.load_saved()
            return [(rec.name, rec.state, " ".join(rec.spec.args)) for rec in again.registry]

    assert asyncio.run(scenario()) == [("kept", State.EXITED, "a b c")]
