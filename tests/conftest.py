"""Fixtures that run real daemons and the real ``mig`` command line, as a user would.

State directories are short ``/tmp/mig*`` paths: the control socket path must fit in 107 bytes, which
pytest's ``tmp_path`` does not promise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import psutil  # type: ignore[import-untyped]
import pytest
from hypothesis import settings

from tests.netbed import module_netbeds, netbeds  # noqa: F401 - multi-host fixtures (network namespaces)

T = TypeVar("T")

MIG = shutil.which("mig") or str(Path(sys.executable).with_name("mig"))
MIGRATED = shutil.which("migrated") or str(Path(sys.executable).with_name("migrated"))
RUNNER_MODULE = "migrated.runtime._runner"
START_TIMEOUT = 20.0

# Hypothesis checks what holds, not how fast: its per-example deadline fails tests on a loaded 2-core machine.
settings.register_profile("migrated", deadline=None)
settings.load_profile("migrated")

# Every daemon a test starts, directly or through mig's autostart, listens on loopback only and stays off
# mDNS; the network tests (netbed) give their daemons flags of their own.
os.environ["MIGRATED_LISTEN"] = "127.0.0.1:0"
os.environ["MIGRATED_MDNS"] = "0"
STOP_TIMEOUT = 20.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes several seconds (waits out a grace period, large output)")


class Result(NamedTuple):
    """What one ``mig`` invocation did."""

    code: int
    out: str
    err: str


def mig(
    *args: str,
    dir: Path | str,
    input: str | None = None,
    check: int | None = 0,
    cwd: Path | str | None = None,
    autostart: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Result:
    """Run the real ``mig`` with ``MIG_DIR=dir``; assert its exit code is ``check`` unless that is None."""
    full_env = {**os.environ, "MIG_DIR": str(dir), **(env or {})}
    full_env.pop("MIG_NO_AUTOSTART", None)
    if not autostart:
        full_env["MIG_NO_AUTOSTART"] = "1"
    proc = subprocess.run(
        [MIG, *args],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check is not None:
        assert result.code == check, f"mig {' '.join(args)} exited {result.code}, expected {check}: {result}"
    return result


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something true; return that, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate!r}; last value {value!r}")
        time.sleep(interval)


def new_state_dir() -> Path:
    """A fresh, short state directory path under /tmp."""
    return Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def runner_pids(daemon_pid: int) -> set[int]:
    """Live runner processes that belong to the daemon ``daemon_pid`` (its children, or tagged with its pid)."""
    found: set[int] = set()
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if RUNNER_MODULE not in " ".join(proc.info["cmdline"] or ()):
                continue
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.info["ppid"] == daemon_pid or proc.environ().get("MIG_DAEMON_PID") == str(daemon_pid):
                found.add(proc.info["pid"])
    return found


class Daemon:
    """A real daemon on a state directory, started by a fixture or by mig's autostart."""

    def __init__(self, state_dir: Path, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.dir = state_dir
        self.pid = pid
        self.proc = proc
        self.log = state_dir / ("stderr.log" if proc is not None else "daemon.log")

    def mig(self, *args: str, **kwargs: Any) -> Result:
        """Run ``mig`` against this daemon."""
        return mig(*args, dir=self.dir, **kwargs)

    def ps(self) -> dict[str, dict[str, Any]]:
        """``mig ps --json`` by app name."""
        return {app["name"]: app for app in json.loads(self.mig("ps", "--json").out)}

    def app(self, name: str) -> dict[str, Any]:
        """One app as ``mig ps --json`` shows it."""
        apps = self.ps()
        assert name in apps, f"{name} is not in mig ps: {sorted(apps)}"
        return apps[name]

    def logs(self, name: str, *args: str) -> str:
        """``mig logs NAME``."""
        return self.mig("logs", name, *args).out

    def wait_state(self, name: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the app is in one of ``states``; return its ps entry."""

        def app_in_state() -> dict[str, Any] | None:
            app = self.app(name)
            return app if app["state"] in states else None

        return wait_until(app_in_state, timeout, what=f"{name} to be {' or '.join(states)}")

    def wait_logs(self, name: str, text: str, timeout: float = 15.0) -> str:
        """Wait until ``mig logs NAME`` contains ``text``; return the logs."""

        def logs_with_text() -> str:
            out = self.logs(name)
            return out if text in out else ""

        return wait_until(logs_with_text, timeout, what=f"{text!r} in the logs of {name}")

    def alive(self) -> bool:
        """Whether the daemon process still runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def stderr_log(self) -> str:
        """What the daemon wrote to its stderr (fixture daemons) or daemon.log (autostarted ones)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> list[str]:
        """Shut the daemon down; return the problems seen (it would not stop, runners left over)."""
        problems = []
        runners = runner_pids(self.pid)
        if self.alive():
            result = self.mig("shutdown", check=None)
            if result.code != 0:
                problems.append(f"mig shutdown failed: {result}")
            try:
                wait_until(lambda: not self.alive(), STOP_TIMEOUT, what="the daemon to exit")
            except AssertionError:
                problems.append(f"the daemon (pid {self.pid}) did not exit after mig shutdown; killed it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT)
        if "Traceback" in (log := self.stderr_log()):
            problems.append(f"the daemon logged a traceback:\n{log[log.index('Traceback') :][:3000]}")

        # A runner must never outlive its daemon; give the kernel a moment to deliver the death signal.
        def leftover() -> set[int]:
            return {pid for pid in runners | runner_pids(self.pid) if pid_alive(pid)}

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not leftover(), 3.0)
        left = leftover()
        if left:
            problems.append(f"runner processes {sorted(left)} of daemon {self.pid} outlived it")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return problems


class Daemons:
    """Starts daemons (and adopts autostarted ones); stops every one of them at teardown."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []
        self.dirs: list[Path] = []
        self.mounts: list[Path] = []

    def new_dir(self) -> Path:
        """A fresh state directory removed at teardown."""
        path = new_state_dir()
        self.dirs.append(path)
        return path

    def spawn(self, *args: str, state_dir: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``migrated --dir DIR ARGS`` without waiting; its stderr goes to DIR/stderr.log."""
        state_dir = state_dir or self.new_dir()
        log = open(state_dir / "stderr.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            return subprocess.Popen(
                [MIGRATED, "--dir", str(state_dir), *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def start(self, *args: str, state_dir: Path | None = None) -> Daemon:
        """Start a daemon and wait until ``mig status`` answers."""
        state_dir = state_dir or self.new_dir()
        proc = self.spawn(*args, state_dir=state_dir)
        daemon = Daemon(state_dir, proc.pid, proc)
        self.daemons.append(daemon)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"migrated exited with {proc.returncode}: {daemon.stderr_log()}")
            return mig("status", dir=state_dir, check=None).code == 0

        wait_until(answers, START_TIMEOUT, interval=0.02, what="the daemon to answer mig status")
        return daemon

    def adopt(self, state_dir: Path) -> Daemon:
        """Take charge of the daemon that answers on ``state_dir`` (one mig autostarted)."""
        pid = json.loads(mig("status", "--json", dir=state_dir).out)["pid"]
        daemon = Daemon(state_dir, pid)
        self.daemons.append(daemon)
        return daemon

    def close(self) -> list[str]:
        """Stop every daemon, unmount, remove the directories; return the problems seen."""
        problems = [problem for daemon in self.daemons for problem in daemon.stop()]
        for mount in self.mounts:
            subprocess.run(["umount", str(mount)], check=False)
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        return problems


def _daemon_factory() -> Iterator[Daemons]:
    factory = Daemons()
    try:
        yield factory
    finally:
        problems = factory.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """A factory of real daemons; the test fails if one will not stop or leaves a runner behind."""
    yield from _daemon_factory()


@pytest.fixture
def daemon(daemons: Daemons) -> Daemon:
    """One running daemon on a fresh state directory, for a test that needs it to itself."""
    return daemons.start()


@pytest.fixture(scope="module")
def module_daemons() -> Iterator[Daemons]:
    """Like ``daemons``, for the daemons a whole module shares."""
    yield from _daemon_factory()


@pytest.fixture(scope="module")
def shared_daemon(module_daemons: Daemons) -> Daemon:
    """A daemon that the tests of one module share: each test gives its apps names of their own."""
    return module_daemons.start()


class AppDir:
    """A directory of small app files (and the cwd apps are run from)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, name: str, source: str) -> Path:
        """Write ``source`` (dedented) to ``name`` and return its path."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
        return path


@pytest.fixture
def app_dir(tmp_path: Path) -> AppDir:
    """Where tests write their app files."""
    path = tmp_path / "apps"
    path.mkdir()
    return AppDir(path)


class Attached:
    """``mig attach`` (or ``mig repl``) in a subprocess, its stdin a pipe and its output collected."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            [MIG, "--dir", str(daemon.dir), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = bytearray()
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.out += chunk

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: text in self.text, timeout, what=f"{text!r} in the attached output")

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for mig to end (closing its stdin first); return its exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def attached() -> Iterator[Callable[..., Attached]]:
    """Start ``mig attach``-like sessions; any still running at teardown is killed."""
    started: list[Attached] = []

    def start(daemon: Daemon, *args: str) -> Attached:
        started.append(Attached(daemon, *args))
        return started[-1]

    yield start
    for session in started:
        session.kill()


# Apps that several test modules use.

ECHO_APP = """
    import migrated

    class Echo(migrated.App):
        def start(self):
            print("started")

        def on_input(self, line):
            print(f"got {line}")
            if line == "quit":
                self.exit(0)

        def on_stop(self):
            print("on_stop ran")
"""

TICKER_APP = """
    import migrated

    class Ticker(migrated.App):
        def start(self):
            self.n = 0

        def step(self):
            self.n += 1
            print(f"tick {self.n}")
            return 0.05
"""
