"""Spare runners: an app starts in one that was started ahead, as if started for it; a spare that dies is passed
over; a runner killed while it thaws leaves the app closed with every version, and it opens again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil  # type: ignore[import-untyped]
import pytest

from tests.conftest import AppDir, Daemon
from tests.helpers import MIG, TICKER, mig_env, one_sentence, runner_pids, wait_until

pytestmark = pytest.mark.integration  # every test runs migrated or mig

WHERE = """
import os
import sys

import migrated
import helper


class Where(migrated.App):
    def start(self):
        print(f"cwd {os.getcwd()} path {sys.path[:2]} helper {helper.NAME}", flush=True)

    def step(self):
        return 1.0
"""


def spares_of(daemon: Daemon) -> set[int]:
    """The daemon's runners that wait for an app."""
    found = set()
    for proc in psutil.process_iter(["pid", "ppid", "name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["ppid"] == daemon.pid and proc.info["name"] == "mig-spare":
                found.add(proc.info["pid"])
    return found


def test_an_app_started_in_a_spare_runs_as_if_started_for_it(daemon: Daemon, app_dir: AppDir) -> None:
    spare = wait_until(lambda: spares_of(daemon), what="a spare runner")
    work = app_dir.path / "work"
    (work / "helper.py").parent.mkdir()
    (work / "helper.py").write_text("NAME = 'from the working directory'\n")
    app = app_dir.write("where.py", WHERE)
    daemon.mig("run", str(app), cwd=work)
    assert {daemon.app("where")["pid"]} == spare  # the spare took the app
    logs = daemon.wait_logs("where", "cwd ")
    # As in a runner started for it: the app's folder first on sys.path, then the working directory.
    assert f"cwd {work} path {[str(app_dir.path), str(work)]} helper from the working directory" in logs
    assert psutil.Process(next(iter(spare))).name() == "mig:where"
    replaced = wait_until(lambda: spares_of(daemon) - spare, what="a new spare")
    assert replaced and not replaced & runner_pids(daemon.pid)  # runner_pids counts apps' runners only


def test_a_spare_that_died_is_passed_over(daemon: Daemon, app_dir: AppDir) -> None:
    for pid in wait_until(lambda: spares_of(daemon), what="a spare runner"):
        os.kill(pid, signal.SIGKILL)
    daemon.mig("run", str(app_dir.write("after.py", TICKER)))
    daemon.wait_logs("after", "tick 2")
    assert daemon.app("after")["state"] == "running"
    wait_until(lambda: spares_of(daemon), what="a spare again")


def test_a_runner_killed_while_it_thaws_leaves_the_app_closed_with_its_versions(
    daemon: Daemon, app_dir: AppDir
) -> None:
    daemon.mig("run", str(app_dir.write("big.py", TICKER)), "--", str(96 << 20), "0.05")
    daemon.wait_logs("big", "tick 2")
    daemon.mig("close", "big")
    versions = [entry["version"] for entry in daemon.history("big")]
    opening = subprocess.Popen([MIG, "open", "big"], env=mig_env(daemon.dir), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    killed = False
    while not killed and time.monotonic() < deadline and opening.poll() is None:
        for proc in psutil.process_iter(["pid", "ppid", "name"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["ppid"] == daemon.pid and proc.info["name"] == "mig:big":
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed = True
    assert killed, "the thaw ended before the test found its runner"
    _, err = opening.communicate(timeout=30)
    if opening.returncode != 0:  # killed while it thawed: the open failed in one sentence, the app stays closed
        assert one_sentence(err) and daemon.app("big")["state"] in ("closed", "crashed")
        daemon.mig("open", "big")
    daemon.wait_state("big", "running")
    assert [entry["version"] for entry in daemon.history("big")][: len(versions)] == versions  # none lost
    last = int(daemon.logs("big").split("tick ")[-1].split()[0])
    daemon.wait_logs("big", f"tick {last + 1}")
