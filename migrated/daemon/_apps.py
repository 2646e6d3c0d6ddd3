"""The app table and each app's lifecycle on this host: run, checkpoint, close, open, restore, stop, remove."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from migrated.checkpoint import Store, VersionInfo
from migrated.daemon._console import Console
from migrated.daemon._runner import Captured, Outcome, Runner
from migrated.errors import (
    AppExistsError,
    AppFileError,
    AppNotFoundError,
    AppStateError,
    MigError,
    UsageError,
)

__all__ = ["AppRecord", "AppSpec", "AppTable", "State"]

log = logging.getLogger("migrated.daemon")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STOP_GRACE = 5.0


class State(enum.Enum):
    """Where an app is in its lifecycle."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    CRASHED = "crashed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What to run: fixed when the app is created."""

    name: str
    kind: str  # "script" or "repl"
    file: str
    app_class: str
    cwd: str
    args: tuple[str, ...] = ()


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


class AppTable:
    """Every app this daemon knows, by name; watcher tasks run in the daemon's task group."""

    def __init__(
        self, tasks: asyncio.TaskGroup, state_dir: Path, store: Store, console_lines: int, console_bytes: int
    ) -> None:
        self._tasks = tasks
        self._apps: dict[str, AppRecord] = {}
        self.store = store
        self._console_dir = state_dir / "console"
        self._specs = _SpecFiles(state_dir / "apps")
        shutil.rmtree(self._console_dir, ignore_errors=True)  # consoles of apps from an earlier daemon run
        self._console_lines = console_lines
        self._console_bytes = console_bytes

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._apps.values()))

    def get(self, name: str) -> AppRecord:
        """The app called ``name``."""
        try:
            return self._apps[name]
        except KeyError:
            raise AppNotFoundError(f"no app is called {name!r}; mig ps lists the apps") from None

    async def load_saved(self) -> None:
        """Bring back the apps an earlier run of the daemon knew: closed ones stay closed and openable."""
        for spec, state in self._specs.load():
            latest = await asyncio.to_thread(self.store.latest, spec.name)
            record = AppRecord(spec, self._new_console(spec.name), version=latest.version if latest else 0)
            if state == State.CLOSED.value and latest is not None:
                record.state = State.CLOSED
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
            self._specs.save(spec, record.state)

    def _new_console(self, name: str) -> Console:
        return Console(self._console_lines, self._console_bytes, self._console_dir / name)

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
        self._specs.save(spec, State.RUNNING)
        return record

    async def _start(self, record: AppRecord, load: dict[str, object]) -> None:
        """Start a runner for ``record`` and load (or thaw) the app in it."""
        record.state = State.STARTING
        record.runner = None
        try:
            record.runner = await Runner.spawn(record.spec.cwd)
            loaded = await record.runner.load(load, record.console)
        except BaseException:
            if record.runner is not None:
                record.runner.kill()  # also when the request was cancelled mid-load
            raise
        record.app_class = str(loaded.get("app_class", ""))
        record.state = State.RUNNING
        record.started_at = time.time()
        record.ended = asyncio.Event()
        record.stop_reason = record.reason = ""
        record.closing = False
        for note in loaded.get("damaged", []):
            await record.console.note(str(note))
        self._tasks.create_task(self._watch(record, record.runner), name=f"watch {record.name}")
        log.info("started %s (pid %d)", record.name, record.pid)

    async def _watch(self, record: AppRecord, runner: Runner) -> None:
        outcome = await runner.wait()
        if record.stop_reason and outcome.crashed and outcome.exit_code < 0:
            outcome = Outcome(False, outcome.exit_code, record.stop_reason)
        record.state = State.CRASHED if outcome.crashed else State.EXITED
        if record.closing and not outcome.crashed:
            record.state = State.CLOSED
        self._specs.save(record.spec, record.state)
        record.exit_code = outcome.exit_code
        record.reason = outcome.reason
        record.ended_at = time.time()
        await record.console.note(f"{record.name} {record.state.value}: {outcome.reason}")
        await record.console.close()
        record.ended.set()
        log.info("%s %s: %s", record.name, record.state.value, outcome.reason)

    async def stop(self, name: str, force: bool = False, reason: str = "") -> AppRecord:
        """Stop a running app: ``on_stop`` then exit, or SIGKILL after a grace period (at once if ``force``)."""
        record = self.get(name)
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
        if record.running:
            if not force:
                raise AppStateError(
                    f"{name!r} is running; stop it with mig kill {name} first, or use mig rm --force {name}"
                )
            await self.stop(name, force=True, reason="removed by mig rm --force")
        self._apps.pop(name, None)
        record.console.destroy()
        self._specs.delete(name)
        await asyncio.to_thread(self.store.remove_app, name)

    async def send(self, name: str, text: str) -> None:
        """Deliver each line of ``text`` to the app's ``on_input``."""
        record = self.get(name)
        if record.state is not State.RUNNING or record.runner is None:
            raise AppStateError(f"{name!r} is not running (it {record.state.value}); it cannot take input")
        for line in text.splitlines() or [""]:
            await record.runner.send_input(line)

    async def checkpoint(self, name: str, kind: str = "manual", message: str = "") -> tuple[VersionInfo, Captured]:
        """Capture a running app between two events and store it as a new version; the app keeps running."""
        record = self.get(name)
        async with record.lock:
            return await asyncio.shield(self._checkpoint(record, kind, message))

    async def _checkpoint(
        self, record: AppRecord, kind: str, message: str, hold: bool = False
    ) -> tuple[VersionInfo, Captured]:
        if record.state is not State.RUNNING or record.runner is None:
            raise AppStateError(
                f"{record.name!r} is not running (it {record.state.value}); only a running app can be checkpointed"
            )

        async def missing(hashes: list[bytes]) -> list[bytes]:
            lacking = await asyncio.to_thread(self.store.missing, hashes)
            return [digest for digest in dict.fromkeys(hashes) if digest in lacking]

        runner = record.runner
        captured = await runner.checkpoint(kind, message, missing, hold)
        manifest = captured.manifest
        manifest.parent = record.version
        manifest.console_cursor = record.console.log.next_seq - 1
        try:
            info = await asyncio.to_thread(self.store.put_version, manifest, captured.chunks)
        except BaseException:
            if hold:
                await runner.resume()  # not stored: the app must not stop
            raise
        record.version = info.version
        log.info("%s: version %d (%s), paused %.1f ms", record.name, info.version, kind, captured.pause * 1000)
        return info, captured

    async def close(self, name: str) -> AppRecord:
        """Checkpoint a running app and stop it; it stays listed as closed, to be opened again."""
        record = self.get(name)
        async with record.lock:
            await asyncio.shield(self._checkpoint(record, "close", "closed by mig close", hold=True))
            record.closing = True
            await self.stop(name, reason="closed by mig close")  # the app is frozen since its capture
        return record

    async def open(self, name: str, version: int = 0) -> AppRecord:
        """Thaw an app that does not run from its latest good version, or from ``version``."""
        record = self.get(name)
        async with record.lock:
            if record.running:
                raise AppStateError(f"{name!r} is running already; mig close {name} first to open another version")
            if not record.version:
                raise AppStateError(f"{name!r} has no checkpoint to open; start it again with mig run")
            if version:
                await asyncio.to_thread(self.store.get_version, name, version)
            record.console.reopen()
            await self._start(record, _load_spec(record.spec, self.store.path, version))
            self._specs.save(record.spec, State.RUNNING)
        return record

    async def restore(self, name: str, version: int) -> AppRecord:
        """Make ``version`` the latest as a new version (history is kept); a running app goes on from it."""
        record = self.get(name)
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

    async def history(self, name: str) -> list[VersionInfo]:
        """Every version of an app, oldest first."""
        self.get(name)
        return await asyncio.to_thread(self.store.list_versions, name)

    async def close_all(self) -> None:
        """Close every running app (daemon shutdown); one that cannot be saved is stopped, its reason logged."""
        running = [record for record in self if record.state is State.RUNNING]
        await asyncio.gather(*(self._close_or_stop(record) for record in running))
        stopping = [self.stop(r.name, reason="the daemon stopped") for r in self if r.running and not r.closing]
        await asyncio.gather(*stopping, return_exceptions=True)
        await asyncio.gather(*(record.ended.wait() for record in running))

    async def _close_or_stop(self, record: AppRecord) -> None:
        try:
            await self.close(record.name)
        except MigError as exc:
            log.warning("%s could not be closed (%s); stopping it", record.name, exc)
            await record.console.note(f"{record.name} could not be saved at daemon shutdown: {exc}")
            with contextlib.suppress(MigError):
                await self.stop(record.name, reason="the daemon stopped")


def _check_spec(spec: AppSpec) -> None:
    if not _NAME.fullmatch(spec.name):
        raise UsageError(
            f"{spec.name!r} is not a valid app name; use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
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

    def save(self, spec: AppSpec, state: State) -> None:
        data = json.dumps({"spec": dataclasses.asdict(spec), "state": state.value}).encode()
        tmp = self.directory / f".{spec.name}.json.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.directory / f"{spec.name}.json")

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{name}.json").unlink()

    def load(self) -> list[tuple[AppSpec, str]]:
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                fields = data["spec"]
                fields["args"] = tuple(fields.get("args", ()))
                found.append((AppSpec(**fields), str(data["state"])))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring %s: %s", path, exc)
        return found
