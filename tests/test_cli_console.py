"""An app's console through the command line: logs, logs -n, logs -f, attach, and the daemon's bounds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.conftest import ECHO_APP, MIG, AppDir, Attached, Daemon, Daemons, wait_until

COUNT_APP = """
    import migrated

    class Count(migrated.App):
        def start(self):
            for i in range(1, {lines} + 1):
                print(i)
"""

SLOW_COUNT_APP = """
    import migrated

    class SlowCount(migrated.App):
        def start(self):
            self.n = 0

        def step(self):
            self.n += 1
            print(self.n)
            if self.n == 100:
                self.exit(0)
            return 0.005
"""


def numbers(first: int, last: int) -> str:
    return "".join(f"{i}\n" for i in range(first, last + 1))


def test_logs_prints_every_line_in_order(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("count50.py", COUNT_APP.format(lines=50))))
    assert shared_daemon.wait_logs("count50", "50\n") == numbers(1, 50)
    assert shared_daemon.app("count50")["console_lines"] == 50


def test_logs_tail_prints_the_last_lines(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("count20.py", COUNT_APP.format(lines=20))))
    shared_daemon.wait_logs("count20", "20\n")
    assert shared_daemon.logs("count20", "-n", "3") == numbers(18, 20)
    assert shared_daemon.logs("count20", "-n", "100") == numbers(1, 20)


def test_a_late_logs_sees_what_was_printed_before(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write(
        "early.py",
        """
        import migrated

        class Early(migrated.App):
            def start(self):
                print("printed at start")
                self.exit(0)
        """,
    )
    shared_daemon.mig("run", str(app))
    shared_daemon.wait_state("early", "exited")
    assert shared_daemon.logs("early").splitlines() == [
        "printed at start",
        "[migrated] early exited: the app exited with code 0",
    ]


def test_logs_follow_prints_every_line_and_ends_with_the_app(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("slowcount.py", SLOW_COUNT_APP)))
    code, out, err = shared_daemon.mig("logs", "-f", "slowcount", timeout=30)
    assert code == 0, err
    assert out == numbers(1, 100) + "[migrated] slowcount exited: the app exited with code 0\n"
    # Following an app that has ended prints what it kept and returns at once.
    assert shared_daemon.mig("logs", "-f", "slowcount", timeout=10).out == out


@pytest.mark.slow
def test_logs_of_many_lines_prints_them_all(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("many.py", COUNT_APP.format(lines=30000))))
    assert shared_daemon.wait_logs("many", "\n30000\n") == numbers(1, 30000)
    assert shared_daemon.logs("many", "-n", "20000") == numbers(10001, 30000)


@pytest.mark.slow
def test_logs_of_long_lines_prints_them_all(shared_daemon: Daemon, app_dir: AppDir) -> None:
    """Ten MB of console in 1 KB lines is well within the daemon's default bound of 16 MiB."""
    app = app_dir.write(
        "wide.py",
        """
        import migrated

        class Wide(migrated.App):
            def start(self):
                for i in range(10000):
                    print(f"{i:05d} " + "x" * 1000)
                print("done")
        """,
    )
    shared_daemon.mig("run", str(app))
    wait_until(lambda: shared_daemon.app("wide")["console_lines"] == 10001, 20, what="all lines of wide")
    code, out, err = shared_daemon.mig("logs", "wide", check=None)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 10001
    assert lines[9999] == "09999 " + "x" * 1000


def test_console_bound_drops_the_oldest_lines_and_says_so(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start("--console-lines", "10")
    daemon.mig("run", str(app_dir.write("count50.py", COUNT_APP.format(lines=50))))
    logs = daemon.wait_logs("count50", "50\n")
    assert logs == "[migrated] 40 earlier lines are no longer kept\n" + numbers(41, 50)
    assert daemon.logs("count50", "-n", "3") == numbers(48, 50)
    assert daemon.app("count50")["console_lines"] == 50


def test_console_byte_bound_drops_the_oldest_lines(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start("--console-bytes", "100")
    app = app_dir.write(
        "bytes.py",
        """
        import migrated

        class Bytes(migrated.App):
            def start(self):
                for i in range(100):
                    print(f"{i:09d}")
        """,
    )
    daemon.mig("run", str(app))
    logs = daemon.wait_logs("bytes", "000000099")
    expected = "".join(f"{i:09d}\n" for i in range(90, 100))
    assert logs == "[migrated] 90 earlier lines are no longer kept\n" + expected


def test_the_daemon_notes_a_crash_on_a_line_of_its_own(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write(
        "partial.py",
        """
        import os
        import sys
        import migrated

        class Partial(migrated.App):
            def start(self):
                sys.stdout.write("no newline")
                sys.stdout.flush()
                os._exit(1)
        """,
    )
    shared_daemon.mig("run", str(app))
    entry = shared_daemon.wait_state("partial", "crashed", "exited")
    assert shared_daemon.logs("partial").splitlines()[-1] == f"[migrated] partial crashed: {entry['reason']}"


def test_attach_shows_earlier_output_sends_lines_and_detaches_on_eof(
    shared_daemon: Daemon, app_dir: AppDir, attached: Callable[..., Attached]
) -> None:
    shared_daemon.mig("run", str(app_dir.write("att1.py", ECHO_APP)))
    shared_daemon.mig("send", "att1", "before attach")
    shared_daemon.wait_logs("att1", "got before attach")
    session = attached(shared_daemon, "attach", "att1")
    session.wait_for("started\ngot before attach\n")
    session.type("typed line")
    session.wait_for("got typed line\n")
    assert session.finish() == 0
    assert b"detached from att1" in session.err
    assert shared_daemon.app("att1")["state"] == "running"
    shared_daemon.mig("send", "att1", "after detach")
    assert shared_daemon.wait_logs("att1", "got after detach").splitlines() == [
        "started",
        "got before attach",
        "got typed line",
        "got after detach",
    ]


def test_attach_detaches_on_ctrl_c(shared_daemon: Daemon, app_dir: AppDir, attached: Callable[..., Attached]) -> None:
    shared_daemon.mig("run", str(app_dir.write("att2.py", ECHO_APP)))
    session = attached(shared_daemon, "attach", "att2")
    session.wait_for("started\n")
    session.proc.send_signal(signal.SIGINT)
    assert session.proc.wait(15) == 0
    assert shared_daemon.app("att2")["state"] == "running"
    assert "on_stop ran" not in shared_daemon.logs("att2")


def test_attach_ends_when_the_app_ends(
    shared_daemon: Daemon, app_dir: AppDir, attached: Callable[..., Attached]
) -> None:
    shared_daemon.mig("run", str(app_dir.write("att3.py", ECHO_APP)))
    session = attached(shared_daemon, "attach", "att3")
    session.wait_for("started\n")
    session.type("quit")
    assert session.proc.wait(15) == 0  # without closing stdin
    session.finish()
    assert session.text.endswith("got quit\non_stop ran\n[migrated] att3 exited: the app exited with code 0\n")
    assert shared_daemon.app("att3")["state"] == "exited"


def test_attach_to_an_unknown_app_fails(shared_daemon: Daemon) -> None:
    _, _, err = shared_daemon.mig("attach", "nobody", input="", check=3)
    assert err.startswith("mig: ")
    assert "nobody" in err


def test_ctrl_c_at_any_moment_gives_the_terminal_back(shared_daemon: Daemon, app_dir: AppDir) -> None:
    """SIGINT at random moments of mig attach, from its start on: every one ends it, quietly."""
    shared_daemon.mig("run", str(app_dir.write("att4.py", ECHO_APP)))
    rng = random.Random(4)
    env = {**os.environ, "MIG_DIR": str(shared_daemon.dir), "MIG_NO_AUTOSTART": "1"}
    for _ in range(20):
        proc = subprocess.Popen(
            [MIG, "attach", "att4"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)  # a hang fails here
        if proc.returncode == 1:  # only Python's own start-up (site) may be cut with a traceback
            assert b"KeyboardInterrupt" in err and b"/client/" not in err and b"grpc" not in err, err
        else:
            assert proc.returncode in (0, 130, -signal.SIGINT) and b"Traceback" not in err, (proc.returncode, err)
    assert shared_daemon.app("att4")["state"] == "running"
