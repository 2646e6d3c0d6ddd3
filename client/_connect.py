"""Reach the local daemon over its Unix socket, starting one in the background when none answers."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from migrated._paths import check_owned, socket_path, socket_path_fits, socket_path_too_long, unusable_state_dir
from migrated.errors import DaemonError, DaemonNotRunningError, MigError, StateDirError
from migrated.transport._errors import error_of
from migrated.transport.v1 import control_pb2 as pb
from migrated.transport.v1 import control_pb2_grpc

__all__ = ["Daemon", "connect", "rpc_error"]

START_TIMEOUT = 20.0
T = TypeVar("T")


class Daemon:
    """A connection to the daemon that owns a state directory."""

    def __init__(self, state_dir: Path, channel: grpc.Channel) -> None:
        self.state_dir = state_dir
        self.channel = channel
        self.stub = control_pb2_grpc.ControlStub(channel)

    def call(self, method: Callable[..., T], request: object, timeout: float | None = None) -> T:
        """Call one RPC, turning a failure into the error it stands for."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.state_dir) from None


def rpc_error(exc: grpc.RpcError, state_dir: Path) -> MigError:
    """The ``MigError`` a failed call to the daemon of ``state_dir`` stands for."""
    return error_of(exc, str(state_dir), local=True)


def connect(state_dir: Path, autostart: bool = True) -> Daemon:
    """Connect to the daemon of ``state_dir``; start it first if none answers and ``autostart``."""
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
    if not _owned(state_dir, socket_path(state_dir)):
        return None
    channel = grpc.insecure_channel(f"unix:{socket_path(state_dir)}")
    try:
        control_pb2_grpc.ControlStub(channel).Status(pb.StatusRequest(), timeout=timeout)
    except grpc.RpcError:
        channel.close()
        return None
    return Daemon(state_dir, channel)


def _start(state_dir: Path) -> Daemon:
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
