"""mig's autostart: a command with no daemon to answer it starts one, which outlives it, and only one."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import AppDir, Daemons
from tests.helpers import MIG, TICKER, mig, mig_env, pid_alive


def test_mig_starts_a_daemon_that_outlives_it(daemons: Daemons, app_dir: AppDir) -> None:
    state_dir = daemons.new_dir() / "state"
    out = mig("run", str(app_dir.write("auto.py", TICKER)), dir=state_dir, autostart=True).out
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
    env = mig_env(state_dir, autostart=True)
    procs = [
        subprocess.Popen([MIG, "status", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], results
    daemon = daemons.adopt(state_dir)
    assert {json.loads(out)["pid"] for out, _ in results} == {daemon.pid}


def test_shutdown_with_no_daemon_starts_none(daemons: Daemons) -> None:
    state_dir = daemons.new_dir() / "state"
    state_dir.mkdir(mode=0o700)
    out = mig("shutdown", dir=state_dir, autostart=True).out
    assert out.strip() == f"no daemon runs for {state_dir}"
    assert not (state_dir / "control.sock").exists() and not (state_dir / "daemon.log").exists()
