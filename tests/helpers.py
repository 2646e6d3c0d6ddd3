"""What several test modules share: running ``mig``, waiting, the one harness of a real daemon (on loopback or in a
host of a namespace bed), pairing, raw clients of the peer port, the apps the tests run, the fake of the unit tests,
and what they read of a daemon's state directory.

Test modules import helpers from here only; fixtures come from ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import grpc
import psutil  # type: ignore[import-untyped]

from migrated.transport._identity import TLS_NAME, Identity, load_identity

__all__ = [
    "CHURNING_TICKER",
    "ECHO",
    "MIG",
    "MIGRATED",
    "REPO",
    "RUNNER_MODULE",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "TICKER",
    "TICKER_WITH_INPUT",
    "UNSAVEABLE",
    "WAIT_BOUND",
    "Background",
    "BaseDaemon",
    "Recorder",
    "Result",
    "contiguous",
    "daemon_refusal",
    "journal",
    "json_state_files",
    "mig",
    "mig_env",
    "new_state_dir",
    "numbers",
    "one_sentence",
    "pair",
    "paired_rows",
    "peer_channel",
    "pid_alive",
    "rows",
    "runner_pids",
    "stranger",
    "wait_until",
]

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent
MIG = str(_BIN / "mig") if (_BIN / "mig").exists() else shutil.which("mig") or "mig"
MIGRATED = str(_BIN / "migrated") if (_BIN / "migrated").exists() else shutil.which("migrated") or "migrated"
RUNNER_MODULE = "migrated.runtime._runner"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


# -- mig


class Result(NamedTuple):
    """What one ``mig`` run did."""

    code: int
    out: str
    err: str

    # The names of subprocess.CompletedProcess, for bench/ (which drives bed daemons too).

    @property
    def returncode(self) -> int:
        return self.code

    @property
    def stdout(self) -> str:
        return self.out

    @property
    def stderr(self) -> str:
        return self.err


def mig_env(state_dir: Path | str, autostart: bool = False) -> dict[str, str]:
    """The environment of a ``mig`` run against ``state_dir``: it starts a daemon there only with ``autostart``."""
    env = {**os.environ, "MIG_DIR": str(state_dir)}
    env.pop("MIG_NO_AUTOSTART", None)
    if not autostart:
        env["MIG_NO_AUTOSTART"] = "1"
    return env


def mig(
    *args: str,
    dir: Path | str,
    input: str | None = None,
    check: int | None = 0,
    cwd: Path | str | None = None,
    autostart: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    where: str = "",
) -> Result:
    """Run the real ``mig`` with ``MIG_DIR=dir``; assert its exit code is ``check`` unless that is None."""
    proc = subprocess.run(
        [MIG, *args],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**mig_env(dir, autostart), **(env or {})},
        timeout=timeout,
        check=False,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check is not None:
        on = f" on {where}" if where else ""
        assert result.code == check, (
            f"mig {' '.join(args)}{on} exited {result.code}, expected {check}\n"
            f"stdout: {result.out}\nstderr: {result.err}"
        )
    return result


def one_sentence(err: str) -> str:
    """The error of a failed ``mig`` command: the one line it printed on stderr, ``mig: ...``, and no traceback."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mig: "), f"expected one line on stderr, got {err!r}"
    assert "Traceback" not in err, err
    return lines[0]


def daemon_refusal(state_dir: Path, code: int = 7) -> str:
    """Run ``migrated --dir DIR``, which must refuse at once with ``code`` and one line on stderr; return its
    sentence (without ``migrated: ``)."""
    proc = subprocess.Popen([MIGRATED, "--dir", str(state_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=20)
        raise AssertionError(f"migrated started on {state_dir} instead of refusing it") from None
    lines = err.decode().splitlines()
    assert proc.returncode == code, (proc.returncode, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("migrated: "), lines
    return lines[0].removeprefix("migrated: ")


class Background:
    """A ``mig`` command that runs while the test goes on (``mig attach``, ``mig logs -f``, a ``mig move`` that waits
    for a peer): its stdin a pipe, its stdout and stderr collected as they come."""

    def __init__(self, daemon: BaseDaemon, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [MIG, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mig_env(daemon.dir)
        )
        self._out = bytearray()
        self._err = bytearray()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[bytes] | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := os.read(stream.fileno(), 65536):
            into += chunk

    @property
    def out(self) -> str:
        """What it printed on stdout so far."""
        return self._out.decode(errors="replace")

    @property
    def err(self) -> str:
        """What it printed on stderr so far."""
        return self._err.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        """Wait until its stdout shows ``text``."""
        wait_until(lambda: text in self.out, timeout, what=f"{text!r} in the output of mig {' '.join(self.args)}")

    def type(self, line: str) -> None:
        """Write ``line`` to its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the command to end; return its exit code."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def finish(self, timeout: float = 15.0) -> int:
        """Close its stdin and wait for it to end; return its exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait(timeout)

    def stop(self) -> str:
        """End it with SIGTERM, as a person ends ``mig logs -f``; return what it printed."""
        self.proc.terminate()
        self.wait(10)
        return self.out

    def kill(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait()


# -- waiting, processes


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
    """A fresh state directory under /tmp, short enough for a control socket path (107 bytes at most)."""
    return Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def runner_pids(daemon_pid: int) -> set[int]:
    """Live runner processes that belong to the daemon ``daemon_pid`` (its children, or tagged with its pid),
    spare runners (named ``mig-spare`` until they are given an app) left out."""
    found: set[int] = set()
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status", "name"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if RUNNER_MODULE not in " ".join(cmdline) or _is_spare(cmdline, proc.info["name"]):
                continue
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.info["ppid"] == daemon_pid or proc.environ().get("MIG_DAEMON_PID") == str(daemon_pid):
                found.add(proc.info["pid"])
    return found


def _is_spare(cmdline: list[str], name: str) -> bool:
    """A spare runner not yet given an app: named ``mig-spare`` once it started, and before that (while Python
    starts) still named for its interpreter, its command line ending in ``spare``."""
    return name == "mig-spare" or (cmdline[-1:] == ["spare"] and not name.startswith("mig:"))


# -- the daemon harness


class BaseDaemon:
    """A real ``migrated`` that a test drives as a user would: ``mig`` against it, its apps, consoles and peers,
    waits, stopping or killing it, and its log.

    ``Daemon`` (tests/conftest.py) runs on this host's loopback, ``BedDaemon`` (tests/netbed.py) in a host of a
    namespace bed; each says how it is named, where its peer port is and how it is asked to stop.
    """

    stop_request = ""  # how it is asked to stop, for messages

    def __init__(self, state_dir: Path, log: Path, proc: subprocess.Popen[bytes] | None = None, pid: int = 0) -> None:
        self.dir = state_dir
        self.log = log  # where it writes its stderr
        self.proc = proc  # None until a bed daemon is spawned, and for a daemon mig's autostart started
        self._pid = pid

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        if self.proc is not None:
            return self.proc.pid
        assert self._pid, f"{self!r} was never started"
        return self._pid

    @property
    def where(self) -> str:
        """How failure messages name the daemon."""
        return str(self.dir)

    @property
    def name(self) -> str:
        """The host name it goes by (``mig status``'s host)."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """Its peer port, ``ADDR:PORT``."""
        raise NotImplementedError

    def _ask_to_stop(self) -> str:
        """Ask the daemon to stop; return what went wrong, or ''."""
        raise NotImplementedError

    # -- mig

    def mig(self, *args: str, **kwargs: Any) -> Result:
        """Run ``mig`` against this daemon (see ``mig``); a failed check shows the tail of the daemon's log too."""
        try:
            return mig(*args, dir=self.dir, where=self.where, **kwargs)
        except AssertionError as failed:
            tail = "\n".join(self.stderr_log().splitlines()[-40:])
            raise AssertionError(
                f"{failed}\nthe daemon's log{' on ' + self.where if self.where else ''} ends:\n{tail}"
            ) from None

    def status(self) -> dict[str, Any]:
        """``mig status --json``."""
        return dict(json.loads(self.mig("status", "--json").out))

    def ps(self) -> dict[str, dict[str, Any]]:
        """``mig ps --json`` by app name."""
        return {app["name"]: app for app in json.loads(self.mig("ps", "--json").out)}

    def app(self, name: str) -> dict[str, Any]:
        """One app as ``mig ps --json`` shows it."""
        apps = self.ps()
        assert name in apps, f"{name} is not in mig ps on {self.where}: {sorted(apps)}"
        return apps[name]

    def logs(self, name: str, *args: str) -> str:
        """``mig logs NAME``."""
        return self.mig("logs", name, *args).out

    def history(self, name: str) -> list[dict[str, Any]]:
        """``mig history NAME --json``: the app's versions, oldest first."""
        return list(json.loads(self.mig("history", name, "--json").out))

    def peers(self) -> dict[str, dict[str, Any]]:
        """``mig peers --json`` by peer name."""
        return {peer["name"]: peer for peer in json.loads(self.mig("peers", "--json").out)}

    # -- waits

    def wait_state(self, name: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the app is in one of ``states``; return its ps entry."""

        def app_in_state() -> dict[str, Any] | None:
            app = self.app(name)
            return app if app["state"] in states else None

        return wait_until(app_in_state, timeout, what=f"{name} to be {' or '.join(states)} on {self.where}")

    def wait_logs(self, name: str, text: str, timeout: float = 15.0) -> str:
        """Wait until ``mig logs NAME`` contains ``text``; return the logs."""

        def logs_with_text() -> str:
            out = self.logs(name)
            return out if text in out else ""

        return wait_until(logs_with_text, timeout, what=f"{text!r} in the logs of {name} on {self.where}")

    # -- its process

    def alive(self) -> bool:
        """Whether the daemon process runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        return bool(self._pid) and pid_alive(self._pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the daemon if it runs; after SIGKILL, wait until it is dead."""
        if not self.alive():
            return
        os.kill(self.pid, sig)
        if sig != signal.SIGKILL:
            return
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT)
        else:
            wait_until(lambda: not self.alive(), STOP_TIMEOUT, what=f"the daemon on {self.where} to die")

    def kill9(self) -> None:
        """SIGKILL the daemon; wait until its runners are dead too (they must not outlive it)."""
        pid = self.pid
        self.kill(signal.SIGKILL)
        wait_until(lambda: not runner_pids(pid), 10, what=f"the runners of {self.where} to die with it")

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """Ask the daemon to stop and wait for it; return the problems seen: it would not stop (then it is killed) or
        exited with an error, it logged a traceback, a runner outlived it."""
        if self.proc is None and not self._pid:
            return []
        problems = []
        runners = runner_pids(self.pid)
        if self.alive():
            if problem := self._ask_to_stop():
                problems.append(problem)
            try:
                wait_until(lambda: not self.alive(), timeout, what=f"the daemon on {self.where} to exit")
            except AssertionError:
                problems.append(
                    f"the daemon on {self.where} (pid {self.pid}) did not exit after {self.stop_request}; killed it"
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            else:
                if self.proc is not None and self.proc.returncode != 0:
                    problems.append(
                        f"the daemon on {self.where} exited {self.proc.returncode} after {self.stop_request}"
                    )
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT)
        if traceback := self.traceback():
            problems.append(f"the daemon on {self.where} logged a traceback:\n{traceback}")

        # A runner must never outlive its daemon; give the kernel a moment to deliver the death signal.
        def leftover() -> set[int]:
            return {pid for pid in runners | runner_pids(self.pid) if pid_alive(pid)}

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not leftover(), 3.0)
        if left := leftover():
            problems.append(f"runner processes {sorted(left)} of daemon {self.pid} outlived it")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return problems

    # -- its log

    def stderr_log(self) -> str:
        """What the daemon wrote to its log, over all its starts."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` of its log."""
        return self.stderr_log()[-chars:]

    def traceback(self, chars: int = 3000) -> str:
        """The first traceback in its log (``chars`` of it, from there on), or ''."""
        log = self.stderr_log()
        return log[log.index("Traceback") :][:chars] if "Traceback" in log else ""


def pair(shows: BaseDaemon, types: BaseDaemon, by: str = "") -> None:
    """Pair two daemons as a user would: ``mig pair`` shows a code on one, ``mig pair HOST CODE`` on the other uses
    it, HOST being ``by`` (the first one's name, say) or else its peer address."""
    code = json.loads(shows.mig("pair", "--json").out)["code"]
    out = types.mig("pair", by or shows.address, code).out
    expected = f"paired with {shows.name} at {shows.address} (device "
    assert out.startswith(expected), (expected, out)


# -- raw clients of the peer port


def stranger(folder: Path, name: str = "mallory") -> Identity:
    """A daemon identity that nobody paired with (kept in ``folder/name``)."""
    return load_identity(folder / name, name)


def peer_channel(target: BaseDaemon, key_pem: bytes, cert_chain: bytes) -> grpc.Channel:
    """A mutual-TLS channel of its own (no subchannel shared with other channels) to the daemon's peer port, which
    pins its real certificate; the client shows ``cert_chain``."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(target.dir / "identity" / "cert.pem").read_bytes(),
        private_key=key_pem,
        certificate_chain=cert_chain,
    )
    options = [("grpc.ssl_target_name_override", TLS_NAME), ("grpc.use_local_subchannel_pool", 1)]
    return grpc.secure_channel(target.address, creds, options=options)


# -- consoles


def numbers(text: str, word: str = "tick") -> list[int]:
    """The N of every line ``WORD N`` of a console, in order."""
    return [int(n) for n in re.findall(rf"^{word} (\d+)$", text, re.MULTILINE)]


def contiguous(seen: Sequence[int], start: int = 1) -> None:
    """Assert ``seen`` is every number from ``start`` on, once and in order."""
    assert list(seen) == list(range(start, start + len(seen))), f"not every number from {start} once, in order: {seen}"


# -- apps (AppDir.write dedents them; they are written flush left, so a file holds them as they are here)

ECHO = """
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

# Prints ``tick N`` every 0.02 s (every ARGS[1] s if given); its state holds ARGS[0] random bytes (64 KiB if not
# given), which do not compress. Variants add to the end of its class.
TICKER = """
import os

import migrated


class Ticker(migrated.App):
    renew = False  # whether each step makes its blob afresh

    def start(self):
        self.n = 0
        self.blob = os.urandom(int(self.args[0]) if self.args else 1 << 16)

    def step(self):
        self.n += 1
        if self.renew:
            self.blob = os.urandom(len(self.blob))
        print(f"tick {self.n}", flush=True)
        return float(self.args[1]) if len(self.args) > 1 else 0.02
"""

# The ticker, taking input too: ``set N`` sets its count, ``die`` ends its runner at once (``os._exit``), ``exit N``
# ends the app with code N; any other line it prints as ``got LINE``.
TICKER_WITH_INPUT = (
    TICKER
    + """
    def on_input(self, line):
        command, _, value = line.partition(" ")
        if command == "set":
            self.n = int(value)
        elif command == "die":
            os._exit(1)
        elif command == "exit":
            self.exit(int(value))
        else:
            print(f"got {line}", flush=True)
"""
)

# The ticker with new state at every step: each checkpoint has chunks of its own to store.
CHURNING_TICKER = TICKER + "\n    renew = True\n"

# Holds what no checkpoint can save (an SQLite connection, ``self.db``); prints ``lines=N`` for the Nth line of input.
UNSAVEABLE = """
import sqlite3

import migrated


class Chat(migrated.App):
    def start(self):
        self.db = sqlite3.connect(":memory:")
        self.lines = 0

    def on_input(self, line):
        self.lines += 1
        print(f"lines={self.lines}")
"""


# -- the fake of the unit tests

WAIT_BOUND = 30.0  # a bound for a failing test only: a passing one goes on as soon as its check holds


class Recorder:
    """Base of the fakes that record what a unit under test hands them: ``changed`` is set on every record;
    ``until`` waits (at most ``WAIT_BOUND`` s) for a check to hold."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    async def until(self, check: Callable[[], object], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_BOUND):
                while not check():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(what) from None


# -- the state directory, read as a user with sqlite3 at hand would


def rows(state_dir: Path, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the daemon's database, read without writing (the daemon may be running)."""
    path = state_dir / "checkpoints.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def journal(state_dir: Path, role: str) -> list[dict[str, Any]]:
    """The move journal's entries in one role (source or destination), oldest first, as dicts."""
    found = rows(state_dir, "SELECT id, app, epoch, state, detail FROM moves WHERE role = ? ORDER BY rowid", (role,))
    return [
        {"id": id_, "role": role, "app": app, "epoch": epoch, "state": state, **json.loads(detail)}
        for id_, app, epoch, state, detail in found
    ]


def paired_rows(state_dir: Path) -> list[tuple[Any, ...]]:
    """The paired table, as stored."""
    return rows(state_dir, "SELECT * FROM paired_peers ORDER BY device_id")


def json_state_files(state_dir: Path) -> list[Path]:
    """JSON files in the state directory: there should be none (its state lives in its database)."""
    return sorted(path for path in state_dir.rglob("*.json") if "code" not in path.relative_to(state_dir).parts)
