"""The daemon and its state directory: one daemon per directory, unusable directories, a stale socket (mig's
autostart is in tests/client/test_autostart.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import ECHO, TICKER, daemon_refusal, mig, one_sentence, wait_until

pytestmark = pytest.mark.integration  # every test runs migrated or mig


def test_a_second_daemon_on_the_same_directory_is_refused(daemon: Daemon, app_dir: AppDir) -> None:
    daemon.mig("run", str(app_dir.write("first.py", ECHO)))
    sentence = daemon_refusal(daemon.dir)
    assert str(daemon.dir) in sentence
    assert f"pid {daemon.pid}" in sentence
    assert daemon.alive()
    assert daemon.app("first")["state"] == "running"
    daemon.mig("send", "first", "still here")
    daemon.wait_logs("first", "got still here")


def test_two_daemons_with_different_directories_run_side_by_side(daemons: Daemons, app_dir: AppDir) -> None:
    one, two = daemons.start("--name", "one"), daemons.start("--name", "two")
    one.mig("run", str(app_dir.write("same.py", ECHO)))
    two.mig("run", str(app_dir.path / "same.py"))
    two.mig("run", str(app_dir.write("only2.py", ECHO)))
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
    assert str(state_dir) in daemon_refusal(state_dir)
    _, _, err = mig("status", dir=state_dir, autostart=True, check=7)
    assert str(state_dir) in one_sentence(err)
    _, _, err = mig("status", dir=state_dir, check=6)  # with MIG_NO_AUTOSTART=1
    assert str(state_dir) in err


def test_a_read_only_state_directory_is_refused(tmpfs: Callable[[str], Path], app_dir: AppDir) -> None:
    read_only_dir = tmpfs("ro")
    refusal = daemon_refusal(read_only_dir)
    assert str(read_only_dir) in refusal
    assert "Read-only" in refusal
    app = app_dir.write("ro.py", ECHO)
    for state_dir in (read_only_dir, read_only_dir / "sub"):
        _, _, err = mig("run", str(app), dir=state_dir, autostart=True, check=7)
        assert str(state_dir) in one_sentence(err)


def test_a_state_directory_path_too_long_for_a_socket_is_refused_by_the_daemon(daemons: Daemons) -> None:
    state_dir = daemons.new_dir() / ("z" * 100)
    refusal = daemon_refusal(state_dir)
    assert str(state_dir) in refusal
    assert "too long" in refusal


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
    out = mig("run", str(app_dir.write("revived.py", TICKER)), dir=daemon.dir, autostart=True).out
    assert out.startswith("started revived")
    daemons.adopt(daemon.dir).wait_logs("revived", "tick 1")
