"""``mig attach``: an app's console followed live with input typed to it, and Ctrl-C at any moment."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections.abc import Callable

from tests.conftest import AppDir, Daemon
from tests.helpers import ECHO, MIG, Background, mig_env


def test_attach_shows_earlier_output_sends_lines_and_detaches_on_eof(
    shared_daemon: Daemon, app_dir: AppDir, attached: Callable[..., Background]
) -> None:
    shared_daemon.mig("run", str(app_dir.write("att1.py", ECHO)))
    shared_daemon.mig("send", "att1", "before attach")
    shared_daemon.wait_logs("att1", "got before attach")
    session = attached(shared_daemon, "attach", "att1")
    session.wait_for("started\ngot before attach\n")
    session.type("typed line")
    session.wait_for("got typed line\n")
    assert session.finish() == 0
    assert "detached from att1" in session.err
    assert shared_daemon.app("att1")["state"] == "running"
    shared_daemon.mig("send", "att1", "after detach")
    assert shared_daemon.wait_logs("att1", "got after detach").splitlines() == [
        "started",
        "got before attach",
        "got typed line",
        "got after detach",
    ]


def test_attach_detaches_on_ctrl_c(shared_daemon: Daemon, app_dir: AppDir, attached: Callable[..., Background]) -> None:
    shared_daemon.mig("run", str(app_dir.write("att2.py", ECHO)))
    session = attached(shared_daemon, "attach", "att2")
    session.wait_for("started\n")
    session.proc.send_signal(signal.SIGINT)
    assert session.proc.wait(15) == 0
    assert shared_daemon.app("att2")["state"] == "running"
    assert "on_stop ran" not in shared_daemon.logs("att2")


def test_attach_ends_when_the_app_ends(
    shared_daemon: Daemon, app_dir: AppDir, attached: Callable[..., Background]
) -> None:
    shared_daemon.mig("run", str(app_dir.write("att3.py", ECHO)))
    session = attached(shared_daemon, "attach", "att3")
    session.wait_for("started\n")
    session.type("quit")
    assert session.proc.wait(15) == 0  # without closing stdin
    session.finish()
    assert session.out.endswith("got quit\non_stop ran\n[migrated] att3 exited: the app exited with code 0\n")
    assert shared_daemon.app("att3")["state"] == "exited"


def test_attach_to_an_unknown_app_fails(shared_daemon: Daemon) -> None:
    _, _, err = shared_daemon.mig("attach", "nobody", input="", check=3)
    assert err.startswith("mig: ")
    assert "nobody" in err


def test_ctrl_c_at_any_moment_gives_the_terminal_back(shared_daemon: Daemon, app_dir: AppDir) -> None:
    """SIGINT at random moments of mig attach, from its start on: every one ends it, quietly."""
    shared_daemon.mig("run", str(app_dir.write("att4.py", ECHO)))
    rng = random.Random(4)
    env = mig_env(shared_daemon.dir)
    for _ in range(20):
        proc = subprocess.Popen(
            [MIG, "attach", "att4"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)  # a hang fails here
        assert proc.returncode in (0, 1, 130, -signal.SIGINT), (proc.returncode, err)
        if err.strip():
            # Only the interpreter's own start-up (its streams, site, the console script's import) may be cut with
            # a message of Python's: a frame of ours there is at line 0, entered and not yet run, since the
            # handler is in place before anything else of ours runs.
            ours = re.findall(rb'File "[^"]*/client/[^"]*", line (\d+)', err)
            assert all(line == b"0" for line in ours) and b"grpc" not in err and b"mig: " not in err, err
    assert shared_daemon.app("att4")["state"] == "running"
