"""An app's console through the command line: logs, logs -n, logs -f, and the daemon's bounds (``mig attach`` is
in tests/client/test_attach.py)."""

from __future__ import annotations

import pytest

from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import wait_until

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


def count_lines(first: int, last: int) -> str:
    """The console of an app that printed the numbers ``first`` to ``last``, one a line."""
    return "".join(f"{i}\n" for i in range(first, last + 1))


def test_logs_prints_every_line_in_order(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("count50.py", COUNT_APP.format(lines=50))))
    assert shared_daemon.wait_logs("count50", "50\n") == count_lines(1, 50)
    assert shared_daemon.app("count50")["console_lines"] == 50


def test_logs_tail_prints_the_last_lines(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("count20.py", COUNT_APP.format(lines=20))))
    shared_daemon.wait_logs("count20", "20\n")
    assert shared_daemon.logs("count20", "-n", "3") == count_lines(18, 20)
    assert shared_daemon.logs("count20", "-n", "100") == count_lines(1, 20)


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
    assert out == count_lines(1, 100) + "[migrated] slowcount exited: the app exited with code 0\n"
    # Following an app that has ended prints what it kept and returns at once.
    assert shared_daemon.mig("logs", "-f", "slowcount", timeout=10).out == out


@pytest.mark.slow
def test_logs_of_many_lines_prints_them_all(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("many.py", COUNT_APP.format(lines=30000))))
    assert shared_daemon.wait_logs("many", "\n30000\n") == count_lines(1, 30000)
    assert shared_daemon.logs("many", "-n", "20000") == count_lines(10001, 30000)


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
    assert logs == "[migrated] 40 earlier lines are no longer kept\n" + count_lines(41, 50)
    assert daemon.logs("count50", "-n", "3") == count_lines(48, 50)
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
