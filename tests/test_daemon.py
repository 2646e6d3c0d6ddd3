"""The daemon and its state directory: autostart, one daemon per directory, unusable directories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ECHO_APP, MIG, MIGRATED, TICKER_APP, AppDir, Daemon, Daemons, mig, pid_alive, wait_until


def daemon_refusal(proc: subprocess.Popen[bytes], daemon_dir: Path, code: int = 7) -> str:
    """Wait for a ``migrated`` that must refuse to start; return its one-line sentence."""
    assert proc.wait(20) == code
    lines = (daemon_dir / "stderr.log").read_text().splitlines() if daemon_dir.is_dir() else []
    refusals = [line for line in lines if line.startswith("migrated: ")]
    assert len(refusals) == 1, lines
    return refusals[0]


def test_mig_starts_a_daemon_that_outlives_it(daemons: Daemons, app_dir: AppDir) -> None:
    state_dir = daemons.new_dir() / "state"
    out = mig("run", str(app_dir.write("auto.py", TICKER_APP)), dir=state_dir, autostart=True).out
    assert out.startswith("started auto")
    # mig has exited; the daemon it started goes on and the app with it.
    daemon = daemons.adopt(state_dir)
    assert pid_alive(daemon.pid)
    assert daemon.pid != os.getpid()
    daemon.wait_logs("auto", "tick 2")
    assert (state_dir / "daemon.log").is_file()
    assert state_dir.stat().st_mode & 0o777 == 0o700
    # Later commands use the same daemon rather than starting another.
    assert json.loads(mig("status", "--json", dir=state_dir, autostart=True).out)["pid"] == daemon.pid


def test_concurrent_autostarts_share_one_daemon(daemons: Daemons) -> None:
    state_dir = daemons.new_dir()
    env = {**os.environ, "MIG_DIR": str(state_dir)}
    env.pop("MIG_NO_AUTOSTART", None)
    procs = [
        subprocess.Popen([MIG, "status", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], results
    daemon = daemons.adopt(state_dir)
    assert {json.loads(out)["pid"] for out, _ in results} == {daemon.pid}


def test_a_second_daemon_on_the_same_directory_is_refused(daemon: Daemon, daemons: Daemons, app_dir: AppDir) -> None:
    daemon.mig("run", str(app_dir.write("first.py", ECHO_APP)))
    second = daemons.spawn(state_dir=daemon.dir)
    sentence = daemon_refusal(second, daemon.dir)
    assert str(daemon.dir) in sentence
    assert f"pid {daemon.pid}" in sentence
    assert daemon.alive()
    assert daemon.app("first")["state"] == "running"
    daemon.mig("send", "first", "still here")
    daemon.wait_logs("first", "got still here")


def test_two_daemons_with_different_directories_run_side_by_side(daemons: Daemons, app_dir: AppDir) -> None:
    one, two = daemons.start("--name", "one"), daemons.start("--name", "two")
    one.mig("run", str(app_dir.write("same.py", ECHO_APP)))
    two.mig("run", str(app_dir.path / "same.py"))
    two.mig("run", str(app_dir.write("only2.py", ECHO_APP)))
    assert sorted(one.ps()) == ["same"]
    assert sorted(two.ps()) == ["only2", "same"]
    assert one.app("same")["host"] == "one"
    assert two.app("same")["host"] == "two"
    one.mig("send", "same", "for one")
    one.wait_logs("same", "got for one")
    one.mig("kill", "same")
    assert "for one" not in two.logs("same")
    assert two.app("same")["state"] == "running"


def test_a_state_directory_below_a_regular_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    state_dir = blocker / "state"
    proc = subprocess.run([MIGRATED, "--dir", str(state_dir)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 7
    assert proc.stderr.startswith("migrated: ")
    assert str(state_dir) in proc.stderr
    _, _, err = mig("status", dir=state_dir, autostart=True, check=7)
    assert err.startswith("mig: ")
    assert str(state_dir) in err
    _, _, err = mig("status", dir=state_dir, check=6)  # with MIG_NO_AUTOSTART=1
    assert str(state_dir) in err


@pytest.fixture
def read_only_dir(daemons: Daemons) -> Path:
    """A read-only tmpfs mounted on a fresh directory (unmounted at teardown)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    path = daemons.new_dir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(path)], check=True)
    daemons.mounts.append(path)
    return path


def test_a_read_only_state_directory_is_refused(read_only_dir: Path, app_dir: AppDir) -> None:
    proc = subprocess.run([MIGRATED, "--dir", str(read_only_dir)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 7
    assert str(read_only_dir) in proc.stderr
    assert "Read-only" in proc.stderr
    app = app_dir.write("ro.py", ECHO_APP)
    for state_dir in (read_only_dir, read_only_dir / "sub"):
        _, _, err = mig("run", str(app), dir=state_dir, autostart=True, check=7)
        assert err.startswith("mig: ")
        assert str(state_dir) in err
        assert len(err.splitlines()) == 1


def test_a_state_directory_path_too_long_for_a_socket_is_refused_by_the_daemon(daemons: Daemons) -> None:
    state_dir = daemons.new_dir() / ("z" * 100)
    proc = subprocess.run([MIGRATED, "--dir", str(state_dir)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 7
    assert str(state_dir) in proc.stderr
    assert "too long" in proc.stderr


def test_the_daemon_makes_its_state_directory_private(daemon: Daemon) -> None:
    assert daemon.dir.stat().st_mode & 0o777 == 0o700
    assert (daemon.dir / "control.sock").is_socket()
    lock = (daemon.dir / "daemon.lock").read_text().strip()
    assert lock == str(daemon.pid)


def test_a_stale_socket_is_reported_then_replaced(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    assert daemon.proc is not None
    daemon.proc.kill()
    wait_until(lambda: not daemon.alive(), 10)
    assert (daemon.dir / "control.sock").exists()
    _, _, err = daemon.mig("ps", check=6)
    assert str(daemon.dir) in err
    out = mig("run", str(app_dir.write("revived.py", TICKER_APP)), dir=daemon.dir, autostart=True).out
    assert out.startswith("started revived")
    daemons.adopt(daemon.dir).wait_logs("revived", "tick 1")
