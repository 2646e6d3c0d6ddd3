"""Fixtures that run real daemons and the real ``mig`` command line, as a user would.

State directories are short ``/tmp/mig*`` paths: the control socket path must fit in 107 bytes, which
pytest's ``tmp_path`` does not promise. What a test does with a daemon is ``tests.helpers.BaseDaemon``; the
daemons of a namespace bed are ``tests.netbed``'s.

Unit tests (pure logic, fakes allowed) and integration tests (real daemons, real processes) of a package sit
side by side in its folder; the integration ones are marked ``integration`` (``-m "not integration"`` runs only
the unit tests): every test that uses one of ``INTEGRATION_FIXTURES``, and the modules that start processes
themselves, which say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import MIGRATED, START_TIMEOUT, Background, BaseDaemon, mig, new_state_dir, wait_until
from tests.netbed import module_netbeds, netbeds  # noqa: F401 - multi-host fixtures (network namespaces)

# Hypothesis checks what holds, not how fast: its per-example deadline fails tests on a loaded 2-core machine.
settings.register_profile("migrated", deadline=None)
settings.load_profile("migrated")

# Every daemon a test starts, directly or through mig's autostart, listens on loopback only and stays off
# mDNS; the network tests (netbed) give their daemons flags of their own.
os.environ["MIGRATED_LISTEN"] = "127.0.0.1:0"
os.environ["MIGRATED_MDNS"] = "0"

INTEGRATION_FIXTURES = {"daemons", "daemon", "shared_daemon", "module_daemons", "netbeds", "module_netbeds"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes several seconds (waits out a grace period, large output)")
    config.addinivalue_line("markers", "integration: runs real daemons or other processes (not a unit test)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


class Daemon(BaseDaemon):
    """A daemon on this host's loopback, started by a fixture (its stderr in DIR/stderr.log) or by mig's
    autostart (DIR/daemon.log)."""

    stop_request = "mig shutdown"

    def __init__(self, state_dir: Path, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        super().__init__(state_dir, state_dir / ("stderr.log" if proc is not None else "daemon.log"), proc, pid)
        self._identity: dict[str, str] = {}

    def _status_once(self, key: str) -> str:
        """``mig status``'s ``key``, asked once: its name and address stay as long as the process."""
        if not self._identity:
            status = self.status()
            self._identity = {"host": str(status["host"]), "listen": str(status["listen"])}
        return self._identity[key]

    @property
    def name(self) -> str:
        return self._status_once("host")

    @property
    def address(self) -> str:
        """The peer port, ``127.0.0.1:PORT`` (fixture daemons listen on loopback, on a port of their choice)."""
        address = self._status_once("listen")
        assert address.startswith("127.0.0.1:"), address
        return address

    def _ask_to_stop(self) -> str:
        result = self.mig("shutdown", check=None)
        return "" if result.code == 0 else f"mig shutdown failed: {result}"


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

    def tmpfs(self, options: str) -> Path:
        """A tmpfs mounted with ``options`` on a fresh directory (needs root), unmounted at teardown once every
        daemon stopped: lazily, as a daemon of a namespace bed torn down later may still hold it."""
        if os.geteuid() != 0:
            pytest.fail("this test mounts a tmpfs, which needs root: run the suite as root (README, Setup)")
        path = self.new_dir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        self.mounts.append(path)
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
        """Stop every daemon, unmount, remove the directories; return the problems seen. The daemons stop at
        once: one after the other, a host with a visitor would wait out its flush to a home already stopped."""
        with ThreadPoolExecutor(max(1, len(self.daemons))) as pool:
            stopped = list(pool.map(lambda daemon: daemon.stop(), self.daemons))
        problems = [problem for found in stopped for problem in found]
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)
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


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start ``mig`` commands that run while the test goes on, ``background(daemon, "move", ...)``; any still
    running at teardown is killed."""
    started: list[Background] = []

    def start(daemon: BaseDaemon, *args: str) -> Background:
        started.append(Background(daemon, *args))
        return started[-1]

    yield start
    for command in started:
        command.kill()


@pytest.fixture
def attached(background: Callable[..., Background]) -> Callable[..., Background]:
    """``background`` as the console tests call it: ``attached(daemon, "attach", NAME)`` or ``"repl"``."""
    return background


@pytest.fixture
def tmpfs(daemons: Daemons) -> Callable[[str], Path]:
    """Mount tmpfs file systems on fresh short directories, ``tmpfs("size=48m,mode=0700")``; needs root.
    They are unmounted once the test's daemons stopped."""
    return daemons.tmpfs
