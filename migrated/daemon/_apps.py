"""The app table and each app's lifecycle on this host: run, checkpoint, close, open, restore, stop, remove."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrated._names import check_app_name
from migrated._storage import storage_error
from migrated.checkpoint import Export, Kind, Store, VersionInfo, code_bundle, parse_policy, read_export
from migrated.checkpoint._archive import Sign
from migrated.daemon import _code
from migrated.daemon._console import Console
from migrated.daemon._exports import ExportTrust, Signer
from migrated.daemon._runner import SAFE_POINT_WAIT, Busy, Captured, Outcome, Runner
from migrated.errors import (
    AppBusyError,
    AppExistsError,
    AppFileError,
    AppNotFoundError,
    AppStateError,
    ExportFileError,
    MigError,
    StorageError,
    UsageError,
)

if TYPE_CHECKING:
    from migrated.daemon._home import HomeIO

__all__ = ["AppRecord", "AppSpec", "AppTable", "State"]

log = logging.getLogger("migrated.daemon")

STOP_GRACE = 5.0
CRASH_WINDOW = 60.0  # crashes this close together count towards giving up
MAX_CRASHES = 5
RESTART_POLICIES = ("on-crash", "never")
_PLACE = ("epoch", "host", "host_device", "home", "home_device", "files_home", "files_home_name")


class State(enum.Enum):
    """Where an app is in its lifecycle."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    CRASHED = "crashed"
    CLOSED = "closed"
    AWAY = "away"  # runs on another host; this one is its home and keeps its record


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What to run: fixed when the app is created."""

    name: str
    kind: str  # "script" or "repl"
    file: str
    app_class: str
    cwd: str
    args: tuple[str, ...] = ()
    autosave: float = 0.0  # seconds between autosaves; 0: none
    keep: str = ""  # retention policy of autosaves; empty: keep all
    restart: str = "on-crash"  # or "never"
    home_cwd: str = ""  # its working directory at home, when this host runs it from another folder


@dataclass(eq=False)
class AppRecord:
    """One app in the table, with its console and (while it runs) its runner."""

    spec: AppSpec
    console: Console
    state: State = State.STARTING
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0
    exit_code: int = 0
    reason: str = ""
    runner: Runner | None = None
    app_class: str = ""
    stop_reason: str = ""
    closing: bool = False
    version: int = 0  # latest checkpoint version
    restarts: int = 0  # times the daemon brought it back after a crash
    epoch: int = 0  # grows with every hand-off between hosts
    host: str = ""  # the peer that runs it while AWAY ("" here)
    host_device: str = ""
    home: str = ""  # its home when that is another host ("" here)
    home_device: str = ""
    files_home: str = ""  # device id of the host that serves its files when its home does not ("": the home)
    files_home_name: str = ""
    moving: bool = False
    handing_home: str = ""  # the host its home is being handed to (input is refused here from then on)
    remote_pid: int = 0  # the runner's pid on ``host``
    remote_state: str = ""  # while AWAY: its state there, as its host last said
    console_applied: int = 0  # while AWAY: the last console line of the remote copy applied here
    console_session: float = 0.0  # and the start of the daemon that numbered it
    crash_times: list[float] = field(default_factory=list)
    save_error: str = ""  # why its last checkpoint was not stored ("" once one is)
    autosave_task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one checkpoint or transition at a time

    @property
    def name(self) -> str:
        """The app's name."""
        return self.spec.name

    @property
    def pid(self) -> int:
        """The runner's pid while it runs, else 0."""
        return self.runner.pid if self.runner is not None and self.running else 0

    @property
    def running(self) -> bool:
        """Whether a runner process hosts the app now."""
        return self.state in (State.STARTING, State.RUNNING, State.STOPPING)

    def place(self) -> dict[str, Any]:
        """Where it runs and where its home is, as kept across restarts."""
        return {key: getattr(self, key) for key in _PLACE}

    @property
    def files_away(self) -> bool:
        """Whether its files resolve anywhere but in its runner's own working directory (proxied then)."""
        return bool(self.home_device or self.files_home) or self.spec.home_cwd not in ("", self.spec.cwd)

    def not_here(self) -> str:
        """Why this host cannot act on the app itself ("" when it can)."""
        if self.state is State.AWAY:
            return f"{self.name!r} runs on {self.host}"
        return f"{self.name!r} is moving" if self.moving else ""


class AppTable:
    """Every app this daemon knows, by name; watcher tasks run in the daemon's task group."""

    def __init__(
        self,
        tasks: asyncio.TaskGroup,
        state_dir: Path,
        store: Store,
        console_lines: int,
        console_bytes: int,
        exports: ExportTrust,
        safe_point_wait: float = SAFE_POINT_WAIT,
    ) -> None:
        self._tasks = tasks
        self._exports = exports
        self._safe_point_wait = safe_point_wait
        self._apps: dict[str, AppRecord] = {}
        self.store = store
        self._console_dir = state_dir / "console"
        self._specs = _SpecFiles(state_dir / "apps")
        self._code_dir = state_dir / "code"
        self._shutting_down = asyncio.Event()
        self._console_lines = console_lines
        self._console_bytes = console_bytes
        self._unsaved: dict[str, AppRecord] = {}  # records the disk refused to keep, saved again when it takes them
        self.io: HomeIO | None = None  # home I/O, set once the daemon has its peers

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._apps.values()))

    def find(self, name: str) -> AppRecord | None:
        """The app called ``name``, if there is one."""
        return self._apps.get(name)

    def get(self, name: str) -> AppRecord:
        """The app called ``name``."""
        try:
            return self._apps[name]
        except KeyError:
            raise AppNotFoundError(f"no app is called {name!r}; mig ps lists the apps") from None

    async def load_saved(self) -> None:
        """Bring back the apps an earlier run of the daemon knew: closed ones stay closed and openable."""
        for spec, state, place in self._specs.load():
            latest = await asyncio.to_thread(self.store.latest, spec.name)
            at_home = not place.get("home_device")  # a visitor's lines went to its home, which keeps them
            console = self._new_console(spec.name, keep=at_home)
            record = AppRecord(spec, console, version=latest.version if latest else 0)
            for key in _PLACE:
                if key in place:
                    setattr(record, key, place[key])
            if console.log.next_seq > 1:
                await console.note("the daemon restarted; the lines above are from before")
            if state == State.AWAY.value:
                record.state = State.AWAY
                self._apps[spec.name] = record
                continue
            if state == State.CLOSED.value and latest is not None:
                record.state, record.reason = State.CLOSED, str(place.get("reason", ""))
            elif latest is not None:
                record.state = State.CLOSED
                record.reason = (
                    f"the daemon stopped while it ran; mig open {spec.name} resumes it from version {latest.version}"
                )
            else:
                record.state = State.CRASHED if state != State.EXITED.value else State.EXITED
                record.reason = "the daemon stopped while it ran, before it had a checkpoint"
            record.ended.set()
            self._apps[spec.name] = record
            self.save(record)
        if self._console_dir.is_dir():
            for directory in self._console_dir.iterdir():
                if directory.name not in self._apps:  # an app removed while the daemon was not running
                    shutil.rmtree(directory, ignore_errors=True)

    def _new_console(self, name: str, keep: bool = False) -> Console:
        return Console(self._console_lines, self._console_bytes, self._console_dir / name, keep)

    async def run(self, spec: AppSpec) -> AppRecord:
        """Start an app in a new runner; return once its code has loaded."""
        _check_spec(spec)
        stored = await asyncio.to_thread(self.store.latest, spec.name)
        if spec.name in self._apps or stored is not None:
            state = self._apps[spec.name].state.value if spec.name in self._apps else "with checkpoints"
            raise AppExistsError(
                f"an app called {spec.name!r} exists already ({state}); choose another with --name "
                f"or remove it with mig rm {spec.name}"
            )
        record = AppRecord(spec, self._new_console(spec.name))
        self._apps[spec.name] = record
        try:
            await self._start(record, _load_spec(spec))
        except BaseException:
            del self._apps[spec.name]
            record.console.destroy()
            raise
        self.save(record, State.RUNNING)
        return record

    async def _start(self, record: AppRecord, load: dict[str, object]) -> dict[str, Any]:
        """Start a runner for ``record`` and load (or thaw) the app in it; return what the runner reported."""
        record.state = State.STARTING
        record.runner = None
        record.ended = asyncio.Event()  # a stop waits for this run, not for the end of the one before
        try:
            record.runner = await Runner.spawn(record.spec.cwd)
            home_io = self.io.attach(record, record.runner) if self.io is not None else None
            home = {"cwd": record.spec.home_cwd or record.spec.cwd, "away": record.files_away}
            load = {**load, "home": {**home, "local": [str(self._code_dir.parent)]}}
            loaded = await record.runner.load(load, record.console, home_io)
        except BaseException as exc:
            if record.runner is not None:
                record.runner.kill()  # also when the request was cancelled mid-load
            record.state, record.ended_at = State.CRASHED, time.time()
            record.reason = f"it did not start: {exc.message if isinstance(exc, MigError) else type(exc).__name__}"
            record.ended.set()
            raise
        record.app_class = str(loaded.get("app_class", ""))
        record.state = State.RUNNING
        record.started_at = time.time()
        record.stop_reason = record.reason = ""
        record.closing = False
        for note in loaded.get("damaged", []):
            await record.console.note(str(note))
        self._tasks.create_task(self._watch(record, record.runner), name=f"watch {record.name}")
        if record.spec.autosave > 0:
            record.autosave_task = self._tasks.create_task(
                self._autosave(record, record.runner), name=f"autosave {record.name}"
            )
        log.info("started %s (pid %d)", record.name, record.pid)
        return loaded

    async def _autosave(self, record: AppRecord, runner: Runner) -> None:
        """Checkpoint every ``autosave`` seconds while this runner lives; thin autosaves by the policy. A failed
        autosave is said once and tried again after a pause that doubles with each failure."""
        policy = parse_policy(record.spec.keep) if record.spec.keep else None
        failures, said = 0, ""
        while True:
            await asyncio.sleep(_backoff(record.spec.autosave, failures))
            if record.runner is not runner or not record.running:
                return
            if record.state is not State.RUNNING:
                continue
            try:
                info, _ = await self.checkpoint(record.name, "autosave")
                if policy is not None:
                    await asyncio.to_thread(self.store.apply_retention, record.name, policy)
            except MigError as exc:
                failures += 1
                if exc.message != said:  # say it once, not every period
                    again = _backoff(record.spec.autosave, failures)
                    await record.console.note(
                        f"autosave of {record.name} failed: {exc.message} (again in {again:.0f} s)"
                    )
                said = exc.message
                continue
            if failures:
                await record.console.note(f"autosave of {record.name} works again (version {info.version})")
            failures, said = 0, ""

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
        record.exit_code = outcome.exit_code
        record.reason = outcome.reason
        record.ended_at = time.time()
        self.save(record)
        if record.autosave_task is not None:
            record.autosave_task.cancel()
            record.autosave_task = None
        if self.io is not None:
            await self.io.ended(record)
        if record.moving and record.state is State.CRASHED:  # the move decides: gone there, or brought back here
            await record.console.note(f"{record.name} crashed while it moved: {record.reason}")
            log.info("%s crashed while it moved: %s", record.name, record.reason)
            return
        recover = record.state is State.CRASHED and record.spec.restart == "on-crash" and not record.stop_reason
        recover = recover and self._apps.get(record.name) is record
        why_not = self._why_not_recover(record) if recover else ""
        if why_not:
            record.reason += f"; not brought back: {why_not} (mig open {record.name} tries again)"
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
        if record.running or self._apps.get(record.name) is not record:
            return
        why_not = "--restart never" if record.spec.restart != "on-crash" else self._why_not_recover(record)
        if why_not:
            await self._give_up(record, why_not)
            return
        self._tasks.create_task(self._recover(record), name=f"recover {record.name}")

    async def _recover(self, record: AppRecord) -> None:
        """Bring a crashed app back from its last good version, after a backoff that grows with its crashes."""
        delay = min(30.0, 0.5 * 2 ** (len(record.crash_times) - 1))
        await record.console.note(f"bringing {record.name} back from its last good version in {delay:.1f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._shutting_down.wait(), delay)
        if self._shutting_down.is_set():
            await self._give_up(record, "the daemon stopped first")
            return
        async with record.lock:
            if record.running or self._apps.get(record.name) is not record:
                return  # opened or removed meanwhile
            record.console.reopen()
            try:
                loaded = await self._start(record, _load_spec(record.spec, self.store.path))
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
            self.save(record, State.RUNNING)
        await record.console.note(f"{record.name} is back from version {restored} (as version {info.version})")

    async def _give_up(self, record: AppRecord, why: str) -> None:
        record.reason = f"{record.reason}; not brought back: {why} (mig open {record.name} tries again)"
        await record.console.note(f"{record.name} is not brought back: {why}; mig open {record.name} tries again")
        await record.console.close()

    async def stop(self, name: str, force: bool = False, reason: str = "") -> AppRecord:
        """Stop a running app: ``on_stop`` then exit, or SIGKILL after a grace period (at once if ``force``)."""
        record = self.get(name)
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

    async def remove(self, name: str, force: bool = False) -> None:
        """Forget an app that does not run (stopping it first with ``force``)."""
        record = self.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; move it back here before removing it")
        if record.running:
            if not force:
                raise AppStateError(
                    f"{name!r} is running; stop it with mig kill {name} first, or use mig rm --force {name}"
                )
            await self.stop(name, force=True, reason="removed by mig rm --force")
        self._apps.pop(name, None)
        record.console.destroy()
        self._specs.delete(name)
        if self.io is not None:
            await self.io.closed(name)
        await asyncio.to_thread(self.store.remove_app, name)

    async def send(self, name: str, text: str) -> None:
        """Deliver each line of ``text`` to the app's ``on_input``, wherever it runs (its home keeps the lines
        until the app has them, across moves)."""
        record = self.get(name)
        if record.home_device:
            raise AppStateError(f"{name!r} takes its input at its home {record.home}; mig send it there")
        if record.state not in (State.RUNNING, State.AWAY, State.STARTING):
            raise AppStateError(f"{name!r} is not running (it {record.state.value}); it cannot take input")
        if record.handing_home:
            raise AppStateError(
                f"{name!r}'s home is moving to {record.handing_home}; type the input there once mig rehome is done"
            )
        assert self.io is not None, "the daemon sets home I/O before it serves"
        self.io.input(record, text)

    async def checkpoint(self, name: str, kind: str = "manual", message: str = "") -> tuple[VersionInfo, Captured]:
        """Capture a running app between two events and store it as a new version; the app keeps running."""
        record = self.get(name)
        async with record.lock:
            return await asyncio.shield(self._checkpoint(record, kind, message))

    async def _checkpoint(
        self, record: AppRecord, kind: str, message: str, hold: bool = False
    ) -> tuple[VersionInfo, Captured]:
        if record.state is State.AWAY:
            raise AppStateError(f"{record.not_here()}; its checkpoints are taken there")
        if record.state is not State.RUNNING or record.runner is None:
            raise AppStateError(
                f"{record.name!r} is not running (it {record.state.value}); only a running app can be checkpointed"
            )

        async def missing(hashes: list[bytes]) -> list[bytes]:
            lacking = await asyncio.to_thread(self.store.missing, hashes)
            return [digest for digest in dict.fromkeys(hashes) if digest in lacking]

        runner = record.runner
        try:
            captured = await runner.checkpoint(kind, message, missing, hold, self._safe_point_wait)
        except Busy as busy:
            outcome = {"close": "it was not closed", "move": "it was not moved"}.get(kind, "no version was taken")
            where = f"in {busy.where}" if busy.where else "in a handler"
            raise AppBusyError(
                f"{record.name!r} is busy {where} and reached no safe point within {self._safe_point_wait:g} s, so "
                f"{outcome}; try again once it is done, or stop it with mig kill --force {record.name}"
            ) from None
        manifest = captured.manifest
        manifest.parent = record.version
        manifest.console_cursor = record.console.log.next_seq - 1
        try:
            info = await asyncio.to_thread(self.store.put_version, manifest, captured.chunks)
        except BaseException as exc:
            if isinstance(exc, StorageError):
                record.save_error = exc.message
            if hold:
                await runner.resume()  # not stored: the app must not stop
            raise
        record.version, record.save_error = info.version, ""
        log.info("%s: version %d (%s), paused %.1f ms", record.name, info.version, kind, captured.pause * 1000)
        return info, captured

    async def freeze(self, name: str, message: str) -> VersionInfo:
        """Checkpoint a running app for a move (kind ``move``) and hold it frozen until stopped or resumed."""
        record = self.get(name)
        async with record.lock:
            info, _ = await asyncio.shield(self._checkpoint(record, "move", message, hold=True))
        return info

    async def close(self, name: str, why: str = "closed by mig close") -> AppRecord:
        """Checkpoint a running app and stop it; it stays listed as closed, to be opened again."""
        record = self.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; close it there, or move it back first")
        async with record.lock:
            await asyncio.shield(self._checkpoint(record, "close", why, hold=True))
            record.closing = True
            await self.stop(name, reason=why)  # the app is frozen since its capture
        return record

    async def open(self, name: str, version: int = 0) -> AppRecord:
        """Thaw an app that does not run from its latest good version, or from ``version``."""
        record = self.get(name)
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
            await self._start(record, _load_spec(record.spec, self.store.path, version))
            self.save(record, State.RUNNING)
        return record

    async def restore(self, name: str, version: int) -> AppRecord:
        """Make ``version`` the latest as a new version (history is kept); a running app goes on from it."""
        record = self.get(name)
        if record.not_here():
            raise AppStateError(f"{record.not_here()}; move it back here to restore a version")
        await asyncio.to_thread(self.store.get_version, name, version)
        was_running = record.running
        if was_running:
            await self.checkpoint(name, "manual", f"before restore to version {version}")
            await self.stop(name, reason=f"restoring version {version}")
        info = await asyncio.to_thread(self.store.restore, name, version, f"restored version {version}")
        record.version = info.version
        await record.console.note(f"{name} restored version {version} as version {info.version}")
        if was_running:
            return await self.open(name, info.version)
        return record

    async def fork(self, name: str, new_name: str, version: int = 0) -> AppRecord:
        """A new, closed app from a version of ``name`` (its latest by default), sharing every chunk."""
        source = self.get(name)
        spec = dataclasses.replace(source.spec, name=new_name)
        check_app_name(new_name)
        if new_name in self._apps:
            raise AppExistsError(f"an app called {new_name!r} exists already; choose another name for the fork")
        info = await asyncio.to_thread(self.store.fork, name, new_name, version or None)
        record = self._add_closed(spec, info.version)
        await record.console.note(f"{new_name} forked from {name} version {version or source.version}")
        return record

    async def export(self, name: str, path: str, version: int = 0) -> tuple[VersionInfo, int]:
        """Write a version with its chunks and code to one signed file (replaced whole, never left half written)."""
        self.get(name)
        info = await asyncio.to_thread(self.store.get_version, name, version) if version else None
        info = info or await asyncio.to_thread(self.store.latest, name)
        if info is None:
            raise AppStateError(f"{name!r} has no checkpoint to export; mig checkpoint {name} takes one")
        sign = self._exports.sign
        written = await asyncio.to_thread(_export_file, self.store, name, info.version, Path(path), sign)
        return info, written

    async def import_(self, path: str, name: str, cwd: str) -> tuple[AppRecord, Signer]:
        """A new, closed app from an export file, and who signed it. Everything is checked first (the file whole,
        the name, the code paths, the signature); the version is stored in one transaction and its code unpacked
        beside it; a refused import leaves nothing behind."""
        export = await asyncio.to_thread(_read_export, Path(path))
        signer = self._exports.signer(export, path)
        if name:
            check_app_name(name)
        else:
            name = check_app_name(export.manifest.app, f"{path} (an export)", "import it with --name NEW")
        await self._refuse_taken(name, "import it under another name with --name NEW")
        code = await asyncio.to_thread(_code_of, export, path)
        folder = await asyncio.to_thread(_code.unpack, self._code_dir, code)
        try:
            info = await asyncio.to_thread(self.store.add_import, export, name)
        except BaseException:
            _code.discard(folder)
            raise
        try:
            folder = _code.place(folder, self._code_dir, name)
            record = self._add_closed(_spec_from_code(name, folder, export.manifest, code, cwd), info.version)
        except BaseException:
            _code.discard(folder)
            await asyncio.to_thread(self.store.remove_app, name)
            raise
        return record, signer

    async def _refuse_taken(self, name: str, fix: str) -> None:
        stored = await asyncio.to_thread(self.store.latest, name)
        if name in self._apps or stored is not None:
            raise AppExistsError(f"an app called {name!r} exists already; {fix}")

    def _add_closed(self, spec: AppSpec, version: int) -> AppRecord:
        record = AppRecord(spec, self._new_console(spec.name), state=State.CLOSED, version=version)
        record.ended.set()
        try:
            self.save(record, State.CLOSED, strict=True)
        except BaseException:
            record.console.destroy()
            raise
        self._apps[spec.name] = record
        return record

    async def adopt(
        self,
        spec: AppSpec,
        version: int,
        epoch: int,
        home: str,
        home_device: str,
        files_home: tuple[str, str] = ("", ""),
        console: list[bytes] | None = None,
    ) -> AppRecord:
        """Run an app that moved here, from ``version`` (already in the store), at ``epoch``. ``files_home``
        (device id, name) serves its files when its home does not; ``console`` starts the log of an app whose
        home moves here."""
        record = self._apps.get(spec.name)
        if record is None:
            record = AppRecord(spec, self._new_console(spec.name))
            self._apps[spec.name] = record
        else:
            record.console.reopen()
        if console:
            for line in console:
                await record.console.write(line)
            await record.console.note(f"{spec.name}'s home moved here; the lines above are from its old home")
        record.epoch, record.home, record.home_device = epoch, home, home_device
        record.files_home, record.files_home_name = files_home
        record.host = record.host_device = ""
        record.remote_pid = 0
        record.version = version
        async with record.lock:
            await self._start(record, _load_spec(spec, self.store.path, version))
        self.save(record, State.RUNNING)
        await record.console.note(f"{spec.name} arrived (epoch {epoch}), from version {version}")
        return record

    def adopt_closed(self, spec: AppSpec, version: int, epoch: int) -> AppRecord:
        """An app closed on another host came back here closed, at ``version``."""
        record = self._apps.get(spec.name)
        if record is None:
            record = AppRecord(spec, self._new_console(spec.name))
            self._apps[spec.name] = record
        record.state, record.version, record.epoch = State.CLOSED, version, epoch
        record.host = record.host_device = record.home = record.home_device = ""
        record.remote_pid = 0
        record.ended_at = time.time()
        record.ended.set()
        self.save(record)
        return record

    def forget(self, name: str) -> None:
        """Drop an app that moved on from this host (not its home); its versions stay in the store."""
        record = self._apps.pop(name, None)
        if record is not None:
            record.console.destroy()
        self._specs.delete(name)

    def save(self, record: AppRecord, state: State | None = None, *, strict: bool = False) -> None:
        """Keep what a restart needs of the app: its spec, its state, where it runs and its home. A disk that
        refuses is logged and tried again with the next save (``strict``: raise ``StorageError`` instead)."""
        try:
            self._specs.save(record.spec, state or record.state, {**record.place(), "reason": record.reason})
        except StorageError as exc:
            if strict:
                raise
            if record.name not in self._unsaved:
                log.warning("%s: %s", record.name, exc.message)
            self._unsaved[record.name] = record
            return
        self._unsaved.pop(record.name, None)
        for other in list(self._unsaved.values()):  # the disk takes writes again
            if self._apps.get(other.name) is other:
                self.save(other)
            else:
                self._unsaved.pop(other.name, None)

    async def history(self, name: str) -> list[VersionInfo]:
        """Every version of an app, oldest first."""
        self.get(name)
        return await asyncio.to_thread(self.store.list_versions, name)

    async def close_all(self) -> None:
        """Close every running app (daemon shutdown); one that cannot be saved is stopped, its reason logged."""
        self._shutting_down.set()
        running = [record for record in self if record.state is State.RUNNING]
        await asyncio.gather(*(self._close_or_stop(record) for record in running))
        stopping = [self.stop(r.name, reason="the daemon stopped") for r in self if r.running and not r.closing]
        await asyncio.gather(*stopping, return_exceptions=True)
        await asyncio.gather(*(record.ended.wait() for record in running))

    async def _close_or_stop(self, record: AppRecord) -> None:
        try:
            await self.close(record.name, "closed when the daemon stopped")
        except MigError as exc:
            since = f"version {record.version}" if record.version else "its start (it has no checkpoint)"
            log.warning("%s could not be saved (%s); it is stopped, and opens from %s", record.name, exc, since)
            await record.console.note(f"{record.name} could not be saved at daemon shutdown: {exc}")
            with contextlib.suppress(MigError):
                await self.stop(record.name, reason="the daemon stopped")


def _export_file(store: Store, name: str, version: int, path: Path, sign: Sign) -> int:
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as out:
            written = store.export(name, out, version, sign)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AppFileError(f"cannot write {path} ({exc.strerror or exc}); choose another -o path") from None
    return written


def _read_export(path: Path) -> Export:
    try:
        with open(path, "rb") as src:
            return read_export(src, str(path))
    except OSError as exc:
        raise AppFileError(f"cannot read {path} ({exc.strerror or exc}); give the path of a .mig export") from None


def _code_of(export: Export, source: str) -> dict[str, bytes]:
    try:
        return code_bundle(export.manifest, export.chunks)
    except ValueError as exc:  # Damage: the file was checked whole, so only a bug or a race gets here
        raise ExportFileError(f"{source} is damaged ({exc}); export the version again") from None


def _spec_from_code(name: str, folder: Path, manifest: Any, code: Mapping[str, bytes], cwd: str) -> AppSpec:
    """The spec that runs an app from its unpacked code bundle in ``folder``."""
    if manifest.app_module == "migrated.runtime._repl":
        return AppSpec(name=name, kind="repl", file="", app_class="", cwd=cwd)
    stem = manifest.app_module.removeprefix("_mig_app_")
    main = next((p for p in code if Path(p).stem == stem and "/" not in p), next(iter(code), f"{stem}.py"))
    return AppSpec(name=name, kind="script", file=str(folder / main), app_class=manifest.app_class, cwd=cwd)


def _backoff(period: float, failures: int) -> float:
    """Seconds before the next autosave: the period, doubled with each failure in a row, up to a minute (or the
    period, when it is longer)."""
    return float(min(max(period, 60.0), period * 2**failures))


def _check_spec(spec: AppSpec) -> None:
    if spec.keep:
        parse_policy(spec.keep)
    if spec.restart not in RESTART_POLICIES:
        raise UsageError(f"--restart {spec.restart!r} is not a policy; use on-crash or never")
    if spec.autosave < 0 or (0 < spec.autosave < 0.1):
        raise UsageError(f"--autosave {spec.autosave:g} is not a period; give seconds, 0.1 or more (0: no autosave)")
    check_app_name(spec.name)
    if not os.path.isdir(spec.cwd):
        raise AppFileError(f"the working directory {spec.cwd} does not exist; run mig from an existing directory")
    if spec.kind == "script" and not Path(spec.file).is_file():
        raise AppFileError(f"{spec.file} is not a file; give the path of an app's .py file")


def _load_spec(spec: AppSpec, store: Path | None = None, version: int = 0) -> dict[str, object]:
    load: dict[str, object] = {
        "kind": spec.kind,
        "file": spec.file,
        "app_class": spec.app_class,
        "name": spec.name,
        "args": list(spec.args),
    }
    if store is not None:
        load["restore"] = {"store": str(store), "version": version}
    return load


class _SpecFiles:
    """What the daemon must remember of each app across restarts: one small JSON file each, replaced whole."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, exist_ok=True)

    def save(self, spec: AppSpec, state: State, place: dict[str, Any]) -> None:
        data = json.dumps({"spec": dataclasses.asdict(spec), "state": state.value, "place": place}).encode()
        tmp = self.directory / f".{spec.name}.json.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.directory / f"{spec.name}.json")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, self.directory, f"the record of {spec.name} was not saved") from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{name}.json").unlink()

    def load(self) -> list[tuple[AppSpec, str, dict[str, Any]]]:
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                fields = data["spec"]
                fields["args"] = tuple(fields.get("args", ()))
                found.append((AppSpec(**fields), str(data["state"]), dict(data.get("place", {}))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring %s: %s", path, exc)
        return found
