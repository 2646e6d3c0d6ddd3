"""Checkpoints through the command line: checkpoint, history, close, open, restore, across daemon restarts."""

from __future__ import annotations

import datetime as dt
import json
import re

from tests.conftest import AppDir, Daemon, Daemons, wait_until

COUNTER_APP = """
import migrated

class Counter(migrated.App):
    def start(self):
        self.n = 0

    def step(self):
        self.n += 1
        print(f"n={self.n}")
        return 0.05

    def on_input(self, line):
        self.n = int(line)
"""

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

UNSAVEABLE_APP = """
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


def last_n(daemon: Daemon, name: str) -> int:
    """The last counter value the app printed."""
    values = re.findall(r"^n=(\d+)$", daemon.logs(name), re.M)
    assert values, f"{name} printed no counter line"
    return int(values[-1])


def numbers_after(daemon: Daemon, name: str, marker: str) -> list[int]:
    """Counter values printed after the daemon's ``marker`` note."""
    logs = daemon.logs(name)
    assert marker in logs, logs
    return [int(v) for v in re.findall(r"^n=(\d+)$", logs[logs.rindex(marker) :], re.M)]


def start_counter(daemon: Daemon, app_dir: AppDir, name: str) -> None:
    daemon.mig("run", str(app_dir.write(f"{name}.py", COUNTER_APP)), "--name", name)
    wait_until(lambda: "n=3" in daemon.logs(name), 10, what=f"{name} to count")


def history(daemon: Daemon, name: str) -> list[dict[str, object]]:
    return list(json.loads(daemon.mig("history", name, "--json").out))


def test_checkpoint_adds_a_version_and_history_lists_it(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "hist")
    out = shared_daemon.mig("checkpoint", "hist", "-m", "before tuning").out
    assert re.match(r"hist: version 1 \(.* added, .* in all\); paused [\d.]+ ms", out), out
    shared_daemon.mig("checkpoint", "hist")
    versions = history(shared_daemon, "hist")
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["parent"] for v in versions] == [None, 1]
    assert [v["kind"] for v in versions] == ["manual", "manual"]
    assert versions[0]["message"] == "before tuning"
    for version in versions:
        assert dt.datetime.fromisoformat(str(version["created"])).tzinfo is not None
        assert int(version["total_bytes"]) > 0  # type: ignore[call-overload]
    assert int(versions[0]["bytes_added"]) > 0  # type: ignore[call-overload]
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
    assert history(shared_daemon, "cont")[-1]["kind"] == "close"
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
    again.mig("open", "durable")
    wait_until(lambda: "n=" in again.logs("durable"), 10, what="counting after the restart")
    assert min(int(v) for v in re.findall(r"^n=(\d+)$", again.logs("durable"), re.M)) == at_close + 1


def test_daemon_shutdown_closes_running_apps_and_loses_nothing(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    start_counter(daemon, app_dir, "shut")
    assert daemon.stop() == []
    again = daemons.start(state_dir=daemon.dir)
    entry = again.app("shut")
    assert entry["state"] == "closed"
    assert history(again, "shut")[-1]["kind"] == "close"
    again.mig("open", "shut")
    wait_until(lambda: "n=" in again.logs("shut"), 10, what="counting after the restart")
    first = min(int(v) for v in re.findall(r"^n=(\d+)$", again.logs("shut"), re.M))
    assert first > 3  # it went on from its saved count, not from the start


def test_restore_goes_back_as_a_new_version_and_keeps_history(shared_daemon: Daemon, app_dir: AppDir) -> None:
    start_counter(shared_daemon, app_dir, "back")
    shared_daemon.mig("send", "back", "1000")
    wait_until(lambda: last_n(shared_daemon, "back") > 1000, 10, what="the counter past 1000")
    shared_daemon.mig("checkpoint", "back", "-m", "at 1000")
    shared_daemon.mig("send", "back", "5000")
    wait_until(lambda: last_n(shared_daemon, "back") > 5000, 10, what="the counter past 5000")
    out = shared_daemon.mig("restore", "back", "1").out
    assert "restored version 1 as version 3" in out
    marker = "back restored version 1 as version 3"
    wait_until(lambda: len(numbers_after(shared_daemon, "back", marker)) >= 2, 10, what="counting after restore")
    resumed = numbers_after(shared_daemon, "back", marker)
    assert 1000 < resumed[0] < 5000
    versions = history(shared_daemon, "back")
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
    shared_daemon.mig("run", str(app_dir.write("chat.py", UNSAVEABLE_APP)))
    code, out, err = shared_daemon.mig("checkpoint", "chat", check=None)
    assert code != 0 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mig: "), err
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
