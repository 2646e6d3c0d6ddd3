"""The control socket's framed protocol: strangers on the socket, cancelled calls, and what mig prints."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from migrated.transport._control_wire import HEADER, FrameKind, call_frame, frame
from migrated.transport.v1 import control_pb2 as pb
from tests.conftest import AppDir, Daemon
from tests.helpers import MIG, TICKER, mig, mig_env, new_state_dir, one_sentence, wait_until

pytestmark = pytest.mark.integration  # every test runs migrated or mig


def _exchange(path: Path, data: bytes) -> tuple[int, bytes] | None:
    """Send ``data`` on a fresh connection; the first frame answered, or None when the daemon just closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer:
        return None
    size, kind = HEADER.unpack(answer[: HEADER.size])
    return kind, answer[HEADER.size : HEADER.size + size]


def test_strangers_on_the_control_socket_get_a_sentence_or_nothing_and_the_daemon_stays(daemon: Daemon) -> None:
    sock = daemon.dir / "control.sock"
    assert _exchange(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert _exchange(sock, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") is None  # a gRPC client
    assert _exchange(sock, struct.pack("!IB", 2**31, FrameKind.CALL)) is None  # a frame past the bound
    kind, payload = _exchange(sock, call_frame("Nope")) or (0, b"")
    assert kind == FrameKind.ERROR
    error = json.loads(payload)
    assert error["error"] == "DaemonError" and "no method 'Nope'" in error["message"]
    kind, payload = _exchange(sock, frame(FrameKind.CALL, b"Get\n\xff\xff\xff")) or (0, b"")
    assert kind == FrameKind.ERROR and "could not read the request" in json.loads(payload)["message"]
    kind, payload = _exchange(sock, call_frame("Status")) or (0, b"")
    assert kind == FrameKind.REPLY and pb.StatusReply.FromString(payload).pid == daemon.pid
    kind, payload = _exchange(sock, call_frame("Status", as_plain=True)) or (0, b"")
    assert kind == FrameKind.REPLY and json.loads(payload)["pid"] == daemon.pid
    assert daemon.status()["pid"] == daemon.pid


def test_a_follower_that_goes_away_ends_its_stream_in_the_daemon(daemon: Daemon, app_dir: AppDir) -> None:
    """kill -9 of mig logs -f: the daemon's end of the call is cancelled, not left waiting for lines."""
    daemon.mig("run", str(app_dir.write("tick.py", TICKER)))
    follower = subprocess.Popen([MIG, "logs", "-f", "tick"], env=mig_env(daemon.dir), stdout=subprocess.PIPE)
    assert follower.stdout is not None
    follower.stdout.readline()  # the stream runs
    log = daemon.log

    def tasks_named(name: str) -> int:
        mark = log.stat().st_size
        os.kill(daemon.pid, signal.SIGUSR1)  # the daemon logs each of its tasks
        time.sleep(0.5)
        with log.open() as read:
            read.seek(mark)
            return read.read().count(name)

    assert tasks_named("task control Logs") > 0
    follower.kill()
    follower.wait()
    wait_until(lambda: tasks_named("task control Logs") == 0, timeout=10, what="the stream's task to end")
    assert daemon.app("tick")["state"] == "running"


def test_callers_that_reset_their_connection_leave_no_trace(daemon: Daemon, app_dir: AppDir) -> None:
    """A caller killed mid-call resets its connection (RST): the daemon ends the call quietly (the harness fails
    a test whose daemon logged a traceback)."""
    daemon.mig("run", str(app_dir.write("reset.py", TICKER)))
    for follow, method in ((True, "Logs"), (False, "Logs"), (False, "List")):
        request = pb.LogsRequest(name="reset", follow=follow) if method == "Logs" else pb.ListRequest()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.dir / "control.sock"))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            sock.sendall(call_frame(method, request.SerializeToString()))
            time.sleep(0.2)
    daemon.wait_logs("reset", "tick 3")
    assert daemon.app("reset")["state"] == "running"


def test_mig_says_so_when_the_socket_speaks_another_protocol() -> None:
    """A daemon of an older migrated (gRPC on the socket) answers in HTTP/2: one sentence, exit 6."""
    state = new_state_dir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "control.sock"))
    server.listen()

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # mig may close first
                conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")  # HTTP/2 SETTINGS
                time.sleep(0.05)

    threading.Thread(target=answer, daemon=True).start()
    try:
        result = mig("status", dir=state, check=6)
    finally:
        server.close()
        shutil.rmtree(state)
    sentence = one_sentence(result.err)
    assert "does not speak this mig's protocol" in sentence and "stop it" in sentence


def test_ps_prints_one_line_per_app_in_columns_whatever_its_width(shared_daemon: Daemon, app_dir: AppDir) -> None:
    long = "a_name_long_enough_to_push_the_row_past_eighty_columns_xxxxxxx"  # 62 characters
    shared_daemon.mig("run", str(app_dir.write("cols.py", TICKER)), "--name", long)
    lines = shared_daemon.mig("ps").out.splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() == ["NAME", "STATE", "HOST", "HOME", "PID", "VERSION", "AGE", "DETAIL"]
    row = next(line for line in rows if line.startswith(long))
    assert row.split()[1] == "running"
    assert row.index("running") == header.index("STATE")  # columns line up with the header
    assert len(row) > 80  # not wrapped at a terminal width
