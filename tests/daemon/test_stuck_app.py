"""An app stuck in a handler never hangs a command or the daemon: every wait for a safe point has a bound, the
refusal names the handler and the line, and a stopping daemon saves what it can and exits in bounded time."""

from __future__ import annotations

import os
import signal
import sysconfig
import time

import pytest

from migrated.daemon._runner import stack_place
from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import TICKER, one_sentence, runner_pids, wait_until

STUCK = """
import time
import migrated

class Stuck(migrated.App):
    def start(self):
        self.n = 0
        self.hang = False

    def step(self):
        self.n += 1
        print(f"n={self.n}", flush=True)
        if self.hang:
            time.sleep(3600)  # line 13: a handler that never returns
        return 0.05

    def on_input(self, line):
        self.hang = line == "hang"
"""

WAIT = 2.0


def stuck_app(daemons: Daemons, app_dir: AppDir) -> Daemon:
    daemon = daemons.start("--safe-point-wait", str(WAIT))
    daemon.mig("run", str(app_dir.write("stuck.py", STUCK)), "--name", "stuck")
    daemon.wait_logs("stuck", "n=3")
    daemon.mig("checkpoint", "stuck")
    daemon.mig("send", "stuck", "hang")
    time.sleep(0.5)  # the next step hangs
    return daemon


def test_checkpoint_and_close_of_a_stuck_app_say_where_it_is_and_return(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = stuck_app(daemons, app_dir)
    for command in ("checkpoint", "close"):
        started = time.monotonic()
        result = daemon.mig(command, "stuck", check=5)
        assert time.monotonic() - started < WAIT + 8, f"mig {command} took {time.monotonic() - started:.1f} s"
        sentence = one_sentence(result.err)
        assert "busy in step() at stuck.py line 13" in sentence, sentence
        assert f"within {WAIT:g} s" in sentence and "mig kill --force stuck" in sentence, sentence
        assert daemon.app("stuck")["state"] == "running"
    assert [v["version"] for v in daemon.history("stuck")] == [1]
    daemon.mig("kill", "--force", "stuck")
    assert daemon.wait_state("stuck", "exited", "crashed")["pid"] is None


@pytest.mark.parametrize("how", ["SIGTERM", "mig shutdown"])
def test_a_stopping_daemon_saves_what_it_can_and_stops_a_stuck_app_in_bounded_time(
    daemons: Daemons, app_dir: AppDir, how: str
) -> None:
    daemon = stuck_app(daemons, app_dir)
    daemon.mig("run", str(app_dir.write("ticker.py", TICKER)), "--name", "ticker")
    daemon.wait_logs("ticker", "tick 3")
    runners = runner_pids(daemon.pid)
    assert len(runners) == 2
    started = time.monotonic()
    if how == "SIGTERM":
        os.kill(daemon.pid, signal.SIGTERM)
    else:
        daemon.mig("shutdown")
    wait_until(lambda: not daemon.alive(), WAIT + 20, what="the daemon to stop")
    assert time.monotonic() - started < WAIT + 15
    log = daemon.stderr_log()
    assert "stuck could not be saved" in log and "busy in step()" in log, log
    again = daemons.start(state_dir=daemon.dir)
    stuck, ticker = again.app("stuck"), again.app("ticker")
    assert (stuck["state"], stuck["version"]) == ("closed", 1)  # its last good version: before it hung
    assert ticker["state"] == "closed" and ticker["reason"] == "closed when the daemon stopped", ticker
    assert "mig close" not in again.logs("ticker")


def test_a_stack_dump_names_the_handler_and_the_apps_innermost_line() -> None:
    runtime = os.path.dirname(os.path.abspath(stack_place.__code__.co_filename)).replace("daemon", "runtime")
    dump = f"""Current thread 0x00007f (most recent call first):
  File "{sysconfig.get_paths()["stdlib"]}/threading.py", line 320 in wait
  File "/home/me/sim/physics.py", line 40 in crunch
  File "/home/me/sim/app.py", line 12 in step
  File "{runtime}/_runner.py", line 233 in _call
  File "{runtime}/_runner.py", line 150 in _step
"""
    assert stack_place(dump) == "step() at physics.py line 40 (in crunch)"
    assert stack_place(dump.replace("physics.py", "app.py").replace("crunch", "step")) == "step() at app.py line 40"
    assert stack_place("") == "" and stack_place("garbage\n") == ""
