"""Home I/O: what an app's console, files and network cost when it runs away from its home host, each figure
beside the same thing at home and beside the raw limit between the same namespaces, measured in the same run.

A namespace test bed of three hosts (``tests.netbed.HomeBed``: h0 is home; h1 and h2 see an empty tmpfs over
the home's folder, so whatever an app on them writes to its own disk is visible there, and the bench checks that
nothing was). The apps are started at home with ``mig run`` from the home folder (a temporary folder under /tmp,
on the local disk), and either stay on h0 or are moved to h1 with ``mig move`` before they start their work:
each app waits for ``mig send NAME go``, sent at home.

1. Console: the app prints N numbered 60-byte lines with ``print`` as fast as it can, a few thousand per step. A
   ``mig logs -f NAME`` follower at home times the lines from the arrival of the first to the arrival of the
   last; lines/s and MB/s (10^6 bytes), at home vs on h1, and every line is checked to arrive once, in order.
2. Files: the app times, with ``time.perf_counter`` inside one step, a sequential write of 256 MiB (1 MiB
   writes, then flush and close) and its read back (1 MiB reads) in MB/s, and the latency of ``os.stat(path)``
   and of a 4 KiB read at a random offset (seek + read on an open file, buffered as ``open`` gives it and
   unbuffered), median and p90 over 2000 ops each; it prints one JSON line that the bench reads with ``mig
   logs -f`` at home. At home (local disk) vs on h1 (proxied to h0), beside the raw stream throughput from h1 to h0
   (``bench.grpc_stream``'s measurement: raw TCP, TLS, gRPC and gRPC with the daemons' mutual TLS, 1 MiB
   messages).
3. Network: a TCP client in h2's namespace talks to the app's port on h0 (``migrated.net.listen``): 2000 pings
   of 64 bytes one at a time (round trip median and p90), then 64 MiB echoed in 64 KiB pieces, pipelined: first
   with at most 1 MiB in flight (``--window-kib``), then without a bound on a connection of its own (MB/s; an
   echo that fails notes its error and the bytes that came back before it). The app on h1 (proxied through h0),
   the app at home on h0 (still through the home daemon's socket, events to a local runner), and a plain Python
   echo server on h0 (the physical baseline).

Also the CPU seconds the daemons of h0 and h1 spent in each measurement, and how many cores processes outside
the bench kept busy meanwhile (``other_load_cores``, warned about above 0.2: on a 2-core machine the figures
are then skewed). Needs root (``ip netns``); about a minute and a half.

Run: ``python -m bench.home_io [--lines 200000] [--file-mib 256] [--ops 2000] [--pings 2000] [--echo-mib 64]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._common import PYTHON, summary, write_results
from tests.netbed import MIG, NetBed, _daemon_env, netbed_available

LINE_BYTES = 60  # "L0000123 " + 50 x + newline
PAD = "x" * (LINE_BYTES - 10)
LINES_PER_STEP = 5000
OTHER_LOAD_WARNING = 0.2  # cores

CONSOLE_APP = f"""\
import json
import time

import migrated


class Spew(migrated.App):
    def start(self):
        self.n = int(self.args[0])
        self.i = 0
        self.go = False
        self.t0 = 0.0
        print("ready", flush=True)

    def on_input(self, line):
        if line.strip() == "go":
            self.go = True

    def step(self):
        if not self.go:
            return 0.01
        if self.i == 0:
            self.t0 = time.perf_counter()
        end = min(self.n, self.i + {LINES_PER_STEP})
        for i in range(self.i, end):
            print(f"L{{i:07d}} {PAD}")
        self.i = end
        if self.i < self.n:
            return 0
        print("DONE " + json.dumps({{"print_s": time.perf_counter() - self.t0}}), flush=True)
        return None
"""

FILES_APP = """\
import json
import os
import random
import time

import migrated


def stats(values):
    values = sorted(values)
    return {"median": values[len(values) // 2], "p90": values[int(len(values) * 0.9)], "n": len(values)}


class Files(migrated.App):
    def start(self):
        self.go = False
        print("ready", flush=True)

    def on_input(self, line):
        if line.strip() == "go":
            self.go = True

    def step(self):
        if not self.go:
            return 0.01
        mib, ops = int(self.args[0]), int(self.args[1])
        path = "hio.bin"
        size = mib << 20
        block = os.urandom(1 << 20)
        result = {"bytes": size, "cwd": os.getcwd()}

        start = time.perf_counter()
        with open(path, "wb") as out:
            for _ in range(mib):
                out.write(block)
            out.flush()
        result["write_s"] = time.perf_counter() - start

        start = time.perf_counter()
        got = 0
        with open(path, "rb") as src:
            while chunk := src.read(1 << 20):
                got += len(chunk)
        result["read_s"] = time.perf_counter() - start
        result["read_bytes"] = got

        samples = []
        for _ in range(ops):
            t = time.perf_counter()
            os.stat(path)
            samples.append(time.perf_counter() - t)
        result["stat_s"] = stats(samples)

        rng = random.Random(1)
        for name, buffering in (("random_read_s", -1), ("random_read_unbuffered_s", 0)):
            samples = []
            with open(path, "rb", buffering=buffering) as src:
                for _ in range(ops):
                    at = rng.randrange(0, size - 4096)
                    t = time.perf_counter()
                    src.seek(at)
                    data = src.read(4096)
                    samples.append(time.perf_counter() - t)
                    assert len(data) == 4096
            result[name] = stats(samples)

        os.remove(path)
        print("RESULT " + json.dumps(result), flush=True)
        return None
"""

ECHO_APP = """\
import migrated
import migrated.net


class Echo(migrated.App):
    def start(self):
        self.listener = migrated.net.listen(0, host=self.args[0])
        print(f"listening on {self.listener.port}", flush=True)

    def on_data(self, conn, data):
        conn.send(data)
"""

# The physical baseline: a plain threaded echo server; prints its port, ends when its stdin closes.
PLAIN_ECHO = """\
import os, socket, sys, threading

def serve(conn):
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)

listener = socket.create_server((sys.argv[1], 0))
print(listener.getsockname()[1], flush=True)

def accept():
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
while os.read(0, 4096):
    pass
"""

# The TCP client (in h2): pings one at a time, then TOTAL bytes echoed in PIECE-byte pieces, first with at most
# WINDOW bytes in flight, then pipelined without a bound (on a connection of its own, and last: it may break the
# app); prints one JSON line. Each part notes its own error and the bytes that came back before it.
CLIENT = """\
import json, socket, sys, threading, time

addr, port, pings, total, piece, window = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7])
payload = bytes(range(256)) * (piece // 256)
out = {}


def connect():
    sock = socket.create_connection((addr, port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ping(sock):
    message = b"p" * 64
    rtts = []
    for i in range(pings):
        t = time.perf_counter()
        sock.sendall(message)
        got = 0
        while got < 64:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {i} pings")
            got += len(data)
        rtts.append(time.perf_counter() - t)
        if got != 64:
            raise RuntimeError(f"ping {i}: {got} bytes came back, not 64")
    return {"rtt_s": rtts}


def echo(sock, window, result):
    changed = threading.Condition()
    state = {"got": 0, "stop": False, "error": None}

    def sender():
        sent = 0
        try:
            for _ in range(total // piece):
                if window:
                    with changed:
                        while sent - state["got"] > window - piece and not state["stop"]:
                            changed.wait(1)
                if state["stop"]:
                    return
                sock.sendall(payload)
                sent += piece
        except OSError as exc:
            state["error"] = f"sending: {type(exc).__name__}: {exc}"

    buffer = bytearray(1 << 20)
    got = 0
    thread = threading.Thread(target=sender, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        while got < total:
            n = sock.recv_into(buffer)
            if not n:
                raise ConnectionError(f"closed after {got} of {total} echoed bytes")
            got += n
            result["echoed_bytes"] = got
            if window:
                with changed:
                    state["got"] = got
                    changed.notify()
        result["echo_s"] = time.perf_counter() - start
    finally:
        with changed:
            state["stop"] = True
            changed.notify()
        result["echoed_bytes"] = got
        result["after_s"] = time.perf_counter() - start
    thread.join(10)
    if state["error"]:
        raise RuntimeError(state["error"])


for part in ("ping", "echo_windowed", "echo_unbounded"):
    result = out[part] = {"errors": []}
    try:
        if part == "ping":
            sock = connect()
            result.update(ping(sock))
        elif part == "echo_windowed":
            echo(sock, window, result)
            sock.close()
        else:
            sock = connect()
            echo(sock, 0, result)
            sock.close()
    except Exception as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        if part == "ping":
            break
print(json.dumps(out))
"""


class Home:
    """The bed and the helpers that drive its apps from home."""

    def __init__(self, bed: Any, folder: Path) -> None:
        self.bed = bed
        self.folder = folder
        self.h0, self.h1, self.h2 = bed.daemons

    def env(self) -> dict[str, str]:
        return {**_daemon_env(self.h0.dir), "MIG_NO_AUTOSTART": "1"}

    def run(self, name: str, source: str, *args: str) -> None:
        """``mig run`` at home from the home folder (the app's working directory)."""
        path = self.folder / f"{name}.py"
        path.write_text(source)
        proc = subprocess.run(
            [MIG, "run", str(path), "--name", name, *(("--", *args) if args else ())],
            cwd=self.folder,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mig run {name} failed: {proc.stderr.strip()}")

    def ps(self, daemon: Any = None) -> dict[str, dict[str, Any]]:
        out = (daemon or self.h0).mig("ps", "--json").stdout
        return {app["name"]: app for app in json.loads(out)}

    def logs(self, name: str, tail: int = 0) -> str:
        return str(self.h0.mig("logs", name, *(("-n", str(tail)) if tail else ()), timeout=60).stdout)

    def wait_log(self, name: str, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.logs(name, tail=20), re.MULTILINE)
            if match:
                return match
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not print {pattern!r} within {timeout:.0f} s: {self.logs(name)[-2000:]}"
                )
            time.sleep(0.05)

    def place(self, name: str, where: str) -> None:
        """Leave the app on h0, or move it to h1 (with ``mig move`` on h0, which runs it)."""
        if where == "h0":
            return
        out = self.h0.mig("move", name, where, timeout=120).stdout
        if f"moved {name} to {where}" not in out:
            raise RuntimeError(f"mig move {name} {where}: {out}")
        app = self.ps()[name]
        if app["host"] != where:
            raise RuntimeError(f"{name} runs on {app['host']} after the move to {where}")

    def send(self, name: str, text: str) -> None:
        self.h0.mig("send", name, text)

    def kill(self, name: str) -> None:
        host = self.ps()[name]["host"]
        daemon = {"h0": self.h0, "h1": self.h1, "h2": self.h2}[host]
        daemon.mig("kill", "--force", name, check=None)

    def daemon_cpu(self) -> dict[str, float]:
        cpu = {}
        for daemon in (self.h0, self.h1):
            times = psutil.Process(daemon.pid).cpu_times()
            cpu[daemon.host.name] = times.user + times.system
        return cpu

    def local_leftovers(self) -> list[str]:
        """What h1 sees in the home folder on its own disk (it must be empty: everything went home)."""
        return list(self.h1.ls(self.folder))


def _tree_cpu() -> dict[int, float]:
    """CPU seconds of this process and of every process under it (the bed's daemons, their runners, the
    clients), each with its children that have been waited for."""
    found = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            found[proc.pid] = times.user + times.system + times.children_user + times.children_system
    return found


class OtherLoad:
    """How many cores processes outside this bench kept busy from now until ``cores()``: the machine's busy
    CPU time less the bench's own (a process of ours that ended unwaited counts as other load)."""

    def __init__(self) -> None:
        self.machine = self._machine()
        self.ours = _tree_cpu()
        self.start = time.perf_counter()

    @staticmethod
    def _machine() -> float:
        times = psutil.cpu_times()
        return float(times.user + times.nice + times.system)  # not irq, softirq: our own traffic is there

    def cores(self) -> float:
        ours = sum(cpu - self.ours.get(pid, 0.0) for pid, cpu in _tree_cpu().items())
        other = (self._machine() - self.machine - ours) / (time.perf_counter() - self.start)
        if other > OTHER_LOAD_WARNING:
            print(f"warning: other processes kept {other:.1f} cores busy meanwhile", file=sys.stderr, flush=True)
        return other


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {host: after[host] - before[host] for host in before}


class Follower:
    """``mig logs -f NAME`` at home; keeps every chunk of its output with the time it arrived."""

    def __init__(self, home: Home, name: str) -> None:
        self.proc = subprocess.Popen([MIG, "logs", "-f", name], stdout=subprocess.PIPE, env=home.env())
        self.chunks: list[tuple[float, bytes]] = []
        self.data = bytearray()
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 20):
            now = time.perf_counter()
            with self._changed:
                self.chunks.append((now, chunk))
                self.data += chunk
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, marker: bytes, timeout: float, start: int = 0) -> int:
        """The offset of ``marker`` at or after ``start`` once it has arrived; -1 after ``timeout`` or the end."""
        deadline = time.monotonic() + timeout
        searched = start
        with self._changed:
            while True:
                found = self.data.find(marker, searched)
                if found >= 0:
                    return found
                searched = max(start, len(self.data) - len(marker))
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return -1
                self._changed.wait(left)

    def stop(self) -> bytes:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._thread.join(10)
        return bytes(self.data)

    def arrival(self, offset: int) -> float:
        """When the byte at ``offset`` of the whole output arrived."""
        seen = 0
        for at, chunk in self.chunks:
            seen += len(chunk)
            if offset < seen:
                return at
        raise ValueError(offset)


def console(home: Home, where: str, lines: int) -> dict[str, Any]:
    name = f"spew-{where}"
    home.run(name, CONSOLE_APP, str(lines))
    home.wait_log(name, r"^ready$")
    home.place(name, where)
    follower = Follower(home, name)
    try:
        if follower.wait_for(b"ready\n", 20) < 0:
            raise RuntimeError(f"mig logs -f {name} printed nothing")
        cpu, load = home.daemon_cpu(), OtherLoad()
        home.send(name, "go")
        done_at = follower.wait_for(b"DONE {", 120 + lines / 1000)
        finished = done_at >= 0 and follower.wait_for(b"}\n", 10, done_at) >= 0
        cpu, other = _cpu_delta(cpu, home.daemon_cpu()), load.cores()
    finally:
        out = follower.stop()
    first = out.find(b"L0000000 ")
    last_marker = f"L{lines - 1:07d} ".encode()
    last = out.find(last_marker)
    if first < 0 or last < 0:
        raise RuntimeError(f"the follower of {name} did not see the first and the last line (finished: {finished})")
    t_first = follower.arrival(first + LINE_BYTES - 1)
    t_last = follower.arrival(last + LINE_BYTES - 1)
    numbers = [int(m) for m in re.findall(rb"^L(\d{7}) x+$", out, re.MULTILINE)]
    expected = list(range(lines))
    done = re.search(rb"^DONE (\{.*\})$", out, re.MULTILINE)
    app_print_s = json.loads(done.group(1))["print_s"] if done else None
    elapsed = t_last - t_first
    home.kill(name)
    return {
        "where": where,
        "lines": lines,
        "bytes": lines * LINE_BYTES,
        "first_to_last_s": elapsed,
        "lines_per_s": (lines - 1) / elapsed,
        "mb_per_s": (lines - 1) * LINE_BYTES / elapsed / 1e6,
        "app_print_s": app_print_s,
        "app_print_lines_per_s": lines / app_print_s if app_print_s else None,
        "received_lines": len(numbers),
        "all_once_in_order": numbers == expected,
        "missing": len(set(expected) - set(numbers)),
        "duplicated": len(numbers) - len(set(numbers)),
        "daemon_cpu_s": cpu,
        "other_load_cores": other,
    }


def files(home: Home, where: str, mib: int, ops: int) -> dict[str, Any]:
    name = f"files-{where}"
    home.run(name, FILES_APP, str(mib), str(ops))
    home.wait_log(name, r"^ready$")
    home.place(name, where)
    follower = Follower(home, name)  # not `mig logs` in a loop: each costs a core for a fifth of a second
    try:
        if follower.wait_for(b"ready\n", 20) < 0:
            raise RuntimeError(f"mig logs -f {name} printed nothing")
        cpu, load = home.daemon_cpu(), OtherLoad()
        start = time.perf_counter()
        home.send(name, "go")
        at = follower.wait_for(b"RESULT {", 60 + mib)
        end = follower.wait_for(b"}\n", 10, at) if at >= 0 else -1
        wall = time.perf_counter() - start
        cpu, other = _cpu_delta(cpu, home.daemon_cpu()), load.cores()
    finally:
        out = follower.stop()
    if end < 0:
        raise RuntimeError(f"{name} printed no result: {out[-2000:].decode(errors='replace')}")
    home.kill(name)
    result: dict[str, Any] = json.loads(out[at + len(b"RESULT ") : end + 1])
    if result["read_bytes"] != result["bytes"]:
        raise RuntimeError(f"{name} read back {result['read_bytes']} bytes of {result['bytes']}")
    result.update(
        where=where,
        write_mb_per_s=result["bytes"] / result["write_s"] / 1e6,
        read_mb_per_s=result["bytes"] / result["read_s"] / 1e6,
        wall_s=wall,
        daemon_cpu_s=cpu,
        other_load_cores=other,
    )
    if where != "h0":
        result["left_on_h1_disk"] = home.local_leftovers()
    return result


def _client(home: Home, port: int, pings: int, total: int, piece: int, window: int) -> dict[str, Any]:
    script = home.folder / "client.py"
    script.write_text(CLIENT)
    argv = [PYTHON, str(script), home.bed.bed[0].addr, str(port), *map(str, (pings, total, piece, window))]
    proc = home.bed.bed[2].popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=120 + total / 1e6)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    raw: dict[str, Any] = json.loads(out)
    result: dict[str, Any] = {"pings": pings, "echo_bytes": total, "piece": piece, "window": window}
    for part, row in raw.items():
        entry: dict[str, Any] = {key: value for key, value in row.items() if key != "rtt_s"}
        if "rtt_s" in row:
            entry["rtt_ms"] = summary([t * 1e3 for t in row["rtt_s"]])
        if "echo_s" in row:
            entry["mb_per_s"] = total / row["echo_s"] / 1e6
        result[part] = entry
    return result


def network_app(home: Home, where: str, pings: int, total: int, piece: int, window: int) -> dict[str, Any]:
    name = f"echo-{where}"
    home.run(name, ECHO_APP, home.bed.bed[0].addr)
    port = int(home.wait_log(name, r"^listening on (\d+)$").group(1))
    home.place(name, where)
    cpu, load = home.daemon_cpu(), OtherLoad()
    result = _client(home, port, pings, total, piece, window)
    result["daemon_cpu_s"] = _cpu_delta(cpu, home.daemon_cpu())
    result["other_load_cores"] = load.cores()
    time.sleep(0.5)  # what the daemons say once a crash, if any, has been dealt with
    app = home.ps()[name]
    result["app_state_after"] = app["state"]  # as the home sees it
    if where != "h0":
        result["app_state_after_on_" + where] = home.ps(home.h1).get(name, {}).get("state")
    home.kill(name)
    return {"where": where, **result}


def network_plain(home: Home, pings: int, total: int, piece: int, window: int) -> dict[str, Any]:
    script = home.folder / "plain_echo.py"
    script.write_text(PLAIN_ECHO)
    server = home.bed.bed[0].popen(
        [PYTHON, str(script), home.bed.bed[0].addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if not select.select([server.stdout], [], [], 20)[0]:
            raise RuntimeError("the plain echo server did not start")
        port = int(server.stdout.readline())
        load = OtherLoad()
        result = _client(home, port, pings, total, piece, window)
        result["other_load_cores"] = load.cores()
    finally:
        assert server.stdin is not None
        with contextlib.suppress(OSError):
            server.stdin.close()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    return {"where": "plain python on h0", **result}


def stream_limit(bed: NetBed, total_mib: int, repeats: int) -> dict[str, Any]:
    """``bench.grpc_stream``'s measurement from h1 (client) to h0 (servers), 1 MiB messages."""
    from bench import grpc_stream
    from migrated.transport._identity import load_identity

    args = argparse.Namespace(total_mib=total_mib, sizes_kib=[1024], warmup_mib=32, repeats=repeats, pin=False)
    identities = Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))
    try:
        load_identity(identities / "server", "server")
        load_identity(identities / "client", "client")
        placement: dict[str, Any] = grpc_stream._placement(
            "h1 -> h0", bed[0].popen, bed[1].popen, bed[0].addr, args, identities
        )
    finally:
        shutil.rmtree(identities, ignore_errors=True)
    limits = {kind: placement[kind][str(1 << 20)]["mb_per_s"]["median"] for kind in grpc_stream.KINDS}
    return {"mb_per_s": limits, "other_load_cores": placement["other_load_cores"], "raw": placement}


@contextlib.contextmanager
def home_bed() -> Iterator[Home]:
    from tests.netbed import HomeBed as Bed

    folder = Path(tempfile.mkdtemp(prefix="mig-home-", dir="/tmp"))
    try:
        with NetBed(3) as netbed:
            bed = Bed(netbed, folder)
            try:
                yield Home(bed, folder)
            finally:
                problems = netbed.close()
                for problem in problems:
                    print(f"problem: {problem}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stderr_excerpt(home: Home) -> dict[str, list[str]]:
    """Warnings and errors the daemons logged, and what they said about the bench's apps (the last 30 of each)."""
    found = {}
    for daemon in (home.h0, home.h1, home.h2):
        lines = [
            line
            for line in daemon.stderr_log().splitlines()
            if re.search(r"warn|error|traceback|exception|refused|fail|crash|spew-|files-|echo-", line, re.IGNORECASE)
        ]
        found[daemon.host.name] = lines[-30:]
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with home_bed() as home:
        print("raw stream h1 -> h0 ...", file=sys.stderr, flush=True)
        results["stream_limit_h1_to_h0"] = stream_limit(home.bed.bed, args.stream_mib, args.stream_repeats)
        print("console ...", file=sys.stderr, flush=True)
        results["console"] = {where: console(home, where, args.lines) for where in ("h0", "h1")}
        print("files ...", file=sys.stderr, flush=True)
        results["files"] = {where: files(home, where, args.file_mib, args.ops) for where in ("h0", "h1")}
        print("network ...", file=sys.stderr, flush=True)
        echo = (args.pings, args.echo_mib << 20, 64 << 10, args.window_kib << 10)
        results["network"] = {
            "plain": network_plain(home, *echo),
            "h0": network_app(home, "h0", *echo),
            "h1": network_app(home, "h1", *echo),
        }
        results["daemon_log_warnings"] = _stderr_excerpt(home)
    return results


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _load(row: dict[str, Any]) -> str:
    other = row.get("other_load_cores", 0.0)
    return f" [other processes: {other:.1f} cores]" if other > OTHER_LOAD_WARNING else ""


def report(results: dict[str, Any]) -> str:
    out = []
    limits = results["stream_limit_h1_to_h0"]["mb_per_s"]
    out.append(
        "raw stream h1 -> h0, 1 MiB messages (MB/s): "
        + ", ".join(f"{kind} {value:.0f}" for kind, value in limits.items())
    )
    out.append("console (mig logs -f at home, first to last line):")
    for where, row in results["console"].items():
        out.append(
            f"  app on {where}: {row['lines_per_s']:>9.0f} lines/s {row['mb_per_s']:>6.1f} MB/s"
            f" (app printed at {_fmt(row['app_print_lines_per_s'])} lines/s;"
            f" all once in order: {row['all_once_in_order']}){_load(row)}"
        )
    out.append("files (home folder on h0's disk):")
    for where, row in results["files"].items():
        out.append(
            f"  app on {where}: write {row['write_mb_per_s']:>6.0f} MB/s, read {row['read_mb_per_s']:>6.0f} MB/s;"
            f" stat {row['stat_s']['median'] * 1e3:.3f}/{row['stat_s']['p90'] * 1e3:.3f} ms,"
            f" 4 KiB random read {row['random_read_s']['median'] * 1e3:.3f}/{row['random_read_s']['p90'] * 1e3:.3f} ms"
            f" (unbuffered {row['random_read_unbuffered_s']['median'] * 1e3:.3f}/"
            f"{row['random_read_unbuffered_s']['p90'] * 1e3:.3f} ms) median/p90{_load(row)}"
        )
    out.append("network (client in h2 -> port on h0; echo with at most 1 MiB in flight / unbounded):")
    for where, row in results["network"].items():
        label = "plain python echo on h0" if where == "plain" else f"app on {where}"
        rtt = row["ping"].get("rtt_ms", {})
        line = f"  {label:<24} rtt {_fmt(rtt.get('median'), '.3f')}/{_fmt(rtt.get('p90'), '.3f')} ms median/p90"
        for part in ("echo_windowed", "echo_unbounded"):
            echo = row.get(part, {})
            line += f", {part[5:]} {_fmt(echo.get('mb_per_s'))} MB/s"
            if echo.get("errors"):
                line += f" (FAILED after {echo.get('echoed_bytes', 0) / 1e6:.1f} MB: {'; '.join(echo['errors'])})"
        states = {"home": row.get("app_state_after"), where: row.get(f"app_state_after_on_{where}")}
        if any(state not in (None, "running") for state in states.values()):
            line += "; the app afterwards: " + ", ".join(f"{s} ({host}'s view)" for host, s in states.items() if s)
        out.append(line + _load(row))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=200_000, help="console lines")
    parser.add_argument("--file-mib", type=int, default=256, help="MiB written and read back")
    parser.add_argument("--ops", type=int, default=2000, help="stats and random reads")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--echo-mib", type=int, default=64, help="MiB echoed, pipelined")
    parser.add_argument("--window-kib", type=int, default=1024, help="bytes in flight in the windowed echo")
    parser.add_argument("--stream-mib", type=int, default=256, help="MiB per raw stream (the limit)")
    parser.add_argument("--stream-repeats", type=int, default=3)
    args = parser.parse_args()
    ok, reason = netbed_available()
    if not ok:
        sys.exit(f"bench.home_io needs network namespaces: {reason}")
    start = time.perf_counter()
    results = run(args)
    runtime = time.perf_counter() - start
    settings = {
        "line_bytes": LINE_BYTES,
        "lines_per_step": LINES_PER_STEP,
        "file_bytes": args.file_mib << 20,
        "ops": args.ops,
        "pings": args.pings,
        "echo_bytes": args.echo_mib << 20,
        "echo_piece": 64 << 10,
        "echo_window": args.window_kib << 10,
    }
    path = write_results("home_io", {"settings": settings, **results, "runtime_s": runtime})
    print(report(results))
    print(f"\n{runtime:.0f} s; written to {path}")


if __name__ == "__main__":
    main()
