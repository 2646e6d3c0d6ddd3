"""The failure table of a move's hand-off, with real processes killed at exact steps in the namespace test bed.

A daemon started with ``MIGRATED_FAULT_PAUSE=POINT`` logs ``paused at POINT`` when a move reaches that step and
waits there for ever; the test kills it with SIGKILL right there and starts it again without the variable. Links
are cut by pulling a host's cable (``Host.cut``), and a full disk is a small tmpfs under a daemon's state
directory. Every outcome is read back through the real ``mig`` on each daemon: at every look no app runs twice,
and once the fault is over each one runs exactly once, its numbering going on where it stopped (its state was
not lost), its history intact.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import (
    TICKER_WITH_INPUT,
    Background,
    contiguous,
    journal,
    numbers,
    one_sentence,
    pair,
    runner_pids,
    wait_until,
)
from tests.netbed import BedDaemon, NetBed, require_netbed, start_bed

BIG = 64 << 20  # bytes of state that do not compress: a transfer long enough to cut
SMALL = 1 << 16


def copies(daemons: Sequence[BedDaemon], name: str) -> list[str]:
    """The hosts that say they run ``name`` themselves (a dead daemon runs nothing: its runners die with it).
    Never more than one, whenever we look."""
    hosts = []
    for daemon in daemons:
        if daemon.alive():
            app = daemon.ps().get(name)
            if app is not None and app["state"] == "running" and app["host"] == daemon.host.name:
                hosts.append(daemon.host.name)
    assert len(hosts) <= 1, f"{name} runs on {hosts} at once"
    return hosts


def runs_on(daemons: Sequence[BedDaemon], name: str, host: str, timeout: float = 30.0) -> None:
    """Wait until ``name`` runs exactly once, on ``host``; every look in between sees at most one copy."""
    try:
        wait_until(lambda: copies(daemons, name) == [host], timeout, interval=0.1, what=f"{name} to run on {host} only")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump(daemons)}") from None


def ticks(daemon: BedDaemon, name: str) -> list[int]:
    return numbers(daemon.logs(name))


def ticking(daemon: BedDaemon, name: str, past: int = 0, timeout: float = 15.0) -> list[int]:
    """Wait until ``name``'s console on ``daemon`` shows a tick past ``past`` (and past its first); return them."""

    def advanced() -> list[int] | None:
        seen = ticks(daemon, name)
        return seen if seen and seen[-1] > max(past, seen[0]) + 3 else None

    return wait_until(advanced, timeout, what=f"{name} to tick on {daemon.host.name} past {past}")


def still(daemon: BedDaemon, name: str, window: float = 0.5) -> int:
    """The last tick of a frozen app, checked not to move for ``window`` seconds."""
    before = ticks(daemon, name)
    time.sleep(window)  # a frozen app prints nothing: only a while of silence can show it
    after = ticks(daemon, name)
    assert after == before and after, f"{name} is not frozen on {daemon.host.name}: {before[-3:]} -> {after[-3:]}"
    return after[-1]


def versions(daemon: BedDaemon, name: str) -> list[int]:
    return [entry["version"] for entry in daemon.history(name)]


def journal_state(daemon: BedDaemon, role: str) -> str | None:
    entries = journal(daemon.dir, role)
    return str(entries[-1]["state"]) if len(entries) == 1 else None


def rx_bytes(daemon: BedDaemon) -> int:
    """Bytes the host's eth0 received so far."""
    out = daemon.host.run(["ip", "-j", "-s", "link", "show", "eth0"], capture_output=True, text=True).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "ticker.py"
    path.write_text(TICKER_WITH_INPUT.lstrip("\n"))
    return path


def two_hosts(
    netbeds: Callable[[int], NetBed], app_file: Path, faults: dict[str, str] | None = None, size: int = SMALL
) -> tuple[BedDaemon, BedDaemon]:
    """h0 and h1, paired, with the ticker running on h0 for a few ticks."""
    h0, h1 = start_bed(netbeds(2), faults)
    pair(h0, h1)
    h0.mig("run", str(app_file), "--name", "ticker", "--", str(size), timeout=60)
    ticking(h0, "ticker")
    return h0, h1


def failed_move(move: Background, timeout: float = 60.0) -> str:
    """The one sentence a failed ``mig move`` printed."""
    try:
        code = move.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"mig move neither failed nor ended within {timeout} s: {move.out!r}") from None
    assert code != 0, f"mig move succeeded: {move.out}"
    return one_sentence(move.err)


def moved_again(daemon: BedDaemon, name: str, host: str) -> bool:
    """Move ``name`` to ``host``; a refusal must be one sentence and leave it running here."""
    result = daemon.mig("move", name, host, check=None, timeout=60)
    if result.code == 0:
        return True
    assert "goes on running here" in one_sentence(result.err), result.err
    return False


# -- the destination dies


def test_destination_killed_while_staging_the_app_goes_on_at_the_source(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-staging"})
    h0.mig("checkpoint", "ticker")
    history = versions(h0, "ticker")
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-staging")
    # In pre-copy: listed as moving, still running at the source.
    assert copies([h0, h1], "ticker") == [] and h0.ps()["ticker"]["state"] == "moving"
    ticking(h0, "ticker", past=ticks(h0, "ticker")[-1])
    h1.kill9()
    err = failed_move(move)
    assert "goes on running here" in err or "stays here" in err, err
    contiguous(ticking(h0, "ticker", past=ticks(h0, "ticker")[-1]))
    assert copies([h0, h1], "ticker") == ["h0"]
    h1.revive()
    assert copies([h0, h1], "ticker") == ["h0"] and "ticker" not in h1.ps()
    contiguous(ticking(h0, "ticker", past=ticks(h0, "ticker")[-1]))
    assert set(history) <= set(versions(h0, "ticker"))
    # Once the destination is back, the move goes through (once the source's channel to it reconnects).
    wait_until(lambda: moved_again(h0, "ticker", "h1"), 30, interval=0.2, what="a move once h1 is back")
    runs_on([h0, h1], "ticker", "h1")


def test_destination_killed_while_it_stores_the_stream_keeps_what_it_stored_for_the_next_move(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    """The destination stores the incoming chunks a part at a time while they arrive; killed between two parts,
    the app goes on at the source, and the next move sends only what the destination did not store yet."""
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-storing"}, size=BIG)
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-storing")
    h1.kill9()
    err = failed_move(move)
    assert "goes on running here" in err or "stays here" in err, err
    contiguous(ticking(h0, "ticker", past=ticks(h0, "ticker")[-1]))
    h1.revive()
    assert copies([h0, h1], "ticker") == ["h0"] and "ticker" not in h1.ps()
    done: list[str] = []

    def moved() -> bool:
        result = h0.mig("move", "ticker", "h1", check=None, timeout=60)
        assert result.code == 0 or "goes on running here" in one_sentence(result.err), result.err
        done.extend(result.out.splitlines()[-1:] if result.code == 0 else [])
        return bool(done)

    wait_until(moved, 30, interval=0.2, what="a move once h1 is back")
    runs_on([h0, h1], "ticker", "h1")
    sent = re.search(r"sent ([\d.]+) MiB", done[0])
    assert sent is not None and float(sent.group(1)) <= BIG / 2**20 - 8, done[0]  # a part of 8 MiB was kept
    there = ticking(h1, "ticker")
    contiguous(there, there[0])


def test_destination_killed_after_prepare_learns_abort_and_drops_its_copy(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-prepared"})
    h0.mig("checkpoint", "ticker")
    history = versions(h0, "ticker")
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-prepared")
    assert journal_state(h1, "destination") == "prepared"
    assert copies([h0, h1], "ticker") == []  # frozen at the source, waiting for the answer to PREPARE
    last = still(h0, "ticker")
    h0.mig("send", "ticker", "typed while frozen")  # its home keeps the line for whichever copy goes on
    h1.kill9()
    err = failed_move(move)
    assert "goes on running here" in err, err
    seen = ticking(h0, "ticker", past=last)
    contiguous(seen)  # the live copy resumed: not a tick lost or repeated
    wait_until(lambda: "got typed while frozen" in h0.logs("ticker"), 10, what="the line typed during the move")
    assert h0.logs("ticker").count("got typed while frozen") == 1
    assert copies([h0, h1], "ticker") == ["h0"]
    h1.revive()  # it asks h0 about the migration it prepared, and is told: aborted
    wait_until(lambda: journal_state(h1, "destination") == "aborted", 15, what="h1 to learn the move was aborted")
    assert copies([h0, h1], "ticker") == ["h0"] and "ticker" not in h1.ps()
    contiguous(ticking(h0, "ticker", past=seen[-1]))
    assert set(history) <= set(versions(h0, "ticker"))


def test_destination_killed_after_commit_runs_the_app_once_restarted(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-committed"})
    history = versions(h0, "ticker")
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-committed")
    assert journal_state(h0, "source") == "handed_off" and journal_state(h1, "destination") == "committed"
    last = still(h0, "ticker")
    h1.kill9()
    # The source keeps sending COMMIT; meanwhile no copy runs anywhere, and the source's one stays frozen.
    assert copies([h0, h1], "ticker") == []
    assert h0.ps()["ticker"]["state"] == "moving"
    assert still(h0, "ticker") == last
    err = h0.mig("open", "ticker", check=None)
    assert err.code != 0 and "moving" in one_sentence(err.err)
    assert move.running()
    h1.revive()
    assert move.wait(60) == 0, move.err
    assert move.out.splitlines()[-1].startswith("moved ticker to h1 in "), move.out
    runs_on([h0, h1], "ticker", "h1")
    assert h0.ps()["ticker"]["host"] == "h1"
    assert len(runner_pids(h1.pid)) == 1  # the restart's thaw and the repeated COMMIT started one runner
    there = ticking(h1, "ticker")
    assert there[0] == last + 1, (last, there[:3])  # it went on from the frozen version
    contiguous(there, last + 1)
    home = ticking(h0, "ticker", past=there[-1])
    contiguous(home)  # the home's console: every number once, across the move
    assert set(history) <= set(versions(h0, "ticker"))


def test_a_destination_that_hangs_at_the_commit_does_not_hold_mig_move(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    """h1 records COMMIT and then stops answering: mig move gives up waiting after half a minute with one sentence;
    the source goes on asking in the background, and the app runs on h1 once h1 answers again."""
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-committed"})
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-committed")
    h1.kill(signal.SIGSTOP)
    try:
        last = still(h0, "ticker")
        assert move.wait(45) != 0
        assert "does not confirm taking 'ticker'" in one_sentence(move.err), move.err
        assert h0.ps()["ticker"]["state"] == "moving" and copies([h0], "ticker") == []
    finally:
        h1.kill(signal.SIGCONT)
    runs_on([h0, h1], "ticker", "h1", timeout=30)
    wait_until(lambda: journal_state(h0, "source") == "done", 30, what="h1 to acknowledge the commit")
    assert ticking(h1, "ticker")[0] == last + 1


# -- the source dies


@pytest.mark.parametrize("point", ["source-frozen", "source-before-prepare", "source-prepared"])
def test_source_killed_before_hand_off_resumes_the_app_there(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background], point: str
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h0": point})
    move = background(h0, "move", "ticker", "h1")
    h0.paused(point)
    assert journal_state(h0, "source") == "frozen"
    if point == "source-prepared":
        assert journal_state(h1, "destination") == "prepared"
    assert copies([h0, h1], "ticker") == []
    last = still(h0, "ticker")
    history = versions(h0, "ticker")
    h0.kill9()
    assert move.wait(30) != 0
    one_sentence(move.err)
    assert copies([h0, h1], "ticker") == []
    h0.revive()  # no HANDED_OFF on record: abort, tell h1, and go on from the frozen version
    runs_on([h0, h1], "ticker", "h0")
    seen = ticking(h0, "ticker", past=last)
    contiguous(seen)  # the console kept what came before the kill; the app went on from the frozen version
    assert set(history) <= set(versions(h0, "ticker"))
    wait_until(lambda: journal_state(h1, "destination") == "aborted", 15, what="h1 to drop what it prepared")
    assert "ticker" not in h1.ps()
    assert copies([h0, h1], "ticker") == ["h0"]


def test_source_killed_after_hand_off_the_app_runs_at_the_destination(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h0": "source-handed-off"})
    move = background(h0, "move", "ticker", "h1")
    h0.paused("source-handed-off")
    assert journal_state(h0, "source") == "handed_off" and journal_state(h1, "destination") == "prepared"
    last = still(h0, "ticker")
    history = versions(h0, "ticker")
    h0.kill9()
    assert move.wait(30) != 0
    one_sentence(move.err)
    assert copies([h0, h1], "ticker") == []  # h1 waits for COMMIT; it never runs an app without it
    h0.revive()  # HANDED_OFF on record: it sends COMMIT again, never runs the app itself
    runs_on([h0, h1], "ticker", "h1")
    assert h0.ps()["ticker"]["host"] == "h1"
    there = ticking(h1, "ticker")
    assert there[0] == last + 1, (last, there[:3])
    contiguous(there, last + 1)
    assert set(history) <= set(versions(h0, "ticker"))


@pytest.mark.parametrize(("point", "lands"), [("source-frozen", "h0"), ("source-handed-off", "h1")])
def test_a_runner_killed_during_a_move_is_not_brought_back_beside_it(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background], point: str, lands: str
) -> None:
    """Found by the soak: crash recovery brought an app back at the source while its move went on."""
    h0, h1 = two_hosts(netbeds, app_file, {"h0": point})
    move = background(h0, "move", "ticker", "h1")
    h0.paused(point)
    last = still(h0, "ticker")
    for pid in runner_pids(h0.pid):
        os.kill(pid, signal.SIGKILL)
    time.sleep(3)  # crash recovery would start a runner within 0.5 s: none may come while the move decides
    assert runner_pids(h0.pid) == set() and copies([h0, h1], "ticker") == []
    assert h0.ps()["ticker"]["state"] == "moving"
    h0.kill9()
    assert move.wait(30) != 0
    h0.revive()  # the journal decides: before HANDED_OFF the app goes on here, after it there
    runs_on([h0, h1], "ticker", lands)
    seen = ticking(h0 if lands == "h0" else h1, "ticker", past=last)
    contiguous([tick for tick in seen if tick > last], last + 1)


def test_a_runner_killed_during_a_move_that_fails_is_brought_back_once(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-staging"})
    h0.mig("checkpoint", "ticker")
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-staging")
    for pid in runner_pids(h0.pid):
        os.kill(pid, signal.SIGKILL)
    time.sleep(1.5)
    assert runner_pids(h0.pid) == set()  # held back while the move runs
    h1.kill9()
    failed_move(move)
    runs_on([h0, h1], "ticker", "h0")  # the move failed: crash recovery brings it back here, once
    assert "ticker is back from version" in h0.mig("logs", "ticker").out
    ticking(h0, "ticker", past=ticks(h0, "ticker")[-1])
    h1.revive()
    assert copies([h0, h1], "ticker") == ["h0"] and len(runner_pids(h0.pid)) == 1


def test_a_visitor_opened_again_on_its_host_sends_its_lines_home(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    """Found by the soak: a visitor whose move on failed, brought back by mig open after a restart of the host it
    visits, ran there, but none of its lines reached its home."""
    h0, h1, h2 = start_bed(netbeds(3), {"h2": "destination-staging"})
    for shows, types in ((h0, h1), (h0, h2), (h1, h2)):
        pair(shows, types)
    h1.mig("run", str(app_file), "--name", "ticker", timeout=60)  # its home is h1
    ticking(h1, "ticker")
    h1.mig("move", "ticker", "h0", timeout=60)
    runs_on([h0, h1, h2], "ticker", "h0")
    move = background(h0, "move", "ticker", "h2")
    h2.paused("destination-staging")
    h2.kill9()
    failed_move(move)  # the visitor stays on h0
    h0.kill9()
    h0.revive()  # the move away from here is on record: the arrival is not run again; listed closed
    wait_until(lambda: h0.ps()["ticker"]["state"] == "closed", 15, what="h0 to list the visitor closed")
    h0.mig("open", "ticker")
    runs_on([h0, h1], "ticker", "h0")
    ticking(h1, "ticker", past=ticks(h1, "ticker")[-1])  # its lines reach home again


def test_a_home_killed_after_it_kept_lines_it_had_not_acknowledged_applies_none_twice(
    netbeds: Callable[[int], NetBed], app_file: Path
) -> None:
    """Found by the soak: a home killed between keeping a batch of an away app's lines and saying so got the
    batch again from the app's host, and kept it twice."""
    h0, h1 = start_bed(netbeds(2), {"h0": "home-console-applied"})
    pair(h0, h1)
    h0.mig("run", str(app_file), "--name", "ticker", timeout=60)
    ticking(h0, "ticker")
    h0.mig("move", "ticker", "h1", timeout=60)
    h0.paused("home-console-applied")  # a batch of lines from h1 is kept; its acknowledgement is not sent
    h0.kill9()
    h0.revive()
    seen = ticking(h0, "ticker", past=ticks(h0, "ticker")[-1], timeout=30)
    contiguous(seen)  # every tick at home once, in order, across the restart
    notes = re.findall(r"^\[migrated\] .*$", h0.mig("logs", "ticker").out, re.MULTILINE)
    assert len(notes) == len(set(notes)), notes  # nor any other line: the paused batch held h1's first notes


def test_a_source_restarted_after_hand_off_never_runs_the_app_itself(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h0": "source-handed-off"})
    move = background(h0, "move", "ticker", "h1")
    h0.paused("source-handed-off")
    last = still(h0, "ticker")
    h0.kill9()
    move.wait(30)
    h1.host.cut()  # the destination cannot be told to commit yet
    try:
        h0.revive()
        assert copies([h0, h1], "ticker") == []
        app = h0.ps()["ticker"]
        assert app["state"] == "moving" or (app["state"], app["host"]) == ("running", "h1"), app  # never closed
        opened = h0.mig("open", "ticker", check=None)
        assert copies([h0, h1], "ticker") == []
        assert opened.code != 0, f"mig open ran a handed-off app at the source: {opened.out}"
        one_sentence(opened.err)
    finally:
        h1.host.heal()
    runs_on([h0, h1], "ticker", "h1")
    assert ticking(h1, "ticker")[0] == last + 1


def test_source_killed_while_the_destination_thaws_the_app_runs_there(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "destination-committed"})
    move = background(h0, "move", "ticker", "h1")
    h1.paused("destination-committed")  # COMMITTED recorded, the thaw next
    last = still(h0, "ticker")
    h0.kill9()  # the source dies in the middle of its COMMIT call
    assert move.wait(30) != 0
    h0.revive()  # HANDED_OFF on record: it sends COMMIT again until h1 acknowledges it
    wait_until(lambda: journal_state(h0, "source") == "done", 30, what="h1 to acknowledge the commit")
    assert h0.ps()["ticker"]["host"] == "h1"
    runs_on([h0, h1], "ticker", "h1", timeout=10)
    assert ticking(h1, "ticker")[0] == last + 1


def test_source_killed_after_the_commit_lists_the_app_away_once_restarted(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    """The home takes the epoch of the copy that runs at the destination as soon as that copy calls; a source killed
    before it retires its own copy must still finish the hand-off when it restarts, not list the app as closed."""
    h0, h1 = two_hosts(netbeds, app_file, {"h0": "source-committed"})
    move = background(h0, "move", "ticker", "h1")
    h0.paused("source-committed")
    wait_until(lambda: h0.ps()["ticker"]["host"] == "h1", 15, what="h1's copy to call its home")
    h0.kill9()
    assert move.wait(30) != 0
    h0.revive()
    app = h0.ps()["ticker"]
    assert (app["state"], app["host"], app["epoch"]) == ("running", "h1", 1), app
    assert journal_state(h0, "source") == "done"
    opened = h0.mig("open", "ticker", check=None)
    assert opened.code != 0, f"mig open ran at the source an app that runs on h1: {opened.out}"
    one_sentence(opened.err)
    runs_on([h0, h1], "ticker", "h1")
    seen = ticking(h0, "ticker", past=ticks(h0, "ticker")[-1])  # the copy on h1 still prints at home
    contiguous(seen, seen[0])


def test_a_restarted_daemon_does_not_run_again_an_app_that_moved_on(
    netbeds: Callable[[int], NetBed], app_file: Path
) -> None:
    h0, h1 = two_hosts(netbeds, app_file)
    h0.mig("move", "ticker", "h1")
    h1.mig("move", "ticker", "h0")  # h1's journal keeps the committed arrival
    runs_on([h0, h1], "ticker", "h0")
    h1.kill9()
    h1.revive()
    assert copies([h0, h1], "ticker") == ["h0"] and "ticker" not in h1.ps()
    h1.restart()  # a clean restart too
    assert copies([h0, h1], "ticker") == ["h0"] and "ticker" not in h1.ps()
    contiguous(ticking(h0, "ticker", past=ticks(h0, "ticker")[-1]))


def test_a_source_restarted_after_hand_off_does_not_thaw_an_older_arrival(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, {"h1": "source-handed-off"})
    h0.mig("move", "ticker", "h1")  # h1's journal: a committed arrival of the ticker
    runs_on([h0, h1], "ticker", "h1")
    move = background(h1, "move", "ticker", "h0")
    h1.paused("source-handed-off")  # and now it hands the ticker back: HANDED_OFF on record
    last = still(h1, "ticker")
    h1.kill9()
    move.wait(30)
    h0.host.cut()  # h0 cannot be told to commit yet
    try:
        h1.revive()
        assert copies([h0, h1], "ticker") == [], "h1 runs the ticker it handed off"
    finally:
        h0.host.heal()
    runs_on([h0, h1], "ticker", "h0")
    contiguous(ticking(h0, "ticker", past=last))


def test_a_visitor_moving_on_does_not_wait_for_its_console(netbeds: Callable[[int], NetBed], app_file: Path) -> None:
    h0, h1, h2 = start_bed(netbeds(3))
    for shows, types in ((h0, h1), (h0, h2), (h1, h2)):
        pair(shows, types)
    h0.mig("run", str(app_file), "--name", "ticker", timeout=60)
    ticking(h0, "ticker")
    h0.mig("move", "ticker", "h1")
    ticking(h0, "ticker", past=ticks(h1, "ticker")[0] + 10)  # it runs on h1, its lines reach h0
    started = time.monotonic()
    h1.mig("move", "ticker", "h2")
    took = time.monotonic() - started
    runs_on([h0, h1, h2], "ticker", "h2")
    contiguous(ticking(h0, "ticker", past=ticks(h2, "ticker")[0] + 10))  # every line at home, once
    assert took < 5, f"moving a visitor on took {took:.1f} s"
    assert "refused this copy" not in h1.stderr_log()


def test_a_host_handing_a_visitor_on_never_lists_it_as_closed(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file)
    h0.mig("move", "ticker", "h1")  # a visitor on h1 now
    runs_on([h0, h1], "ticker", "h1")
    home = background(h1, "move", "ticker", "h0")
    runs_on([h0, h1], "ticker", "h0")  # it arrived; h1 is still retiring its copy
    try:
        state = h1.ps().get("ticker", {}).get("state")
        opened = h1.mig("open", "ticker", check=None)
        two = copies([h0, h1], "ticker")
    finally:
        home.wait(60)
    assert opened.code != 0, f"h1 listed the ticker as {state} and mig open ran it again: {opened.out}"
    assert two == ["h0"]


# -- the link


def cut_mid_transfer(h0: BedDaemon, h1: BedDaemon, background: Callable[..., Background], *flags: str) -> Background:
    """Start moving the ticker to h1 and pull h1's cable once a quarter of its state arrived there."""
    start = rx_bytes(h1)
    move = background(h0, "move", "ticker", "h1", *flags)
    wait_until(lambda: rx_bytes(h1) - start > BIG // 4, 30, interval=0.02, what="a quarter of the state to arrive")
    h1.host.cut()
    return move


def test_link_cut_during_pre_copy_the_app_goes_on_and_runs_once_healed(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, size=BIG)
    move = cut_mid_transfer(h0, h1, background)
    try:
        assert copies([h0, h1], "ticker") == [] and h0.ps()["ticker"]["state"] == "moving"  # in pre-copy
        seen = ticking(h0, "ticker", past=ticks(h0, "ticker")[-1] + 25)  # it runs on while the link is down
        contiguous(seen)
        assert copies([h0, h1], "ticker") == []
    finally:
        h1.host.heal()
    # Healed, the transfer either goes on or fails; either way the app then runs exactly once.
    if move.wait(60) == 0:
        runs_on([h0, h1], "ticker", "h1")
    else:
        assert "goes on running here" in one_sentence(move.err), move.err
        runs_on([h0, h1], "ticker", "h0")
    contiguous(ticking(h0, "ticker", past=seen[-1]))  # at home, across it all


def test_link_cut_while_the_app_is_frozen_fails_the_move_in_bounded_time(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    h0, h1 = two_hosts(netbeds, app_file, size=BIG)
    move = cut_mid_transfer(h0, h1, background, "--stop-and-copy")  # frozen for the whole transfer
    try:
        assert copies([h0, h1], "ticker") == []
        last = ticks(h0, "ticker")[-1]
        # The move must give up, and the app go on at the source, within seconds, not when the link heals.
        assert "goes on running here" in failed_move(move, timeout=25)
        contiguous(ticking(h0, "ticker", past=last))
    finally:
        h1.host.heal()
    runs_on([h0, h1], "ticker", "h0")


def test_link_cut_after_the_move_the_home_gets_every_line_once_healed(
    netbeds: Callable[[int], NetBed], app_file: Path
) -> None:
    h0, h1 = two_hosts(netbeds, app_file)
    out = h0.mig("move", "ticker", "h1").out
    assert out.splitlines()[-1].startswith("moved ticker to h1 in "), out
    runs_on([h0, h1], "ticker", "h1")
    ticking(h0, "ticker", past=ticks(h1, "ticker")[0])  # the console flows home
    h1.host.cut()
    try:
        cut_at = ticks(h1, "ticker")[-1]
        there = ticking(h1, "ticker", past=cut_at + 25)  # it goes on while cut off from home
        assert copies([h0, h1], "ticker") == ["h1"]
        assert h0.ps()["ticker"]["host"] == "h1"
    finally:
        h1.host.heal()
    home = ticking(h0, "ticker", past=there[-1], timeout=30)
    contiguous(home)  # nothing lost, nothing repeated at home
    assert copies([h0, h1], "ticker") == ["h1"]


# -- the disk


@contextlib.contextmanager
def own_bed(n: int) -> Iterator[NetBed]:
    """A bed outside the ``netbeds`` fixture, for a test that checks the daemons' logs for tracebacks itself."""
    require_netbed()
    bed = NetBed(n)
    try:
        yield bed
    finally:
        problems = bed.close()
    assert not problems, "; ".join(problems)


def no_traceback(daemon: BedDaemon) -> None:
    traceback = daemon.traceback(1500)
    assert not traceback, f"{daemon.host.name} logged a traceback:\n{traceback}"


def test_a_destination_disk_too_small_is_refused_before_the_freeze(
    tmpfs: Callable[[str], Path], netbeds: Callable[[int], NetBed], app_file: Path
) -> None:
    h0, h1 = start_bed(netbeds(2), dirs={"h1": tmpfs("size=40m")})
    pair(h0, h1)
    h0.mig("run", str(app_file), "--name", "ticker", "--", str(BIG), timeout=60)
    ticking(h0, "ticker")
    result = h0.mig("move", "ticker", "h1", check=None, timeout=60)
    assert result.code != 0 and "MiB free" in one_sentence(result.err), result.err
    assert "stays here" in result.err and "freeze" not in result.out, result
    assert copies([h0, h1], "ticker") == ["h0"]
    contiguous(ticking(h0, "ticker", past=ticks(h0, "ticker")[-1]))
    assert "ticker" not in h1.ps()


def test_a_destination_disk_that_fills_during_the_transfer_fails_the_move_cleanly(
    tmpfs: Callable[[str], Path], app_file: Path, background: Callable[..., Background]
) -> None:
    disk = tmpfs("size=200m")
    with own_bed(2) as bed:
        h0, h1 = start_bed(bed, dirs={"h1": disk})
        pair(h0, h1)
        h0.mig("run", str(app_file), "--name", "ticker", "--", str(BIG), timeout=60)
        ticking(h0, "ticker")
        # Room enough when the move begins (the preflight passes); another program fills the disk meanwhile.
        start = rx_bytes(h1)
        move = background(h0, "move", "ticker", "h1")
        wait_until(lambda: rx_bytes(h1) - start > BIG // 4, 30, interval=0.02, what="a quarter of the state to arrive")
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fill:
            while True:  # until ENOSPC
                fill.write(bytes(1 << 20))
        err = failed_move(move)
        assert "goes on running here" in err, err
        assert copies([h0, h1], "ticker") == ["h0"]
        contiguous(ticking(h0, "ticker", past=ticks(h0, "ticker")[-1]))
        # Room again: the move goes through (what was stored before the disk filled is kept, not sent again).
        filler.unlink()
        out = h0.mig("move", "ticker", "h1", timeout=60).out
        assert out.splitlines()[-1].startswith("moved ticker to h1 in "), out
        runs_on([h0, h1], "ticker", "h1")
        # A full disk is an expected error: no traceback on the destination, one sentence that gives the cause.
        no_traceback(h1)
        assert "full" in err and "cannot rollback" not in err, err


def test_a_destination_disk_the_preflight_accepts_can_hold_the_app(
    tmpfs: Callable[[str], Path], netbeds: Callable[[int], NetBed], app_file: Path
) -> None:
    # 169 MiB free for 64 MiB of state: the staged chunks pass through SQLite's WAL, so storing them takes about
    # 2.3 times their size for a while. Either the preflight says no, or the move goes through.
    h0, h1 = start_bed(netbeds(2), dirs={"h1": tmpfs("size=170m")})
    pair(h0, h1)
    h0.mig("run", str(app_file), "--name", "ticker", "--", str(BIG), timeout=60)
    ticking(h0, "ticker")
    result = h0.mig("move", "ticker", "h1", check=None, timeout=60)
    if result.code != 0:
        assert "MiB free" in one_sentence(result.err) and "freeze" not in result.out, result
    runs_on([h0, h1], "ticker", "h1" if result.code == 0 else "h0")


# -- moves refused


def test_moves_that_cannot_be_done_are_one_sentence_and_the_app_goes_on(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    bed = netbeds(3)
    h0, h1, h2 = start_bed(bed, args={"h0": ("--peer", f"{bed[2].addr}:7464")})  # h0 knows h2, unpaired
    pair(h0, h1)
    h0.mig("run", str(app_file), "--name", "ticker", "--", str(BIG), timeout=60)
    ticking(h0, "ticker")
    wait_until(lambda: known(h0, "h2"), 15, what="h0 to probe h2")
    cases = [
        (("move", "ticker", "h0"), "runs on h0 already"),
        (("move", "ticker", h0.address), "runs on"),
        (("move", "ticker", "h2"), "h2 is not paired with this host"),
        (("move", "ticker", h2.address), "h2 is not paired with this host"),
        (("move", "ticker", "nowhere"), "no peer called 'nowhere'"),
        (("move", "nothing", "h1"), "no app is called 'nothing'"),
    ]
    for args, text in cases:
        result = h0.mig(*args, check=None)
        assert result.code != 0 and text in one_sentence(result.err), (args, result.err)
    assert copies([h0, h1, h2], "ticker") == ["h0"]
    # A second move while the first is under way.
    first = background(h0, "move", "ticker", "h1")
    wait_until(lambda: "pre-copy..." in first.out, 30, interval=0.02, what="the first move's pre-copy")
    for host in ("h1", "h2"):
        result = h0.mig("move", "ticker", host, check=None)
        assert result.code != 0 and "is moving" in one_sentence(result.err), result.err
    assert first.wait(60) == 0, first.err
    runs_on([h0, h1, h2], "ticker", "h1")
    # Only the host that runs it can move it.
    result = h0.mig("move", "ticker", "h1", check=None)
    assert result.code != 0 and "runs on h1" in one_sentence(result.err), result.err
    contiguous(ticking(h0, "ticker", past=ticks(h1, "ticker")[-1]))


def known(daemon: BedDaemon, name: str) -> bool:
    return bool(daemon.peers().get(name, {}).get("reachable"))


# -- many moves, random kills


def test_random_moves_and_kills_never_lose_or_double_an_app(
    netbeds: Callable[[int], NetBed], app_file: Path, background: Callable[..., Background]
) -> None:
    """Three hosts, three apps, random moves with a kill -9 of a random daemon at a random moment of some of them;
    then every daemon killed and restarted. At every look no app runs twice; at the end each runs exactly once."""
    seed = int(os.environ.get("MOVE_FAULTS_SEED", time.time_ns() % 10**6))
    print(f"seed {seed} (MOVE_FAULTS_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    daemons = start_bed(netbeds(3))
    by_name = {daemon.host.name: daemon for daemon in daemons}
    for shows, types in ((daemons[0], daemons[1]), (daemons[0], daemons[2]), (daemons[1], daemons[2])):
        pair(shows, types)
    apps = ["a0", "a1", "a2"]
    for name, daemon in zip(apps, daemons, strict=True):
        daemon.mig("run", str(app_file), "--name", name, timeout=60)
        daemon.mig("checkpoint", name)  # a kill -9 of its host now loses nothing it cannot come back from
    began = time.monotonic()
    what = "the start"
    try:
        for round_ in range(1, 16):
            if time.monotonic() - began > 35:
                break
            name = rng.choice(apps)
            (where,) = copies(daemons, name)
            source = by_name[where]
            target = rng.choice([daemon for daemon in daemons if daemon is not source])
            what = f"round {round_}: {name} {source.host.name} -> {target.host.name}"
            started = time.monotonic()
            move = background(source, "move", name, target.host.name)
            if rng.random() < 0.6:
                delay = rng.uniform(0.0, 0.6)
                time.sleep(delay)  # not for correctness: to kill at a random step of the move (or after it)
                victim = rng.choice(daemons)
                what += f", kill -9 of {victim.host.name} after {delay:.2f} s"
                victim.kill9()
                for app in apps:
                    copies(daemons, app)
                victim.revive()
            try:
                code = move.wait(60)
            except subprocess.TimeoutExpired:
                for daemon in daemons:
                    if daemon.alive():
                        daemon.kill(signal.SIGUSR1)  # each logs where its tasks wait
                time.sleep(1)
                raise AssertionError("mig move did not end in 60 s") from None
            print(f"{what}: mig move exited {code} after {time.monotonic() - started:.1f} s", flush=True)
            settle(daemons, apps)
        what = "every daemon killed and restarted"
        print(what)
        for daemon in daemons:
            daemon.kill9()
            for app in apps:
                copies(daemons, app)
            daemon.revive()
        settle(daemons, apps)
    except AssertionError as exc:
        diagnosis = diagnose(daemons) or "no known pattern"
        logs = "\n".join(f"{d.host.name} logged:\n{d.log_tail(12000)}" for d in daemons)
        raise AssertionError(f"after {what}: {exc}\n{diagnosis}\n{dump(daemons)}\n{logs}") from None
    for name in apps:
        assert len(copies(daemons, name)) == 1


def settle(daemons: Sequence[BedDaemon], apps: Sequence[str]) -> None:
    """Wait until no move is under way or undecided; open the apps a killed daemon left closed (as their user
    would); then every app runs exactly once."""

    def calm() -> bool:
        moving = any(app["state"] == "moving" for daemon in daemons for app in daemon.ps().values())
        # A restarted source keeps sending COMMIT for what it handed off: wait until it is acknowledged.
        undecided = any(entry["state"] == "handed_off" for daemon in daemons for entry in journal(daemon.dir, "source"))
        return not moving and not undecided

    wait_until(calm, 40, interval=0.1, what="every move to end")
    for daemon in daemons:
        for name, app in daemon.ps().items():
            if app["state"] == "closed" and app["host"] == daemon.host.name:
                if handed_off(daemon, name, app["epoch"]):
                    raise AssertionError(f"{daemon.host.name} lists {name} as closed, to be opened, but handed it off")
                daemon.mig("open", name)
    for name in apps:
        wait_until(functools.partial(runs_once, daemons, name), 30, interval=0.1, what=f"{name} to run once")
    for daemon in daemons:
        wait_until(functools.partial(no_hidden_runner, daemon), 10, what=f"a runner per app on {daemon.host.name}")


def no_hidden_runner(daemon: BedDaemon) -> bool:
    """Whether the daemon has one runner process per app it lists as running (none unlisted)."""
    listed = [app for app in daemon.ps().values() if app["state"] == "running" and app["host"] == daemon.host.name]
    return len(runner_pids(daemon.pid)) == len(listed)


def runs_once(daemons: Sequence[BedDaemon], name: str) -> bool:
    return len(copies(daemons, name)) == 1


def handed_off(daemon: BedDaemon, name: str, epoch: int) -> bool:
    """Whether ``daemon``'s journal says it handed ``name`` off at ``epoch`` or above: then it must not list it as
    its own (an app it runs at epoch N came back after every hand-off of it from here, all below N)."""
    return any(
        entry["app"] == name and entry["state"] in ("handed_off", "done") and entry["epoch"] >= epoch
        for entry in journal(daemon.dir, "source")
    )


def diagnose(daemons: Sequence[BedDaemon]) -> str:
    """Which bug of the hand-off (each shown alone by a test above) the daemons' state points at, if any."""
    listed = {daemon.host.name: daemon.ps() for daemon in daemons if daemon.alive()}
    for daemon in daemons:
        apps = listed.get(daemon.host.name, {})
        for name, app in apps.items():
            mine = app["host"] == daemon.host.name
            if mine and handed_off(daemon, name, app["epoch"]):
                if app["state"] == "closed":
                    return (
                        f"{daemon.host.name} lists {name} as closed, to be opened, though it handed it off "
                        "(test_a_source_restarted_after_hand_off_never_runs_the_app_itself, "
                        "test_a_host_handing_a_visitor_on_never_lists_it_as_closed)"
                    )
                return (
                    f"{daemon.host.name} runs {name} at epoch {app['epoch']}, after handing it off "
                    "(test_a_source_restarted_after_hand_off_does_not_thaw_an_older_arrival)"
                )
        for entry in journal(daemon.dir, "destination"):
            arrived = apps.get(entry["app"])
            if entry["state"] != "committed" or entry.get("left"):
                continue
            if arrived is None or arrived["state"] == "starting":
                elsewhere = [
                    host
                    for host, rows in listed.items()
                    if rows.get(entry["app"], {}).get("epoch", -1) > entry["epoch"]
                ]
                if not elsewhere:
                    return (
                        f"{daemon.host.name} committed {entry['app']} but does not run it "
                        "(test_source_killed_while_the_destination_thaws_the_app_runs_there)"
                    )
    return ""


def dump(daemons: Sequence[BedDaemon]) -> str:
    """What each daemon says of its apps and migrations, for a failure message."""
    lines = []
    for daemon in daemons:
        if not daemon.alive():
            lines.append(f"{daemon.host.name}: its daemon is not running")
            continue
        for app in daemon.ps().values():
            lines.append(
                f"{daemon.host.name}: {app['name']} {app['state']} host={app['host']} home={app['home']} "
                f"epoch={app['epoch']} version={app['version']} reason={app['reason']}"
            )
        for entry in journal(daemon.dir, "source") + journal(daemon.dir, "destination"):
            lines.append(f"{daemon.host.name}: {entry['role']} {entry['id'][:8]} {entry['app']} {entry['state']}")
    return "\n".join(lines)
