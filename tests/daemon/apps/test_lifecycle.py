"""An app's life through the command line: run, ps, send, kill, rm, exit, crash, shutdown."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from pathlib import Path

import pytest

import migrated
from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import ECHO, TICKER, pid_alive, wait_until


@pytest.fixture(scope="module")
def shared_daemon(module_daemons: Daemons) -> Daemon:
    """The daemon this module shares, with a host name of its own."""
    return module_daemons.start("--name", "box1")


def iso(value: str) -> dt.datetime:
    """Parse an ISO 8601 time that must carry its time zone."""
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def test_run_starts_the_app_and_ps_lists_it(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write("ticker.py", TICKER)
    out = daemon.mig("run", str(app)).out
    entry = daemon.app("ticker")
    assert out.strip() == f"started ticker (pid {entry['pid']}); follow it with: mig logs -f ticker"
    assert entry["state"] == "running"
    assert pid_alive(entry["pid"])
    daemon.wait_logs("ticker", "tick 3")


def test_ps_json_describes_a_running_app(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write("ticker.py", TICKER)
    before = dt.datetime.now(dt.UTC)
    daemon.mig("run", str(app), "--name", "t1", "--", "4096", "0.02", "b c", cwd=app_dir.path)
    entry = daemon.app("t1")
    assert set(entry) >= {
        "name", "state", "kind", "host", "home", "version", "pid", "file", "app_class", "cwd", "args",
        "started_at", "ended_at", "exit_code", "reason", "console_lines",
    }  # fmt: skip
    assert entry["name"] == "t1"
    assert entry["state"] == "running"
    assert entry["kind"] == "script"
    assert entry["host"] == entry["home"] == "box1"
    assert entry["version"] is None
    assert isinstance(entry["pid"], int) and pid_alive(entry["pid"])
    assert entry["file"] == str(app)
    assert entry["app_class"] == "Ticker"
    assert entry["cwd"] == str(app_dir.path)
    assert entry["args"] == ["4096", "0.02", "b c"]
    assert before - dt.timedelta(seconds=1) <= iso(entry["started_at"]) <= dt.datetime.now(dt.UTC)
    assert entry["ended_at"] is None
    assert entry["exit_code"] is None
    assert entry["reason"] is None
    daemon.wait_logs("t1", "tick 5")
    assert daemon.app("t1")["console_lines"] >= 5


def test_ps_json_describes_an_ended_app(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write("ended1.py", ECHO)
    daemon.mig("run", str(app))
    pid = daemon.app("ended1")["pid"]
    daemon.mig("kill", "ended1")
    entry = daemon.app("ended1")
    assert entry["state"] == "exited"
    assert entry["pid"] is None
    assert entry["exit_code"] == 0
    assert entry["reason"] == "stopped by mig kill"
    assert iso(entry["started_at"]) <= iso(entry["ended_at"]) <= dt.datetime.now(dt.UTC)
    assert not pid_alive(pid)


def test_ps_table_shows_each_app_and_its_state(daemon: Daemon, app_dir: AppDir) -> None:
    assert "no apps" in daemon.mig("ps").out
    daemon.mig("run", str(app_dir.write("ticker.py", TICKER)))
    daemon.mig("run", str(app_dir.write("echo.py", ECHO)))
    daemon.mig("kill", "echo")
    lines = daemon.mig("ps").out.splitlines()
    assert lines[0].split()[:5] == ["NAME", "STATE", "HOST", "HOME", "PID"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert rows["ticker"][1] == "running"
    assert rows["ticker"][4] == str(daemon.app("ticker")["pid"])
    assert rows["echo"][1] == "exited"
    assert rows["echo"][4] == "-"


def test_status_describes_the_daemon(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start("--name", "box2")
    daemon.mig("run", str(app_dir.write("ticker.py", TICKER)))
    daemon.mig("run", str(app_dir.write("echo.py", ECHO)))
    daemon.mig("kill", "echo")
    status = json.loads(daemon.mig("status", "--json").out)
    assert status["host"] == "box2"
    assert status["pid"] == daemon.pid
    assert status["version"] == migrated.__version__
    assert status["state_dir"] == str(daemon.dir)
    assert status["apps_running"] == 1
    assert status["apps_total"] == 2
    assert status["rss_bytes"] > 1_000_000
    assert iso(status["started_at"]) <= dt.datetime.now(dt.UTC)
    text = daemon.mig("status").out
    assert "box2" in text
    assert str(daemon.pid) in text
    assert str(daemon.dir) in text
    assert "1 running, 2 in all" in text


def test_send_delivers_one_line_to_on_input(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    daemon.mig("run", str(app_dir.write("send1.py", ECHO)))
    assert daemon.mig("send", "send1", "hello", "there").out == ""
    daemon.mig("send", "send1", "héllo ✓")
    logs = daemon.wait_logs("send1", "got héllo ✓")
    assert logs.splitlines()[:3] == ["started", "got hello there", "got héllo ✓"]


def test_send_with_newlines_delivers_each_line(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    daemon.mig("run", str(app_dir.write("send2.py", ECHO)))
    daemon.mig("send", "send2", "one\ntwo")
    logs = daemon.wait_logs("send2", "got two")
    assert logs.splitlines()[1:3] == ["got one", "got two"]


def test_step_returning_none_keeps_the_app_alive_for_input(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "once.py",
        """
        import migrated

        class Once(migrated.App):
            def step(self):
                print("stepped")
                return None

            def on_input(self, line):
                print(f"input {line}")
        """,
    )
    daemon.mig("run", str(app))
    daemon.wait_logs("once", "stepped")
    daemon.mig("send", "once", "later")
    logs = daemon.wait_logs("once", "input later")
    assert logs.count("stepped") == 1
    assert daemon.app("once")["state"] == "running"


@pytest.mark.parametrize("how", ["self.exit(3)", "raise SystemExit(3)"])
def test_exit_ends_the_app_with_its_code(shared_daemon: Daemon, app_dir: AppDir, how: str) -> None:
    daemon = shared_daemon
    name = "leaver1" if how.startswith("self") else "leaver2"
    app = app_dir.write(
        f"{name}.py",
        f"""
        import migrated

        class Leaver(migrated.App):
            def on_input(self, line):
                print("leaving")
                {how}

            def on_stop(self):
                print("on_stop ran")
        """,
    )
    daemon.mig("run", str(app))
    daemon.mig("send", name, "go")
    entry = daemon.wait_state(name, "exited", "crashed")
    assert entry["state"] == "exited"
    assert entry["exit_code"] == 3
    assert entry["pid"] is None
    assert "3" in entry["reason"]
    logs = daemon.logs(name)
    assert logs.splitlines() == ["leaving", "on_stop ran", f"[migrated] {name} exited: {entry['reason']}"]


def test_an_exception_crashes_the_app_with_its_traceback_in_logs(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "faulty.py",
        """
        import migrated

        class Faulty(migrated.App):
            def start(self):
                print("before")

            def step(self):
                raise ValueError("boom at step")
        """,
    )
    daemon.mig("run", str(app))
    entry = daemon.wait_state("faulty", "crashed", "exited")
    assert entry["state"] == "crashed"
    assert entry["pid"] is None
    assert "ValueError: boom at step" in entry["reason"]
    assert entry["exit_code"] != 0
    logs = daemon.logs("faulty")
    assert "Traceback (most recent call last):" in logs
    assert f'File "{app}", line 8, in step' in logs
    assert "ValueError: boom at step" in logs
    assert logs.splitlines()[0] == "before"
    assert logs.splitlines()[-1] == f"[migrated] faulty crashed: {entry['reason']}"


def test_an_exception_in_on_input_crashes_the_app(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "picky.py",
        """
        import migrated

        class Picky(migrated.App):
            def on_input(self, line):
                int(line)
        """,
    )
    daemon.mig("run", str(app))
    daemon.mig("send", "picky", "not a number")
    entry = daemon.wait_state("picky", "crashed", "exited")
    assert entry["state"] == "crashed"
    assert "ValueError" in entry["reason"]
    assert "invalid literal for int()" in daemon.logs("picky")


def test_kill_runs_on_stop_and_ends_the_runner(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    daemon.mig("run", str(app_dir.write("kill1.py", ECHO)))
    pid = daemon.app("kill1")["pid"]
    assert daemon.mig("kill", "kill1").out.strip() == "kill1 exited: stopped by mig kill"
    logs = daemon.logs("kill1").splitlines()
    assert logs == ["started", "on_stop ran", "[migrated] kill1 exited: stopped by mig kill"]
    assert daemon.app("kill1")["state"] == "exited"
    assert not pid_alive(pid)


def test_kill_force_skips_on_stop(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    daemon.mig("run", str(app_dir.write("kill2.py", ECHO)))
    pid = daemon.app("kill2")["pid"]
    out = daemon.mig("kill", "kill2", "--force").out
    assert out.startswith("kill2 ")
    assert "SIGKILL" in out
    assert "on_stop ran" not in daemon.logs("kill2")
    assert daemon.app("kill2")["state"] in ("exited", "crashed")
    assert not pid_alive(pid)


@pytest.mark.slow
def test_kill_sigkills_an_app_whose_on_stop_hangs(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "stubborn.py",
        """
        import time
        import migrated

        class Stubborn(migrated.App):
            def on_stop(self):
                print("stalling", flush=True)
                time.sleep(600)
        """,
    )
    daemon.mig("run", str(app))
    pid = daemon.app("stubborn")["pid"]
    started = time.monotonic()
    daemon.mig("kill", "stubborn")
    assert 4.0 < time.monotonic() - started < 15.0
    assert not pid_alive(pid)
    assert daemon.app("stubborn")["state"] in ("exited", "crashed")
    assert "stalling" in daemon.logs("stubborn")


def test_kill_force_is_immediate_even_in_a_long_step(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "busy.py",
        """
        import time
        import migrated

        class Busy(migrated.App):
            def step(self):
                print("working", flush=True)
                time.sleep(600)
        """,
    )
    daemon.mig("run", str(app))
    daemon.wait_logs("busy", "working")
    started = time.monotonic()
    daemon.mig("kill", "busy", "--force")
    assert time.monotonic() - started < 4.0  # well within the 5 s grace that kill without --force gives
    assert daemon.app("busy")["state"] in ("exited", "crashed")


def test_rm_forgets_an_ended_app_and_frees_its_name(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write("rm1.py", ECHO)
    daemon.mig("run", str(app))
    daemon.mig("kill", "rm1")
    assert daemon.mig("rm", "rm1").out.strip() == "removed rm1"
    assert "rm1" not in daemon.ps()
    _, _, err = daemon.mig("logs", "rm1", check=3)
    assert "rm1" in err
    daemon.mig("run", str(app))
    assert daemon.wait_logs("rm1", "started") == "started\n"  # a new console: the old run's lines are gone
    assert daemon.app("rm1")["state"] == "running"


def test_rm_of_a_running_app_is_refused_and_the_app_keeps_running(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    daemon.mig("run", str(app_dir.write("rm2.py", ECHO)))
    pid = daemon.app("rm2")["pid"]
    _, _, err = daemon.mig("rm", "rm2", check=5)
    assert err.startswith("mig: ")
    assert "rm2" in err
    assert "running" in err
    assert daemon.app("rm2")["pid"] == pid
    assert pid_alive(pid)


def test_rm_force_kills_and_forgets_a_running_app(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    daemon.mig("run", str(app_dir.write("rm3.py", TICKER)))
    pid = daemon.app("rm3")["pid"]
    daemon.mig("rm", "rm3", "--force")
    assert "rm3" not in daemon.ps()
    assert not pid_alive(pid)


def test_app_runs_in_the_directory_mig_run_was_called_from(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app_dir.write(
        "code/where.py",
        """
        import os
        import migrated

        class Where(migrated.App):
            def start(self):
                print(f"cwd={os.getcwd()}")
                with open("made-by-app.txt", "w") as f:
                    f.write("hello")
        """,
    )
    work = app_dir.path / "work"
    work.mkdir()
    daemon.mig("run", "../code/where.py", cwd=work)
    daemon.wait_logs("where", f"cwd={work}")
    assert (work / "made-by-app.txt").read_text() == "hello"
    assert daemon.app("where")["cwd"] == str(work)
    assert Path(daemon.app("where")["file"]).samefile(app_dir.path / "code" / "where.py")


def test_args_after_double_dash_reach_self_args(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "argy.py",
        """
        import json
        import migrated

        class Argy(migrated.App):
            def start(self):
                print("args=" + json.dumps(self.args))
        """,
    )
    daemon.mig("run", str(app), "--name", "argy", "--", "--name", "x", "two words", "-n")
    logs = daemon.wait_logs("argy", "args=")
    assert json.loads(logs.split("args=", 1)[1].splitlines()[0]) == ["--name", "x", "two words", "-n"]
    assert daemon.app("argy")["args"] == ["--name", "x", "two words", "-n"]


def test_class_chosen_with_a_colon_runs(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "pair.py",
        """
        import migrated

        class First(migrated.App):
            def start(self):
                print("first")

        class Second(migrated.App):
            def start(self):
                print("second")
        """,
    )
    daemon.mig("run", f"{app}:Second")
    assert daemon.wait_logs("pair", "second").splitlines()[0] == "second"
    assert daemon.app("pair")["app_class"] == "Second"


def test_stderr_goes_to_the_console(shared_daemon: Daemon, app_dir: AppDir) -> None:
    daemon = shared_daemon
    app = app_dir.write(
        "noisy.py",
        """
        import sys
        import migrated

        class Noisy(migrated.App):
            def start(self):
                print("to stdout")
                print("to stderr", file=sys.stderr)
        """,
    )
    daemon.mig("run", str(app))
    logs = daemon.wait_logs("noisy", "to stderr")
    assert logs.splitlines()[:2] == ["to stdout", "to stderr"]


STOP_MARKER_APP = """
    import migrated

    class Marker(migrated.App):
        def on_stop(self):
            with open("stopped.txt", "w") as f:
                f.write("on_stop ran")
"""


@pytest.mark.parametrize("how", ["mig shutdown", "SIGTERM"])
def test_stopping_the_daemon_stops_apps_first(daemon: Daemon, app_dir: AppDir, how: str) -> None:
    daemon.mig("run", str(app_dir.write("marker.py", STOP_MARKER_APP)), cwd=app_dir.path)
    pid = daemon.app("marker")["pid"]
    if how == "SIGTERM":
        os.kill(daemon.pid, signal.SIGTERM)
    else:
        assert str(daemon.dir) in daemon.mig("shutdown").out
    wait_until(lambda: not daemon.alive(), 15, what="the daemon to exit")
    assert daemon.proc is not None
    assert daemon.proc.returncode == 0
    assert (app_dir.path / "stopped.txt").read_text() == "on_stop ran"
    assert not pid_alive(pid)
    assert not Path(daemon.dir / "control.sock").exists()
    _, _, err = daemon.mig("status", check=6)
    assert str(daemon.dir) in err


def test_an_app_that_exits_while_its_child_process_runs_is_shown_ended(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write(
        "parent.py",
        """
        import subprocess
        import migrated

        class Parent(migrated.App):
            def start(self):
                self.child = subprocess.Popen(["sleep", "60"])
                print(f"child {self.child.pid}", flush=True)

            def on_input(self, line):
                self.exit(0)
        """,
    )
    shared_daemon.mig("run", str(app))
    child = int(shared_daemon.wait_logs("parent", "child ").split()[1])
    try:
        runner = shared_daemon.app("parent")["pid"]
        shared_daemon.mig("send", "parent", "bye")
        wait_until(lambda: not pid_alive(runner), 10, what="the runner to end")
        entry = shared_daemon.wait_state("parent", "exited", "crashed", timeout=10)
        assert entry["pid"] is None
        assert entry["exit_code"] == 0
    finally:
        os.kill(child, signal.SIGKILL)
