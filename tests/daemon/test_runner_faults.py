"""Faults in one app's runner take nothing else down: the daemon and the other apps keep running."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import TICKER, TICKER_WITH_INPUT, pid_alive, runner_pids, wait_until

DYING_APP = """
    import ctypes
    import os
    import socket
    import sys
    import migrated

    class Dying(migrated.App):
        def start(self):
            print("alive", flush=True)

        def on_input(self, line):
            print(f"dying by {{line}}", flush=True)
            {how}
"""

WAYS_TO_DIE = {
    "os_exit": ("os._exit(1)", "status 1"),
    "segfault": ("ctypes.string_at(0)", "SIGSEGV"),
    "sigkill_self": ("os.kill(os.getpid(), 9)", "SIGKILL"),
}

# What an app can write on its runner's socket to the daemon (the runner's argv[1] is its descriptor).
BAD_FRAMES = {
    "garbage_frames": "socket.socket(fileno=int(sys.argv[1])).sendall(b'\\xff' * 64)",
    "non_object_report": "socket.socket(fileno=int(sys.argv[1])).sendall(b'\\0\\0\\0\\2\\x06[]')",
}


@pytest.fixture(scope="module")
def bystander(shared_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> int:
    """The runner pid of a ticking app in the shared daemon."""
    return run_bystander(shared_daemon, AppDir(tmp_path_factory.mktemp("bystander")))


def run_bystander(daemon: Daemon, app_dir: AppDir) -> int:
    """Start a ticking app that must not notice the faults of its neighbours; return its runner pid."""
    daemon.mig("run", str(app_dir.write("bystander.py", TICKER)))
    return int(daemon.app("bystander")["pid"])


def assert_unharmed(daemon: Daemon, bystander: int) -> None:
    """The daemon answers and the bystander still runs in the same runner, still ticking."""
    entry = daemon.app("bystander")
    assert entry["state"] == "running"
    assert entry["pid"] == bystander
    lines = entry["console_lines"]
    wait_until(lambda: daemon.app("bystander")["console_lines"] > lines, 10, what="the bystander to tick on")


@pytest.mark.parametrize("way", sorted(WAYS_TO_DIE))
def test_a_dying_runner_crashes_only_its_app(shared_daemon: Daemon, app_dir: AppDir, bystander: int, way: str) -> None:
    how, reason = WAYS_TO_DIE[way]
    app = app_dir.write(f"{way}.py", DYING_APP.format(how=how))
    shared_daemon.mig("run", str(app))
    pid = shared_daemon.app(way)["pid"]
    shared_daemon.mig("send", way, way)
    entry = shared_daemon.wait_state(way, "crashed", "exited")
    assert entry["state"] == "crashed"
    assert reason in entry["reason"]
    assert entry["pid"] is None
    assert not pid_alive(pid)
    logs = shared_daemon.logs(way)
    assert f"dying by {way}" in logs
    assert f"[migrated] {way} crashed: {entry['reason']}" in logs
    assert_unharmed(shared_daemon, bystander)


@pytest.mark.parametrize("way", sorted(BAD_FRAMES))
def test_bad_frames_from_a_runner_crash_only_its_app(daemon: Daemon, app_dir: AppDir, way: str) -> None:
    bystander = run_bystander(daemon, app_dir)
    app = app_dir.write(f"{way}.py", DYING_APP.format(how=BAD_FRAMES[way]))
    daemon.mig("run", str(app))
    pid = daemon.app(way)["pid"]
    daemon.mig("send", way, way)
    wait_until(lambda: not pid_alive(pid), 10, what="the runner that sent bad frames to end")
    status = daemon.mig("status", check=None)
    assert status.code == 0, f"the daemon stopped answering: {status.err} {daemon.log_tail(1500)}"
    assert daemon.app(way)["state"] == "crashed"
    assert_unharmed(daemon, bystander)


def test_a_segfault_leaves_a_python_traceback_in_logs(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("segv2.py", DYING_APP.format(how="ctypes.string_at(0)"))
    shared_daemon.mig("run", str(app))
    shared_daemon.mig("send", "segv2", "x")
    shared_daemon.wait_state("segv2", "crashed")
    logs = shared_daemon.logs("segv2")
    assert "Segmentation fault" in logs
    assert f'File "{app}", line 13 in on_input' in logs


def test_sigkill_of_the_runner_pid_crashes_only_its_app(shared_daemon: Daemon, app_dir: AppDir, bystander: int) -> None:
    shared_daemon.mig("run", str(app_dir.write("victim.py", TICKER)))
    pid = shared_daemon.app("victim")["pid"]
    os.kill(pid, signal.SIGKILL)
    entry = shared_daemon.wait_state("victim", "crashed", "exited")
    assert entry["state"] == "crashed"
    assert "SIGKILL" in entry["reason"]
    assert entry["exit_code"] == -signal.SIGKILL
    assert_unharmed(shared_daemon, bystander)


def test_runners_are_the_first_choice_of_the_oom_killer(shared_daemon: Daemon, bystander: int) -> None:
    def oom_score_adj(pid: int) -> int:
        return int(Path(f"/proc/{pid}/oom_score_adj").read_text())

    assert oom_score_adj(bystander) > oom_score_adj(shared_daemon.pid)


def test_runners_die_with_a_killed_daemon(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    daemon.mig("run", str(app_dir.write("orphan1.py", TICKER)))
    daemon.mig("run", str(app_dir.write("orphan2.py", TICKER)))
    pids = runner_pids(daemon.pid)
    assert pids == {daemon.app("orphan1")["pid"], daemon.app("orphan2")["pid"]}
    os.kill(daemon.pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10, what="the runners to die with their daemon")
    # The stale socket does not stop a new daemon on the same directory, which remembers the apps it lost.
    again = daemons.start(state_dir=daemon.dir)
    entry = again.app("orphan1")
    assert entry["state"] == "crashed" and entry["pid"] is None
    assert "before it had a checkpoint" in entry["reason"]
    again.mig("rm", "orphan1")
    again.mig("run", str(app_dir.path / "orphan1.py"))
    assert again.app("orphan1")["state"] == "running"


def test_a_killed_daemon_keeps_the_console_of_its_apps(daemons: Daemons, app_dir: AppDir) -> None:
    """What an app printed before its daemon was killed is still in mig logs after the restart, with the same
    numbers; the app, opened again, writes on below a note that says where the restart was."""
    daemon = daemons.start()
    daemon.mig("run", str(app_dir.write("diary.py", TICKER)))
    wait_until(lambda: "tick 5\n" in daemon.mig("logs", "diary").out, 10, what="five ticks")
    daemon.mig("checkpoint", "diary")
    before = daemon.mig("logs", "diary").out
    os.kill(daemon.pid, signal.SIGKILL)
    again = daemons.start(state_dir=daemon.dir)
    after = again.mig("logs", "diary").out
    assert after.startswith(before), (before, after)
    assert after.rstrip("\n").endswith("[migrated] the daemon restarted; the lines above are from before")
    again.mig("open", "diary")
    wait_until(lambda: again.mig("logs", "diary").out.count("tick") > after.count("tick") + 3, 10, what="ticks")
    assert again.mig("logs", "diary").out.startswith(after)


def test_a_crashed_app_on_its_way_back_when_the_daemon_is_killed_is_opened_again_after_the_restart(
    daemons: Daemons, app_dir: AppDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATED_FAULT_PAUSE", "recovery-waiting")  # its crash recovery waits for ever
    daemon = daemons.start()
    daemon.mig("run", str(app_dir.write("phoenix.py", TICKER_WITH_INPUT)))
    daemon.wait_logs("phoenix", "tick 3")
    daemon.mig("checkpoint", "phoenix")
    daemon.mig("send", "phoenix", "die")
    wait_until(lambda: "paused at recovery-waiting" in daemon.stderr_log(), 15, what="the recovery to wait")
    os.kill(daemon.pid, signal.SIGKILL)
    monkeypatch.delenv("MIGRATED_FAULT_PAUSE")
    again = daemons.start(state_dir=daemon.dir)
    entry = again.app("phoenix")
    # As an app that ran when its daemon died: closed, and opened again from its last version.
    assert entry["state"] == "closed", entry
    assert "mig open phoenix resumes it from version 1" in entry["reason"]
    again.mig("open", "phoenix")
    restarted = "the daemon restarted; the lines above are from before"
    wait_until(lambda: "tick" in again.logs("phoenix").split(restarted)[-1], 10, what="phoenix to tick again")
    assert again.app("phoenix")["state"] == "running"
