"""The app table and each app's lifecycle on this host: run, stop, remove, input, and how a run ended."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from migrated.daemon._console import Console
from migrated.daemon._runner import Outcome, Runner
from migrated.errors import AppExistsError, AppFileError, AppNotFoundError, AppStateError, UsageError

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
    ended: asyncio.Event = field(default_factory=asyncio.Event)

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

    def __init__(self, tasks: asyncio.TaskGroup, console_dir: Path, console_lines: int, console_bytes: int) -> None:
        self._tasks = tasks
        self._apps: dict[str, AppRecord] = {}
        self._console_dir = console_dir
        shutil.rmtree(console_dir, ignore_errors=True)  # consoles of apps from an earlier daemon run
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

    async def run(self, spec: AppSpec) -> AppRecord:
        """Start an app in a new runner; return once its code has loaded."""
        _check_spec(spec)
        if spec.name in self._apps:
            state = self._apps[spec.name].state.value
            raise AppExistsError(
                f"an app called {spec.name!r} exists already ({state}); choose another with --name "
                f"or remove it with mig rm {spec.name}"
            )
        console = Console(self._console_lines, self._console_bytes, self._console_dir / spec.name)
        record = AppRecord(spec, console)
        self._apps[spec.name] = record
        try:
            record.runner = await Runner.spawn(spec.cwd)
            record.app_class = await record.runner.load(_load_spec(spec), record.console)
        except BaseException:
            del self._apps[spec.name]
            console.destroy()
            if record.runner is not None:
                record.runner.kill()  # also when the request was cancelled mid-load
            raise
        record.state = State.RUNNING
        self._tasks.create_task(self._watch(record, record.runner), name=f"watch {spec.name}")
        log.info("started %s (pid %d)", spec.name, record.pid)
        return record

    async def _watch(self, record: AppRecord, runner: Runner) -> None:
        outcome = await runner.wait()
        if record.stop_reason and outcome.crashed and outcome.exit_code < 0:
            outcome = Outcome(False, outcome.exit_code, record.stop_reason)
        record.state = State.CRASHED if outcome.crashed else State.EXITED
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

    async def send(self, name: str, text: str) -> None:
        """Deliver each line of ``text`` to the app's ``on_input``."""
        record = self.get(name)
        if record.state is not State.RUNNING or record.runner is None:
            raise AppStateError(f"{name!r} is not running (it {record.state.value}); it cannot take input")
        for line in text.splitlines() or [""]:
            await record.runner.send_input(line)

    async def stop_all(self, reason: str) -> None:
        """Stop every running app (daemon shutdown)."""
        running = [record for record in self if record.running]
        stopping = [self.stop(r.name, reason=reason) for r in running if r.state is not State.STOPPING]
        await asyncio.gather(*stopping, return_exceptions=True)
        await asyncio.gather(*(record.ended.wait() for record in running))


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


def _load_spec(spec: AppSpec) -> dict[str, object]:
    return {
        "kind": spec.kind,
        "file": spec.file,
        "app_class": spec.app_class,
        "name": spec.name,
        "args": list(spec.args),
    }
