"""Reach the local daemon over its Unix socket, starting one in the background when none answers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from migrated._paths import check_owned, socket_path, socket_path_fits, socket_path_too_long, unusable_state_dir
from migrated.errors import DaemonError, DaemonNotRunningError, StateDirError
from migrated.transport._control_wire import HEADER, MAX_FRAME, FrameKind, Method, call_frame, parse_error
from migrated.transport._control_wire import method as _method

__all__ = ["Daemon", "Stream", "connect"]

START_TIMEOUT = 20.0
T = TypeVar("T")


class Daemon:
    """A connection to the daemon that owns a state directory: ``stub.Method(request)`` calls it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.stub = _Stub(self)

    def call(self, method: Callable[..., T], request: object, timeout: float | None = None) -> T:
        """Call one method of the stub (kept for the commands' uniform form)."""
        return method(request, timeout=timeout)

    def open(self, method: Method, request: Any, timeout: float | None) -> _Call:
        """Send one call; the daemon's answer is read from the returned call."""
        return _Call(self, self._send(call_frame(method.name, request.SerializeToString()), timeout), method)

    def plain(self, name: str, timeout: float | None = None, request: bytes = b"") -> dict[str, Any]:
        """Call unary method ``name`` with ``request`` (protobuf bytes; empty by default); its reply as plain JSON
        values (no protobuf)."""
        with _Call(self, self._send(call_frame(name, request, as_plain=True), timeout)) as call:
            reply = call.next()
        if reply is None:
            raise self._lost(None)
        return dict(reply)

    def _send(self, data: bytes, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path(self.state_dir)))
            sock.sendall(data)
        except OSError as exc:
            sock.close()
            raise self._lost(exc) from None
        return sock

    def _lost(self, exc: OSError | None) -> DaemonError:
        if isinstance(exc, TimeoutError):
            return DaemonError(f"the daemon for {self.state_dir} did not answer in time; check mig status")
        why = (exc.strerror or type(exc).__name__) if exc is not None else "it closed the connection"
        return DaemonError(f"the daemon for {self.state_dir} stopped answering ({why}); check mig status")


class _Stub:
    """One callable per method of the ``Control`` service: unary ones return the reply, streaming ones a
    ``Stream``."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = _method(name)
        if method is None:
            raise AttributeError(name)
        daemon = self._daemon
        if method.streaming:
            return lambda request, timeout=None: Stream(daemon.open(method, request, timeout))

        def unary(request: Any, timeout: float | None = None) -> Any:
            with daemon.open(method, request, timeout) as call:
                reply = call.next()
            if reply is None:
                raise daemon._lost(None)
            return reply

        return unary


class _Call:
    """One call on its own connection: the replies as they come (messages of ``method``, or plain JSON values
    without one), ``None`` after the last."""

    def __init__(self, daemon: Daemon, sock: socket.socket, method: Method | None = None) -> None:
        self.daemon = daemon
        self.method = method
        self.sock = sock
        self.file = sock.makefile("rb")
        self.cancelled = False

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next(self) -> Any:
        """The next reply; ``None`` at the end of a stream; the daemon's error raised as its class."""
        try:
            header = self.file.read(HEADER.size)
            size, kind = HEADER.unpack(header) if len(header) == HEADER.size else (0, 0)
            if kind not in (FrameKind.REPLY, FrameKind.END, FrameKind.ERROR) or size > MAX_FRAME:
                if self.cancelled:
                    raise DaemonError("the request was cancelled")
                if header and not len(header) < HEADER.size:
                    raise DaemonError(
                        f"the daemon for {self.daemon.state_dir} does not speak this mig's protocol (one of an older "
                        "migrated?); stop it and run mig again"
                    )
                raise self.daemon._lost(None)
            payload = self.file.read(size)
        except OSError as exc:
            if self.cancelled:
                raise DaemonError("the request was cancelled") from None
            raise self.daemon._lost(exc) from None
        if len(payload) < size:
            raise self.daemon._lost(None)
        if kind == FrameKind.ERROR:
            raise parse_error(payload)
        if kind == FrameKind.END:
            return None
        return self.method.reply.FromString(payload) if self.method is not None else json.loads(payload)

    def cancel(self) -> None:
        """End the call; the daemon cancels it, and a thread reading it wakes."""
        self.cancelled = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Let the connection go."""
        self.file.close()
        self.sock.close()


class Stream:
    """The replies of a streaming call; ``cancel()`` (from any thread) ends it."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        try:
            while (reply := self._call.next()) is not None:
                yield reply
        finally:
            self._call.close()

    def cancel(self) -> None:
        """Cancel the call."""
        self._call.cancel()


def connect(state_dir: Path, autostart: bool | None = None) -> Daemon:
    """Connect to the daemon of ``state_dir``; start it first if none answers and ``autostart`` (by default:
    unless ``MIG_NO_AUTOSTART=1``)."""
    if autostart is None:
        autostart = os.environ.get("MIG_NO_AUTOSTART", "") not in ("1", "true", "yes")
    if not socket_path_fits(state_dir):
        raise socket_path_too_long(state_dir)
    _owned(state_dir, state_dir)  # whoever owns the directory can put a daemon of theirs on its socket
    daemon = _try_connect(state_dir)
    if daemon is not None:
        return daemon
    if not autostart:
        raise DaemonNotRunningError(
            f"no migrated daemon is running for {state_dir}; start one with: migrated --dir {state_dir} "
            "(or unset MIG_NO_AUTOSTART to let mig start it)"
        )
    return _start(state_dir)


def _owned(state_dir: Path, path: Path) -> bool:
    try:
        return check_owned(path)
    except OSError as exc:
        raise unusable_state_dir(state_dir, exc) from None


def _try_connect(state_dir: Path, timeout: float = 2.0) -> Daemon | None:
    """The daemon of ``state_dir`` if one listens on its socket (the call made next says whether it answers)."""
    if not _owned(state_dir, socket_path(state_dir)):
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(str(socket_path(state_dir)))
    except OSError:
        return None
    finally:
        probe.close()
    return Daemon(state_dir)


def _start(state_dir: Path) -> Daemon:
    import subprocess  # only here: most calls find the daemon running

    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_owned(state_dir)  # another user may have made it since connect() looked
        check_owned(state_dir / "daemon.log")
        log = open(state_dir / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
    except OSError as exc:
        raise unusable_state_dir(state_dir, exc) from None
    read_fd, write_fd = os.pipe()
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrated.daemon", "--dir", str(state_dir), "--ready-fd", str(write_fd)],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        ready = _wait_ready(read_fd, START_TIMEOUT)
    finally:
        os.close(read_fd)
    deadline = time.monotonic() + (2.0 if ready else START_TIMEOUT)
    while time.monotonic() < deadline:
        daemon = _try_connect(state_dir)
        if daemon is not None:
            return daemon
        if proc.poll() is not None and not ready and not _locked(state_dir):
            break  # ours failed, and no other daemon is starting on this directory
        time.sleep(0.05)
    daemon = _try_connect(state_dir)  # another mig may have started the daemon at the same time
    if daemon is not None:
        return daemon
    if proc.poll() == StateDirError.exit_code:  # the daemon refused the directory: say it as it did
        raise StateDirError(_last_error(state_dir))
    raise DaemonError(f"the daemon for {state_dir} failed to start: {_last_error(state_dir)}")


def _locked(state_dir: Path) -> bool:
    """Whether a daemon holds the directory's lock (another mig may have started one at the same time)."""
    try:
        fd = os.open(state_dir / "daemon.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _wait_ready(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not readable:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
        if b"ready" in data:
            return True
    return False


def _last_error(state_dir: Path) -> str:
    try:
        lines = (state_dir / "daemon.log").read_text(errors="replace").splitlines()
    except OSError:
        return "no log was written"
    for line in reversed(lines[-50:]):
        if line.startswith("migrated: "):
            return line.removeprefix("migrated: ")
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"{last} (see {state_dir / 'daemon.log'})" if last else f"see {state_dir / 'daemon.log'}"
