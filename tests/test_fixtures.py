"""The fixtures' own checks can fail: a runner left behind by its daemon is reported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import Daemons
from tests.helpers import pid_alive, runner_pids

pytestmark = pytest.mark.integration  # it starts a daemon of its own


def test_teardown_reports_a_runner_that_outlives_its_daemon() -> None:
    factory = Daemons()
    daemon = factory.start()
    # A stand-in for a runner whose death signal failed: tagged with the daemon's pid, outside its process tree.
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "migrated.runtime._runner"],
        env={**os.environ, "MIG_DAEMON_PID": str(daemon.pid)},
        start_new_session=True,
    )
    try:
        assert runner_pids(daemon.pid) == {fake.pid}
        problems = factory.close()
        assert len(problems) == 1
        assert f"runner processes [{fake.pid}] of daemon {daemon.pid} outlived it" in problems[0]
        assert fake.wait(10) < 0  # and it was killed
        assert not pid_alive(fake.pid)
    finally:
        fake.kill()
        fake.wait()
