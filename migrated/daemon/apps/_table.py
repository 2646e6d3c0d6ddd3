"""Each app's run on this host: start a runner, watch it, bring a crashed app back, stop it, take in an app that
moved here, hand one off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from migrated.checkpoint import Kind, Store
from migrated.daemon._faults import fault_point
from migrated.daemon._records import AppRecord, AppSpec, Place, State
from migrated.daemon._runner import Outcome, Runner
from migrated.daemon._spares import SpareRunners
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps._checkpointer import Checkpointer
from migrated.daemon.apps._files import check_spec
from migrated.daemon.apps._registry import AppRegistry
from migrated.errors import AppExistsError, AppStateError, MigError
from migrated.runtime._wire import Frame

__all__ = ["AppTable", "RunnerIO"]

log = logging.getLogger("migrated.daemon")

STOP_GRACE = 5.0
CRASH_WINDOW = 60.0  # crashes this close together count towards giving up
MAX_CRASHES = 5


class RunnerIO(Protocol):
    """Where a runner's home I/O goes (the home package): told when a runner starts and ends."""

    def attach(self, record: AppRecord, runner: Runner) -> Callable[[Frame], None]:
        """A runner starts for ``record``: where its frames go."""
        ...

    async def ended(self, record: AppRecord) -> None:
        """A runner of ``record`` ended."""
        ...

    async def closed(self, name: str) -> None:
        """The app will not run until opened again."""
        ...

    def input(self, record: AppRecord, text: str) -> None:
        """Lines typed at home, for the app wherever it runs."""
        ...


class AppTable:
    """The apps' runs on this host; the records are the registry's, their home I/O the ``io``'s."""

    def __init__(
        self,
        registry: AppRegistry,
        checkpointer: Checkpointer,
        io: RunnerIO,
        tasks: Tasks,
        store: Store,
        state_dir: Path,
        spares: SpareRunners,
    ) -> None:
        self.registry = registry
        self.spares = spares
        self.checkpointer = checkpointer
        self.io = io
        self.store = store
        self._tasks = tasks
        self._state_dir = state_dir
        self._shutting_down = asyncio.Event()

    async def run(self, spec: AppSpec) -> AppRecord:
        """Start an app in a new runner; return once its code has loaded."""
        check_spec(spec)
        stored = await asyncio.to_thread(self.store.latest, spec.name)
        found = self.registry.find(spec.name)
        if found is not None or stored is not None:
            state = found.state.value if found is not None else "with checkpoints"
            raise AppExistsError(
                f"an app called {spec.name!r} exists already ({state}); choose another with --name "
                f"or remove it with mig rm {spec.name}"
            )
        record = AppRecord(spec, self.registry.console(spec.name))
        self.registry.add(record)
        try:
            await self.start(record, spec.load_request())
        except BaseException:
            self.registry.drop(record)
            raise
        await self.registry.save(record, State.RUNNING)
        return record

    async def start(self, record: AppRecord, load: dict[str, object], readied: str = "") -> dict[str, Any]:
        """Start a runner for ``record`` and load (or thaw) the app in it; return what the runner reported.
        ``readied``: the key of a runner readied for it (``SpareRunners.ready_for``)."""
        record.state, record.runner = State.STARTING, None
        record.ended = asyncio.Event()  # a stop waits for this run, not for the end of the one before
        started = time.perf_counter()
        try:
            record.runner = await self.spares.take(record.spec.cwd, readied)
            frames = self.io.attach(record, record.runner)
            home = {"cwd": record.spec.home_cwd or record.spec.cwd, "away": record.files_away}
            load = {**load, "cwd": record.spec.cwd, "home": {**home, "local": [str(self._state_dir)]}}
            loaded = await record.runner.load(load, record.console, frames)
        except BaseException as exc:
            if record.runner is not None:
                record.runner.kill()  # also when the request was cancelled mid-load
            record.state, record.ended_at = State.CRASHED, time.time()
            record.reason = f"it did not start: {exc.message if isinstance(exc, MigError) else type(exc).__name__}"
            record.ended.set()
            raise
        record.app_class = str(loaded.get("app_class", ""))
        record.state, record.started_at = State.RUNNING, time.time()
        record.stop_reason = record.reason = ""
        record.closing = False
        for note in loaded.get("damaged", []):
            await record.console.note(str(note))
        self._tasks.spawn(self._watch(record, record.runner), f"watch {record.name}")
        if record.spec.autosave > 0:
            autosave = self.checkpointer.autosave(record, record.runner)
            record.autosave_task = self._tasks.spawn(autosave, f"autosave {record.name}")
        log.info("started %s (pid %d) in %.0f ms", record.name, record.pid, (time.perf_counter() - started) * 1000)
        return loaded

    async def _watch(self, record: AppRecord, runner: Runner) -> None:
        """Wait for the runner to end; record how, and bring a crashed app back. Whatever fails here, the run
        is marked ended (a stop waits for that) and the daemon goes on."""
        ended = record.ended  # a recovery starts a new run with an event of its own
        try:
            await self._ended(record, await runner.wait())
        except Exception:
            log.exception("the watcher of %s failed; %s is marked crashed", record.name, record.name)
            record.state, record.reason = State.CRASHED, record.reason or "the daemon lost track of it"
        finally:
            ended.set()

    async def _ended(self, record: AppRecord, outcome: Outcome) -> None:
        if record.stop_reason and outcome.crashed and outcome.exit_code < 0:
            outcome = Outcome(False, outcome.exit_code, record.stop_reason)
        record.state = State.CRASHED if outcome.crashed else State.EXITED
        if record.closing and not outcome.crashed:
            record.state = State.CLOSED
        record.exit_code, record.reason, record.ended_at = outcome.exit_code, outcome.reason, time.time()
        if record.autosave_task is not None:
            record.autosave_task.cancel()
            record.autosave_task = None
        if record.moving:  # the move decides: gone there, or back here; the console stays open meanwhile
            await self.registry.save(record)
            await self.io.ended(record)
            if not record.closing:  # it ended by itself (a crash), not by the hand-off
                await record.console.note(f"{record.name} {record.state.value} while it moved: {record.reason}")
                log.info("%s %s while it moved: %s", record.name, record.state.value, record.reason)
            return
        recover = record.state is State.CRASHED and record.spec.restart == "on-crash" and not record.stop_reason
        recover = recover and self.registry.current(record)
        why_not = self._why_not_recover(record) if recover else ""
        if why_not:
            record.reason += f"; not brought back: {why_not} (mig open {record.name} tries again)"
        # An app on its way back is kept as running: a restart in the meantime finds it as any app that ran.
        await self.registry.save(record, State.RUNNING if recover and not why_not else None)
        await self.io.ended(record)
        await record.console.note(f"{record.name} {record.state.value}: {record.reason}")
        log.info("%s %s: %s", record.name, record.state.value, record.reason)
        if recover and not why_not:
            await self._recover(record)
        else:
            await record.console.close()

    def _why_not_recover(self, record: AppRecord) -> str:
        """Why a crashed app cannot be brought back now ("" when it can); counts the crash."""
        now = time.monotonic()
        record.crash_times = [t for t in record.crash_times if now - t < CRASH_WINDOW] + [now]
        if not record.version:
            return "it has no checkpoint to come back from"
        if len(record.crash_times) > MAX_CRASHES:
            return f"it crashed {len(record.crash_times)} times within {CRASH_WINDOW:.0f} s"
        return ""

    async def bring_back(self, record: AppRecord) -> None:
        """Recover an app that crashed while it moved, now that the move was undone (its crash was held back)."""
        if record.running or not self.registry.current(record):
            return
        why_not = "--restart never" if record.spec.restart != "on-crash" else self._why_not_recover(record)
        if why_not:
            await self._give_up(record, why_not)
            return
        await self.registry.save(record, State.RUNNING)
        self._tasks.spawn(self._recover(record), f"recover {record.name}")

    async def _recover(self, record: AppRecord) -> None:
        """Bring a crashed app back from its last good version, after a backoff that grows with its crashes."""
        delay = min(30.0, 0.5 * 2 ** (len(record.crash_times) - 1))
        await record.console.note(f"bringing {record.name} back from its last good version in {delay:.1f} s")
        await fault_point("recovery-waiting")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._shutting_down.wait(), delay)
        if self._shutting_down.is_set():
            await self._give_up(record, "the daemon stopped first")
            return
        async with record.lock:
            if record.running or not self.registry.current(record):
                return  # opened or removed meanwhile
            record.console.reopen()
            try:
                loaded = await self.start(record, record.spec.load_request(str(self.store.path)))
            except MigError as exc:
                await self._give_up(record, f"bringing it back failed: {exc.message}")
                return
            record.restarts += 1
            restored = int(loaded.get("version", record.version))
            message = f"brought back from version {restored} after: {record.reason}"
            try:
                info = await asyncio.to_thread(self.store.restore, record.name, restored, message, Kind.CRASH)
            except MigError as exc:  # it runs all the same; only its history lacks the crash version
                await record.console.note(f"{record.name} is back from version {restored} ({exc.message})")
                return
            record.version = info.version
            await self.registry.save(record, State.RUNNING)
        await record.console.note(f"{record.name} is back from version {restored} (as version {info.version})")

    async def _give_up(self, record: AppRecord, why: str) -> None:
        record.reason = f"{record.reason}; not brought back: {why} (mig open {record.name} tries again)"
        await self.registry.save(record)
        await record.console.note(f"{record.name} is not brought back: {why}; mig open {record.name} tries again")
        await record.console.close()

    async def stop(self, name: str, force: bool = False, reason: str = "") -> AppRecord:
        """Stop a running app: ``on_stop`` then exit, or SIGKILL after a grace period (at once if ``force``)."""
        record = self.registry.get(name)
        if record.state is State.AWAY:
            raise AppStateError(f"{record.not_here()}; stop it there (mig --dir on that host) or move it back first")
        if not record.running or record.runner is None:
            raise AppStateError(f"{name!r} is not running (it {record.state.value}); nothing to stop")
        runner = record.runner
        record.state = State.STOPPING
        record.stop_reason = reason or ("killed with SIGKILL by mig kill --force" if force else "stopped by mig kill")
        if not force:
            await runner.request_stop(record.stop_reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.ended.wait(), STOP_GRACE)
        if not record.ended.is_set():
            runner.kill()
            await record.ended.wait()
        return record

    async def end_copy(self, record: AppRecord, why: str) -> None:
        """End the runner of a copy that must not go on (it moved on, or a newer copy runs) without ``on_stop``."""
        if record.runner is not None and record.running:
            record.closing, record.stop_reason = True, why
            record.runner.kill()
            await record.ended.wait()

    async def remove(self, name: str, force: bool = False) -> None:
        """Forget an app that does not run (stopping it first with ``force``)."""
        record = self.registry.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; move it back here before removing it")
        if record.running:
            if not force:
                raise AppStateError(
                    f"{name!r} is running; stop it with mig kill {name} first, or use mig rm --force {name}"
                )
            await self.stop(name, force=True, reason="removed by mig rm --force")
        await self.registry.forget(name)
        await self.io.closed(name)
        await asyncio.to_thread(self.store.remove_app, name)

    async def send(self, name: str, text: str) -> None:
        """Deliver each line of ``text`` to the app's ``on_input``, wherever it runs (its home keeps the lines
        until the app has them, across moves)."""
        record = self.registry.get(name)
        if record.visitor:
            raise AppStateError(f"{name!r} takes its input at its home {record.place.home}; mig send it there")
        if record.state not in (State.RUNNING, State.AWAY, State.STARTING) and not record.moving:
            raise AppStateError(f"{name!r} is not running (it {record.state.value}); it cannot take input")
        if record.handing_home:
            raise AppStateError(
                f"{name!r}'s home is moving to {record.handing_home}; type the input there once mig rehome is done"
            )
        self.io.input(record, text)

    async def arrive(
        self, spec: AppSpec, version: int, place: Place, console: list[bytes] | None = None, readied: str = ""
    ) -> AppRecord:
        """Run an app that moved here, from ``version`` (already in the store), at ``place``; ``console`` starts the
        log of an app whose home moves here; ``readied`` names the runner readied for it, if any."""
        record = self.registry.find(spec.name)
        if record is None:
            record = AppRecord(spec, self.registry.console(spec.name))
            self.registry.add(record)
        else:
            record.console.reopen()
        if console:
            for line in console:
                await record.console.write(line)
            await record.console.note(f"{spec.name}'s home moved here; the lines above are from its old home")
        record.place, record.remote.pid, record.version = place, 0, version
        async with record.lock:
            await self.start(record, spec.load_request(str(self.store.path), version), readied)
        await self.registry.save(record, State.RUNNING)
        await record.console.note(f"{spec.name} arrived (epoch {place.epoch}), from version {version}")
        return record

    async def arrive_closed(self, spec: AppSpec, version: int, epoch: int) -> AppRecord:
        """An app closed on another host came back here closed, at ``version``."""
        record = self.registry.find(spec.name)
        if record is None:
            record = AppRecord(spec, self.registry.console(spec.name))
            self.registry.add(record)
        record.state, record.version, record.place = State.CLOSED, version, Place(epoch=epoch)
        record.remote.pid, record.ended_at = 0, time.time()
        record.ended.set()
        await self.registry.save(record)
        return record

    async def close_all(self, close: Callable[[str, str], Any]) -> None:
        """Close every running app (daemon shutdown) with ``close(name, why)``; one that cannot be saved is
        stopped, its reason logged."""
        self._shutting_down.set()
        running = [record for record in self.registry if record.state is State.RUNNING]
        await asyncio.gather(*(self._close_or_stop(record, close) for record in running))
        left = [record for record in self.registry if record.running and not record.closing]
        await asyncio.gather(*(self.stop(r.name, reason="the daemon stopped") for r in left), return_exceptions=True)
        await asyncio.gather(*(record.ended.wait() for record in running))

    async def _close_or_stop(self, record: AppRecord, close: Callable[[str, str], Any]) -> None:
        try:
            await close(record.name, "closed when the daemon stopped")
        except MigError as exc:
            since = f"version {record.version}" if record.version else "its start (it has no checkpoint)"
            log.warning("%s could not be saved (%s); it is stopped, and opens from %s", record.name, exc, since)
            await record.console.note(f"{record.name} could not be saved at daemon shutdown: {exc}")
            reason = "the daemon stopped"
            if record.version:  # closed at its last good version: mig open takes it up from there
                record.closing = True
                reason = f"not saved when the daemon stopped ({exc.message}); mig open opens version {record.version}"
            with contextlib.suppress(MigError):
                await self.stop(record.name, reason=reason)
