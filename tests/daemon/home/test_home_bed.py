"""Home I/O in the namespace test bed: an app moves between hosts while its console, its input, its files and
its TCP clients stay at home.

The hosts that are not home (h1, h2) run in a mount namespace of their own with an empty tmpfs over the home's
folder, so a file the app wrote on their own disk would land there, where nobody else sees it: the tests look
at the home's folder (what the home sees) and into h1's and h2's view (``nsenter``) to show where bytes went.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TICKER_WITH_INPUT, Background, contiguous, numbers, wait_until
from tests.netbed import HomeBed, NetBed

PRINTER = ("0", "0.01")  # the ticker's args: no state to speak of, a tick every 10 ms

APPENDER = """
import migrated


class Appender(migrated.App):
    def start(self):
        self.n = 0
        self.out = open("out.txt", "a")       # at home, relative to the folder mig run was called from
        self.src = open("lines.txt")          # read one line per step, wherever the app runs

    def step(self):
        self.n += 1
        self.out.write(f"line {self.n}\\n")
        self.out.flush()
        line = self.src.readline()
        if line:
            print(f"read {line.strip()}")
        return 0.01
"""

ECHO_SERVER = """
import migrated
import migrated.net


class Echo(migrated.App):
    def start(self):
        self.listener = migrated.net.listen(0, host=self.args[0])
        self.conns = 0
        print(f"listening on {self.listener.port}")

    def on_accept(self, conn):
        self.conns += 1
        print(f"accepted {self.conns}")

    def on_data(self, conn, data):
        conn.send(data)
"""

FILER = """
import migrated
import migrated.net


class Filer(migrated.App):
    def start(self):
        self.n = 0
        self.listener = migrated.net.listen(0)
        print(f"listening on {self.listener.port}")

    def step(self):
        self.n += 1
        try:
            with open(self.args[0], "a") as out:
                out.write(f"line {self.n}\\n")
            print(f"wrote {self.n}")
        except OSError as exc:
            print(f"write failed: {exc}")
        return 0.05

    def on_input(self, line):
        print(f"got {line}")
"""

# A TCP client run inside a host's namespace: one connection, a numbered message every 20 ms, each echo checked;
# it prints one JSON line when told to stop (a line on stdin) and never reconnects.
CLIENT = """
import json, socket, sys, threading, time

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
sent = echoed = 0
rtts, errors, buffer = [], [], b""
while not stop.is_set():
    sent += 1
    message = f"message {sent}\\n".encode()
    started = time.perf_counter()
    try:
        sock.sendall(message)
        while b"\\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            buffer += data
    except OSError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        break
    line, _, buffer = buffer.partition(b"\\n")
    rtts.append(time.perf_counter() - started)
    if line + b"\\n" == message:
        echoed += 1
    else:
        errors.append(f"expected {message!r}, got {line!r}")
        break
    time.sleep(0.02)
print(json.dumps({"sent": sent, "echoed": echoed, "errors": errors, "max_rtt": max(rtts or [0])}))
"""


@pytest.fixture(scope="module")
def bed(module_netbeds: Callable[[int], NetBed]) -> Iterator[HomeBed]:
    folder = Path(tempfile.mkdtemp(prefix="mig-home-", dir="/tmp"))
    try:
        yield HomeBed(module_netbeds(3), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(bed: HomeBed, name: str, source: str, *args: str) -> None:
    """``mig run`` at home, from the home's folder."""
    path = bed.folder / f"{name}.py"
    path.write_text(source.lstrip("\n"))
    bed.daemons[0].mig("run", str(path), "--name", name, *(("--", *args) if args else ()), cwd=bed.folder, timeout=60)


def move(bed: HomeBed, name: str, to: str) -> None:
    """Move ``name`` from wherever it runs to ``to``, with the real ``mig move`` on that host."""
    where = bed.daemons[0].ps()[name]["host"]
    out = bed.host(where).mig("move", name, to, timeout=60).out
    assert f"moved {name} to {to}" in out, out
    assert bed.daemons[0].ps()[name]["host"] == to


def home_log(bed: HomeBed, name: str) -> str:
    return bed.daemons[0].logs(name)


def past(bed: HomeBed, name: str, word: str, beyond: int, timeout: float = 20.0) -> list[int]:
    """Wait until the home shows ``word N`` past ``beyond``; return every number it shows."""

    def further() -> list[int] | None:
        seen = numbers(home_log(bed, name), word)
        return seen if seen and seen[-1] > beyond else None

    return wait_until(further, timeout, what=f"{name}'s {word} past {beyond} at home")


def onward(bed: HomeBed, name: str, word: str, more: int) -> list[int]:
    """Wait until the home shows ``more`` numbers past the last it shows now; return every number it shows."""
    return past(bed, name, word, numbers(home_log(bed, name), word)[-1] + more)


def test_twenty_moves_lose_and_repeat_no_console_line_at_home(
    bed: HomeBed, background: Callable[..., Background]
) -> None:
    run(bed, "printer", TICKER_WITH_INPUT, *PRINTER)
    follower = background(bed.daemons[0], "logs", "-f", "printer")  # as a person would leave it running
    past(bed, "printer", "tick", 10)
    for index in range(20):
        move(bed, "printer", "h1" if index % 2 == 0 else "h0")
    last = numbers(bed.daemons[0].mig("logs", "printer").out)[-1]
    seen = past(bed, "printer", "tick", last + 50)
    contiguous(seen)
    followed = numbers(follower.stop())
    contiguous(followed)
    assert len(followed) >= last, "mig logs -f stopped following across the moves"
    assert bed.daemons[0].ps()["printer"]["epoch"] == 20
    bed.daemons[0].mig("kill", "printer")


def test_input_typed_at_home_reaches_the_app_once_across_moves(bed: HomeBed) -> None:
    run(bed, "typist", TICKER_WITH_INPUT, *PRINTER)
    past(bed, "typist", "tick", 5)

    def moves() -> None:
        for to in ("h1", "h2", "h1", "h0", "h2"):
            move(bed, "typist", to)

    moving = threading.Thread(target=moves, daemon=True)
    moving.start()
    sent = 0
    while moving.is_alive() or sent < 40:
        sent += 1
        bed.daemons[0].mig("send", "typist", str(sent))
        time.sleep(0.05)
    moving.join(60)

    def all_arrived() -> list[int] | None:
        got = numbers(home_log(bed, "typist"), "got")
        return got if len(got) >= sent else None

    got = wait_until(all_arrived, 20, what="every line typed at home to reach the app")
    contiguous(got)
    assert bed.daemons[0].ps()["typist"]["host"] == "h2"
    bed.host("h2").mig("kill", "typist")


def test_files_at_home_are_read_and_written_wherever_the_app_runs(bed: HomeBed) -> None:
    (bed.folder / "lines.txt").write_text("".join(f"{n}\n" for n in range(1, 3001)))
    run(bed, "appender", APPENDER)
    past(bed, "appender", "read", 20)
    move(bed, "appender", "h1")
    onward(bed, "appender", "read", 20)
    h1 = bed.host("h1")
    assert h1.ls(bed.folder) == [], "the app wrote to the disk of the host it runs on"
    move(bed, "appender", "h2")
    onward(bed, "appender", "read", 20)
    move(bed, "appender", "h0")
    onward(bed, "appender", "read", 20)
    bed.daemons[0].mig("close", "appender")
    written = numbers((bed.folder / "out.txt").read_text(), "line")
    contiguous(written)
    assert len(written) > 60
    contiguous(numbers(home_log(bed, "appender"), "read"))  # the open file went on at its position
    assert h1.ls(bed.folder) == [] and bed.host("h2").ls(bed.folder) == []


def test_a_tcp_client_keeps_one_connection_through_three_moves(bed: HomeBed) -> None:
    home_addr = bed.bed[0].addr
    run(bed, "echo", ECHO_SERVER, home_addr)
    port = wait_until(lambda: re.findall(r"listening on (\d+)", home_log(bed, "echo")), 15, what="the port")[0]
    script = bed.folder / "client.py"
    script.write_text(CLIENT)
    client = bed.bed[2].popen(
        [sys.executable, str(script), home_addr, port], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: "accepted 1" in home_log(bed, "echo"), 15, what="the client to connect")
        time.sleep(0.5)
        for to in ("h1", "h2", "h0"):
            move(bed, "echo", to)
            time.sleep(0.5)
        out, _ = client.communicate("stop\n", timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    report = json.loads(out)
    assert report["errors"] == [], report
    assert report["echoed"] == report["sent"] and report["sent"] > 50, report
    assert numbers(home_log(bed, "echo"), "accepted") == [1], "the client had to connect again"
    bed.daemons[0].mig("kill", "echo")


def test_the_home_cut_off_for_five_seconds_loses_no_console_line(bed: HomeBed) -> None:
    run(bed, "cutoff", TICKER_WITH_INPUT, *PRINTER)
    past(bed, "cutoff", "tick", 5)
    move(bed, "cutoff", "h1")
    before = onward(bed, "cutoff", "tick", 10)[-1]
    bed.bed[0].cut()
    try:
        time.sleep(5)
        there = numbers(bed.host("h1").mig("logs", "cutoff").out)[-1]
        assert there > before + 100, "the app stopped while its home was away"
    finally:
        bed.bed[0].heal()
    seen = past(bed, "cutoff", "tick", there + 10, timeout=30)
    contiguous(seen)
    bed.host("h1").mig("kill", "cutoff")


def test_a_visitor_killed_while_its_home_is_cut_off_sends_its_lines_home_after_its_restart(bed: HomeBed) -> None:
    run(bed, "diary", TICKER_WITH_INPUT, *PRINTER)
    past(bed, "diary", "tick", 5)
    move(bed, "diary", "h1")
    before = onward(bed, "diary", "tick", 5)[-1]
    h1 = bed.host("h1")
    bed.bed[0].cut()
    try:
        there = wait_until(
            lambda: (n := numbers(h1.mig("logs", "diary").out)) and n[-1] > before + 50 and n[-1],
            20,
            what="lines printed on h1 while its home is cut off",
        )
        assert isinstance(there, int)
        h1.kill9()
        h1.restart()
    finally:
        bed.bed[0].heal()
    restarted = "[migrated] the daemon restarted; the lines above are from before"
    log = wait_until(lambda: text if restarted in (text := home_log(bed, "diary")) else "", 30, what="h1's lines")
    before_restart = numbers(log.split(restarted)[0])
    contiguous(before_restart)
    assert before_restart[-1] >= there, f"ticks {before_restart[-1] + 1}-{there} printed on h1 never reached home"
    h1.mig("kill", "diary")


def test_a_stale_copy_is_refused_by_the_home_and_stops(netbeds: Callable[[int], NetBed], tmp_path: Path) -> None:
    """h1's state directory is put back as it was before the app moved on from it to h2: h1 then believes it
    holds the app at the old epoch. Opened there, the home refuses its I/O and the copy stops."""
    bed = HomeBed(netbeds(3), tmp_path)
    run(bed, "stale", TICKER_WITH_INPUT, *PRINTER)
    past(bed, "stale", "tick", 5)
    move(bed, "stale", "h1")
    h1 = bed.host("h1")
    h1.stop()
    backup = tmp_path / "h1-backup"
    shutil.copytree(h1.dir, backup, ignore=shutil.ignore_patterns("*.sock", "stderr.log"))
    h1.restart()  # its journal says it runs the app: it thaws it again
    wait_until(lambda: h1.ps()["stale"]["state"] == "running", 20, what="stale to run on h1 again")
    move(bed, "stale", "h2")
    assert bed.daemons[0].ps()["stale"]["epoch"] == 2
    h1.stop()
    for part in ("apps", "migrations", "checkpoints.sqlite", "checkpoints.sqlite-wal", "checkpoints.sqlite-shm"):
        target, saved = h1.dir / part, backup / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if saved.is_dir():
            shutil.copytree(saved, target)
        elif saved.exists():
            shutil.copy2(saved, target)
    before = len(h1.stderr_log())
    h1.restart()  # it thaws its copy at epoch 1 again, as its journal says; the home refuses it
    wait_until(lambda: "stale" not in h1.ps(), 20, what="the stale copy on h1 to stop")
    assert "the home refused this copy (epoch 1 of 'stale' is stale (now 2)" in h1.stderr_log()[before:]
    home = bed.daemons[0].ps()["stale"]
    assert (home["host"], home["epoch"]) == ("h2", 2)
    running: list[Any] = [app for app in (d.ps().get("stale") for d in bed.daemons) if app]
    assert [app["host"] for app in running if app["state"] == "running"].count("h1") == 0
    contiguous(numbers(home_log(bed, "stale")))


def test_rehome_hands_the_home_over_and_the_files_stay_served_by_the_old_home(bed: HomeBed) -> None:
    h0, h1 = bed.daemons[0], bed.host("h1")
    run(bed, "filer", FILER, "kept.txt")
    past(bed, "filer", "wrote", 5)
    out = h0.mig("rehome", "filer", "h1").out
    assert "filer's home is h1 now (running there); its files: this host" in out, out
    assert "filer" not in h0.ps()
    app = h1.ps()["filer"]
    assert (app["host"], app["home"], app["files_home"], app["state"]) == ("h1", "h1", "h0", "running")
    log = h1.mig("logs", "filer").out
    assert "wrote 1\n" in log and "filer's home moved here" in log, "the console came along"
    h1.mig("send", "filer", "hello")  # input is typed at the new home now
    wait_until(lambda: "got hello" in h1.mig("logs", "filer").out, 10, what="input at the new home")
    wait_until(lambda: numbers((bed.folder / "kept.txt").read_text(), "line")[-1] > 40, 15, what="writes at h0")
    contiguous(numbers((bed.folder / "kept.txt").read_text(), "line"))
    assert h1.ls(bed.folder) == [], "the files are still the old home's"
    # The old home goes away: calls wait, then fail with one clear sentence; the app goes on and recovers.
    bed.bed[0].cut()
    try:
        failed = wait_until(lambda: re.findall(r"^write failed: (.*)$", h1.mig("logs", "filer").out, re.MULTILINE), 20)
    finally:
        bed.bed[0].heal()
    assert "h0, which serves filer's home I/O, has not answered for 3 s" in failed[0], failed
    last = numbers(h1.mig("logs", "filer").out, "wrote")[-1]
    wait_until(lambda: numbers(h1.mig("logs", "filer").out, "wrote")[-1] > last + 5, 30, what="writes again")
    # Back home, with its files served where they are.
    out = h1.mig("rehome", "filer", "h0", "--files", "move").out
    app = h0.ps()["filer"]
    assert (app["host"], app["home"], app["files_home"]) == ("h0", "h0", "h0")
    assert "filer" not in h1.ps()
    h0.mig("kill", "filer")


def test_evacuate_with_rehome_takes_homes_and_files_along(bed: HomeBed) -> None:
    h0, h2 = bed.daemons[0], bed.host("h2")
    run(bed, "mover", FILER, "moved.txt")
    past(bed, "mover", "wrote", 5)
    out = h0.mig("evacuate", "--to", "h2", "--rehome", "--files", "move", timeout=60).out
    assert "moved mover to h2" in out, out
    app = h2.ps()["mover"]
    assert (app["host"], app["home"], app["files_home"]) == ("h2", "h2", "h2")
    assert "mover" not in h0.ps()
    left_at_h0 = numbers((bed.folder / "moved.txt").read_text(), "line")
    wait_until(lambda: "moved.txt" in h2.ls(bed.folder), 10, what="the file on the new home's disk")
    time.sleep(0.5)
    assert numbers((bed.folder / "moved.txt").read_text(), "line") == left_at_h0, "it still wrote at the old home"
    h2.mig("kill", "mover")


def test_lines_past_the_bound_while_the_home_is_away_are_marked_lost(
    netbeds: Callable[[int], NetBed], tmp_path: Path
) -> None:
    bed = HomeBed(netbeds(3), tmp_path)
    h1 = bed.host("h1")
    h1.restart("--no-mdns", "--console-lines", "100")  # it keeps only the newest 100 lines of an app
    run(bed, "bounded", TICKER_WITH_INPUT, *PRINTER)
    past(bed, "bounded", "tick", 5)
    move(bed, "bounded", "h1")
    before = onward(bed, "bounded", "tick", 5)[-1]
    bed.bed[0].cut()
    try:
        wait_until(lambda: numbers(h1.mig("logs", "bounded").out)[0] > before + 10, 20, what="lines dropped")
    finally:
        bed.bed[0].heal()
    seen = past(bed, "bounded", "tick", before + 300, timeout=30)
    log = home_log(bed, "bounded")
    lost = re.findall(r"^\[migrated\] (\d+) console lines were lost: the home was unreachable", log, re.MULTILINE)
    assert len(lost) == 1, log[-2000:]
    gap = [b - a - 1 for a, b in itertools.pairwise(seen) if b != a + 1]
    assert gap == [int(lost[0])], f"the marker says {lost[0]} lines, the numbers skip {gap}"
    assert seen == sorted(set(seen)) and seen[0] == 1, "a line came twice or out of order"


DIALER = """
import migrated
import migrated.net


class Dialer(migrated.App):
    def on_input(self, line):
        self.conn = migrated.net.connect("127.0.0.1", int(line))  # the home's own loopback
        self.conn.send(b"hello from afar\\n")

    def on_data(self, conn, data):
        print(f"reply {data.decode().strip()}")

    def on_close(self, conn):
        print("closed")
"""

# A one-shot server on h0's loopback, which no other host can reach: it answers one line and closes.
SERVER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
line = conn.makefile().readline()
conn.sendall(f"home heard: {line.strip()}\\n".encode())
conn.close()
"""


def test_connect_dials_from_the_home_host(bed: HomeBed) -> None:
    server = bed.bed[0].popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        run(bed, "dialer", DIALER)
        move(bed, "dialer", "h1")
        bed.daemons[0].mig("send", "dialer", port)
        wait_until(lambda: "\nclosed\n" in home_log(bed, "dialer"), 15, what="the reply and the close")
        assert "reply home heard: hello from afar\n" in home_log(bed, "dialer")
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
    bed.host("h1").mig("kill", "dialer")


def test_the_home_shows_how_an_app_ended_away(bed: HomeBed) -> None:
    run(bed, "quitter", TICKER_WITH_INPUT, *PRINTER)
    move(bed, "quitter", "h2")
    bed.daemons[0].mig("send", "quitter", "exit 3")
    home = wait_until(
        lambda: (app := bed.daemons[0].ps()["quitter"])["state"] == "exited" and app, 15, what="exited at home"
    )
    assert (home["host"], home["reason"]) == ("h2", "the app exited with code 3")
    bed.host("h2").mig("rm", "quitter")


SLOW = """
import time

import migrated


class Slow(migrated.App):
    def on_input(self, line):
        time.sleep(0.3)
        print(f"got {line}", flush=True)
"""
RESTORED = """
    def on_restore(self):
        print("restored", flush=True)
"""


def test_input_not_yet_handled_goes_along_with_a_rehome(bed: HomeBed) -> None:
    """The app handles a line in 0.3 s; twelve lines are typed at once, then the rehome starts, and more lines
    while it runs (taken until the home moves on): every line reaches the app once, in order, across the rehome,
    whether the old home or the new one hands it over."""
    h0, h1 = bed.daemons[0], bed.host("h1")
    run(bed, "slow", SLOW + RESTORED)
    for n in range(1, 13):
        h0.mig("send", "slow", str(n))
    sent = 12
    rehome = threading.Thread(target=lambda: h0.mig("rehome", "slow", "h1", timeout=120), daemon=True)
    rehome.start()
    while rehome.is_alive():
        if h0.mig("send", "slow", str(sent + 1), check=None).code != 0:
            break  # the home moved on: input is typed at h1 now
        sent += 1
        time.sleep(0.02)
    rehome.join(60)
    assert not rehome.is_alive()

    def arrived() -> list[int] | None:
        got = numbers(h1.mig("logs", "slow").out, "got")
        return got if got and got[-1] == sent else None

    contiguous(wait_until(arrived, 30, what="every line typed at the old home"))
    # Whether a line is still queued when the app freezes is up to timing (a move's checkpoint goes ahead of the
    # queue now, but a loaded machine may drain the queue before the rehome freezes the app).
    h1.mig("kill", "slow")
