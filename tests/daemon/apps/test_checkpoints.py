"""Checkpoints through the command line: checkpoint, history, close, open, restore, across daemon restarts."""

from __future__ import annotations

import datetime as dt
import re

from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import (
    CHURNING_TICKER,
    MIG,
    TICKER_WITH_INPUT,
    UNSAVEABLE,
    mig_env,
    numbers,
    one_sentence,
    wait_until,
)

RESTORE_HOOKS_APP = """
import sqlite3
import migrated

class Notes(migrated.App):
    transient = ("db",)

    def start(self):
        self.notes = []
        self.db = sqlite3.connect(":memory:")
        self.restored = 0

    def on_input(self, line):
        self.notes.append(line)
        print(f"notes={self.notes} restored={self.restored} db={self.db is not None}")

    def on_restore(self):
        self.restored += 1
        self.db = sqlite3.connect(":memory:")
"""


def last_n(daemon: Daemon, name: str) -> int:
    """The last counter value the app printed."""
    values = numbers(daemon.logs(name))
    assert values, f"{name} printed no counter line"
    return int(values[-1])


def numbers_after(daemon: Daemon, name: str, marker: str) -> list[int]:
    """Counter values printed after the daemon's ``marker`` note."""
    logs = daemon.logs(name)
    assert marker in logs, logs
    return numbers(logs[logs.rindex(marker) :])


def start_counter(daemon: Daemon, app_dir: AppDir, name: str) -> None:
    daemon.mig("run", str(app_dir.write(f"{name}.py", TICKER_WITH_INPUT)), "--name", name)
    wait_until(lambda: "tick 3" in daemon.logs(name), 10, what=f"{name} to count")


def test_checkpoint_adds_a_version_and_history_lists_it(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "hist")
    out = shared_daemon.mig("checkpoint", "hist", "-m", "before tuning").out
    assert re.match(r"hist: version 1 \(.* added, .* in all\); paused [\d.]+ ms", out), out
    shared_daemon.mig("checkpoint", "hist")
    versions = shared_daemon.history("hist")
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["parent"] for v in versions] == [None, 1]
    assert [v["kind"] for v in versions] == ["manual", "manual"]
    assert versions[0]["message"] == "before tuning"
    for version in versions:
        assert dt.datetime.fromisoformat(str(version["created"])).tzinfo is not None
        assert int(version["total_bytes"]) > 0
    assert int(versions[0]["bytes_added"]) > 0
    assert shared_daemon.app("hist")["version"] == 2
    assert shared_daemon.app("hist")["state"] == "running"
    table = shared_daemon.mig("history", "hist").out
    assert "before tuning" in table and "manual" in table


def test_close_then_open_goes_on_where_it_left_off(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "cont")
    out = shared_daemon.mig("close", "cont").out
    assert "closed cont at version 1" in out
    entry = shared_daemon.app("cont")
    assert entry["state"] == "closed" and entry["pid"] is None and entry["version"] == 1
    at_close = last_n(shared_daemon, "cont")
    assert shared_daemon.history("cont")[-1]["kind"] == "close"
    shared_daemon.mig("open", "cont")
    assert shared_daemon.app("cont")["state"] == "running"
    wait_until(lambda: len(numbers_after(shared_daemon, "cont", "cont closed")) >= 3, 10, what="counting again")
    after = numbers_after(shared_daemon, "cont", "cont closed")
    assert after[:3] == [at_close + 1, at_close + 2, at_close + 3]


def test_a_closed_app_survives_a_daemon_restart(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    start_counter(daemon, app_dir, "durable")
    daemon.mig("close", "durable")
    at_close = last_n(daemon, "durable")
    assert daemon.stop() == []
    again = daemons.start(state_dir=daemon.dir)
    entry = again.app("durable")
    assert entry["state"] == "closed" and entry["version"] == 1
    assert numbers(again.logs("durable"))[-1] == at_close  # the console kept what was printed before
    again.mig("open", "durable")
    wait_until(lambda: numbers(since_restart(again.logs("durable"))), 10, what="counting after the restart")
    assert numbers(since_restart(again.logs("durable")))[0] == at_close + 1


RESTARTED = "[migrated] the daemon restarted; the lines above are from before\n"


def since_restart(logs: str) -> str:
    """What a console shows after the note of the daemon's restart."""
    assert RESTARTED in logs, logs
    return logs.split(RESTARTED, 1)[1]


def test_daemon_shutdown_closes_running_apps_and_loses_nothing(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    start_counter(daemon, app_dir, "shut")
    assert daemon.stop() == []
    again = daemons.start(state_dir=daemon.dir)
    entry = again.app("shut")
    assert entry["state"] == "closed"
    assert again.history("shut")[-1]["kind"] == "close"
    again.mig("open", "shut")
    wait_until(lambda: numbers(since_restart(again.logs("shut"))), 10, what="counting after the restart")
    first = numbers(since_restart(again.logs("shut")))[0]
    assert first > 3  # it went on from its saved count, not from the start


def test_restore_goes_back_as_a_new_version_and_keeps_history(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "back")
    shared_daemon.mig("send", "back", "set 1000")
    wait_until(lambda: last_n(shared_daemon, "back") > 1000, 10, what="the counter past 1000")
    shared_daemon.mig("checkpoint", "back", "-m", "at 1000")
    shared_daemon.mig("send", "back", "set 5000")
    wait_until(lambda: last_n(shared_daemon, "back") > 5000, 10, what="the counter past 5000")
    out = shared_daemon.mig("restore", "back", "1").out
    assert "restored version 1 as version 3" in out
    marker = "back restored version 1 as version 3"
    wait_until(lambda: len(numbers_after(shared_daemon, "back", marker)) >= 2, 10, what="counting after restore")
    resumed = numbers_after(shared_daemon, "back", marker)
    assert 1000 < resumed[0] < 5000
    versions = shared_daemon.history("back")
    assert [(v["version"], v["kind"], v["parent"]) for v in versions] == [
        (1, "manual", None),
        (2, "manual", 1),
        (3, "restore", 1),
    ]
    assert versions[1]["message"] == "before restore to version 1"  # the state it left is kept


def test_transient_attributes_are_reopened_in_on_restore(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("hooks.py", RESTORE_HOOKS_APP)))
    shared_daemon.mig("send", "hooks", "a")
    shared_daemon.wait_logs("hooks", "notes=['a'] restored=0 db=True")
    shared_daemon.mig("close", "hooks")
    shared_daemon.mig("open", "hooks")
    shared_daemon.mig("send", "hooks", "b")
    shared_daemon.wait_logs("hooks", "notes=['a', 'b'] restored=1 db=True")


def test_unsaveable_state_is_named_and_the_app_keeps_running(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("chat.py", UNSAVEABLE)))
    code, out, err = shared_daemon.mig("checkpoint", "chat", check=None)
    assert code != 0 and out == ""
    one_sentence(err)
    assert "self.db" in err and "sqlite3.Connection" in err and "transient" in err and "on_restore" in err
    code, _, err = shared_daemon.mig("close", "chat", check=None)
    assert code != 0 and "self.db" in err
    entry = shared_daemon.app("chat")
    assert entry["state"] == "running" and entry["version"] is None
    shared_daemon.mig("send", "chat", "hello")
    shared_daemon.wait_logs("chat", "lines=1")


def test_a_repl_namespace_survives_close_and_open(shared_daemon: Daemon) -> None:
    shared_daemon.mig("repl", "ns", "-d")
    shared_daemon.mig("send", "ns", "x = 41")
    shared_daemon.mig("send", "ns", "inc = lambda v: v + 1")
    shared_daemon.mig("close", "ns")
    shared_daemon.mig("open", "ns")
    shared_daemon.mig("send", "ns", "inc(x)")
    shared_daemon.wait_logs("ns", "42")


def test_open_and_restore_refuse_what_cannot_be_done(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "refuse")
    _, _, err = shared_daemon.mig("open", "refuse", check=5)
    assert "running" in err
    _, _, err = shared_daemon.mig("restore", "refuse", "7", check=3)
    assert "7" in err
    shared_daemon.mig("kill", "refuse")
    _, _, err = shared_daemon.mig("open", "refuse", check=5)
    assert "no checkpoint" in err
    _, _, err = shared_daemon.mig("checkpoint", "nobody", check=3)
    assert "nobody" in err
    assert shared_daemon.app("refuse")["state"] == "exited"


def test_autosave_keeps_a_thinned_history(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("auto.py", TICKER_WITH_INPUT)
    shared_daemon.mig("run", str(app), "--name", "auto", "--autosave", "0.2", "--keep", "last=3")
    entry = shared_daemon.app("auto")
    assert entry["autosave"] == 0.2 and entry["keep"] == "last=3"
    wait_until(lambda: (shared_daemon.app("auto")["version"] or 0) >= 6, 20, what="six autosaves")
    versions = shared_daemon.history("auto")
    assert {v["kind"] for v in versions} == {"autosave"}
    assert len(versions) <= 4  # the newest three, and at most one taken since the last thinning
    assert int(versions[-1]["version"]) >= 6


def test_a_bad_retention_policy_is_refused(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("badkeep.py", TICKER_WITH_INPUT)
    _, _, err = shared_daemon.mig("run", str(app), "--keep", "last=lots", check=2)
    assert "last=lots" in err and "last=20,hourly=24,daily=7" in err
    assert "badkeep" not in shared_daemon.ps()


def test_a_crashed_app_comes_back_from_its_last_checkpoint(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("phoenix.py", TICKER_WITH_INPUT)))
    wait_until(lambda: "tick 3" in shared_daemon.logs("phoenix"), 10, what="phoenix to count")
    shared_daemon.mig("checkpoint", "phoenix")
    saved = last_n(shared_daemon, "phoenix")
    runner = shared_daemon.app("phoenix")["pid"]
    shared_daemon.mig("send", "phoenix", "die")
    back = wait_until(
        lambda: (a := shared_daemon.app("phoenix"))["state"] == "running" and a["pid"] != runner and a,
        15,
        what="phoenix to be brought back",
    )
    assert back["restarts"] == 1
    versions = shared_daemon.history("phoenix")
    assert versions[-1]["kind"] == "crash" and versions[-1]["parent"] == 1
    marker = "phoenix is back from version 1"
    wait_until(lambda: numbers_after(shared_daemon, "phoenix", marker), 10, what="counting after the crash")
    assert numbers_after(shared_daemon, "phoenix", marker)[0] <= saved + 1


def test_without_a_checkpoint_or_with_restart_never_a_crash_is_final(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("final.py", TICKER_WITH_INPUT)
    shared_daemon.mig("run", str(app))
    shared_daemon.mig("send", "final", "die")
    entry = shared_daemon.wait_state("final", "crashed")
    assert "not brought back: it has no checkpoint" in entry["reason"]
    assert f"[migrated] final crashed: {entry['reason']}" in shared_daemon.logs("final")
    shared_daemon.mig("run", str(app), "--name", "never", "--restart", "never")
    shared_daemon.mig("checkpoint", "never")
    shared_daemon.mig("send", "never", "die")
    entry = shared_daemon.wait_state("never", "crashed")
    assert entry["restarts"] == 0 and entry["pid"] is None


def test_fork_export_and_import(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "orig")
    shared_daemon.mig("send", "orig", "set 700")
    wait_until(lambda: last_n(shared_daemon, "orig") > 700, 10, what="orig past 700")
    shared_daemon.mig("checkpoint", "orig")
    out = shared_daemon.mig("fork", "orig", "twin", "--version", "1").out
    assert "forked orig as twin" in out
    assert shared_daemon.app("twin")["state"] == "closed"
    assert shared_daemon.history("twin")[0]["kind"] == "fork"
    shared_daemon.mig("open", "twin")
    wait_until(lambda: "tick " in shared_daemon.logs("twin"), 10, what="the fork to count")
    assert 700 < last_n(shared_daemon, "twin") < 5000
    export = app_dir.path / "orig.mig"
    shared_daemon.mig("export", "orig", "-o", str(export))
    assert export.stat().st_size > 0
    _, _, err = shared_daemon.mig("import", str(export), check=4)  # the name is taken
    assert "orig" in err
    shared_daemon.mig("import", str(export), "--name", "copy")
    assert shared_daemon.history("copy")[0]["kind"] == "import"
    shared_daemon.mig("open", "copy")
    wait_until(lambda: "tick " in shared_daemon.logs("copy"), 10, what="the import to count")
    assert last_n(shared_daemon, "copy") > 700
    damaged = app_dir.path / "damaged.mig"
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0x40
    damaged.write_bytes(bytes(data))
    code, _, err = shared_daemon.mig("import", str(damaged), "--name", "junk", check=None)
    assert code != 0 and "damaged.mig" in err
    assert "junk" not in shared_daemon.ps()


def flip_a_stored_bit(daemon: Daemon, app: str, version: int) -> None:
    """Flip one bit of a chunk only ``version`` of ``app`` uses, as a failing disk would."""
    import sqlite3

    query = """
        SELECT c.id, c.data FROM chunks c
        JOIN version_chunks vc ON vc.chunk_id = c.id
        JOIN versions v ON v.id = vc.version_id
        JOIN apps a ON a.id = v.app_id
        WHERE a.name = ? AND v.version = ? AND c.id NOT IN (
            SELECT vc2.chunk_id FROM version_chunks vc2 JOIN versions v2 ON v2.id = vc2.version_id
            WHERE v2.app_id = a.id AND v2.version != v.version)
        ORDER BY c.raw_size DESC LIMIT 1
    """
    with sqlite3.connect(daemon.dir / "checkpoints.sqlite") as conn:
        chunk_id, data = conn.execute(query, (app, version)).fetchone()
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 1
        conn.execute("DROP TRIGGER chunks_are_immutable")
        conn.execute("UPDATE chunks SET data = ? WHERE id = ?", (bytes(flipped), chunk_id))


BIG_STATE_APP = """
import migrated

class Big(migrated.App):
    def start(self):
        self.blob = bytes(range(256)) * 4096  # 1 MiB, out of band
        self.n = 0

    def on_input(self, line):
        if line == "change":
            self.blob = bytes(reversed(range(256))) * 4096
        self.n += 1
        print(f"n={self.n} first={self.blob[0]}", flush=True)
"""


def test_a_flipped_bit_is_found_by_verify_and_open_falls_back(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    daemon.mig("run", str(app_dir.write("big.py", BIG_STATE_APP)))
    daemon.mig("send", "big", "x")
    daemon.wait_logs("big", "n=1 first=0")
    daemon.mig("checkpoint", "big")  # version 1: the first blob
    daemon.mig("send", "big", "change")
    daemon.wait_logs("big", "n=2 first=255")
    daemon.mig("close", "big")  # version 2: the second blob, in chunks of its own
    assert daemon.mig("verify").out.endswith("0 damaged\n")
    flip_a_stored_bit(daemon, "big", 2)
    _, out, err = daemon.mig("verify", check=9)
    assert "big version 2" in out and "big version 2" in err and "big version 1" not in err
    daemon.mig("open", "big")
    assert "version 2" in daemon.logs("big")  # the fallback is said
    daemon.mig("send", "big", "x")
    daemon.wait_logs("big", "n=2 first=0")  # version 1's state: n=1 and the first blob


def test_gc_removes_only_chunks_no_version_uses(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("gcapp.py", BIG_STATE_APP)))
    shared_daemon.mig("checkpoint", "gcapp")
    shared_daemon.mig("close", "gcapp")
    shared_daemon.mig("fork", "gcapp", "gckeep")
    shared_daemon.mig("rm", "gcapp")
    out = shared_daemon.mig("gc").out
    assert out.startswith("removed ")
    shared_daemon.mig("open", "gckeep")  # the fork's chunks were kept
    shared_daemon.mig("send", "gckeep", "x")
    shared_daemon.wait_logs("gckeep", "n=1 first=0")


def test_a_daemon_killed_mid_checkpoint_leaves_whole_versions(daemons: Daemons, app_dir: AppDir) -> None:
    import sqlite3
    import subprocess
    import time

    daemon = daemons.start()
    daemon.mig("run", str(app_dir.write("heavy.py", CHURNING_TICKER)), "--", str(8 << 20))  # new chunks at every step
    daemon.mig("checkpoint", "heavy")
    saving = [
        subprocess.Popen(
            [MIG, "checkpoint", "heavy"],
            env=mig_env(daemon.dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(3)
    ]
    time.sleep(0.3)  # checkpoints of 8 MiB of fresh chunks are on their way
    daemon.kill()
    for proc in saving:
        proc.wait(30)
    again = daemons.start(state_dir=daemon.dir)
    with sqlite3.connect(daemon.dir / "checkpoints.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    versions = again.history("heavy")
    assert versions and versions[0]["version"] == 1
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert "0 damaged" in again.mig("verify").out
    entry = again.app("heavy")
    assert entry["state"] == "closed" and entry["version"] == versions[-1]["version"]
    again.mig("open", "heavy")  # the latest whole version loads
    again.wait_state("heavy", "running")
