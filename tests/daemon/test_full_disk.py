"""A full disk never takes the daemon or an app down: a checkpoint that cannot be stored is one sentence (in the
command, in mig ps, in mig logs), autosave tries again and succeeds once there is room, console lines wait in
memory, and start and shutdown on a full disk are one sentence each."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import AppDir, Daemons
from tests.helpers import CHURNING_TICKER, MIGRATED, numbers, one_sentence, wait_until

# Every step makes 2 MiB of fresh state: each autosave adds new chunks until the disk is full.
GROWER_ARGS = ("--", str(2 << 20), "0.1")


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 48 MiB tmpfs as a state directory (unmounted at teardown)."""
    return tmpfs("size=48m,mode=0700")


@contextlib.contextmanager
def filled(disk: Path) -> Iterator[Path]:
    """Fill the disk to the last byte, as another program would; the space comes back on leaving."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        while True:
            out.write(bytes(256 << 10))
            out.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as out:
        while True:
            out.write(bytes(4096))
            out.flush()
    try:
        yield filler
    finally:
        filler.unlink()


def test_a_full_disk_keeps_the_daemon_and_the_app_up_and_autosave_resumes(
    daemons: Daemons, small_disk: Path, app_dir: AppDir
) -> None:
    daemon = daemons.start(state_dir=small_disk)
    daemon.mig(
        "run", str(app_dir.write("grower.py", CHURNING_TICKER)), "--name", "grower", "--autosave", "0.5", *GROWER_ARGS
    )
    daemon.wait_logs("grower", "tick 5")
    with filled(small_disk):
        app = daemon.wait_state("grower", "running")
        wait_until(lambda: "not saved" in (daemon.app("grower")["reason"] or ""), 20, what="ps to say not saved")
        reason = daemon.app("grower")["reason"]
        assert "full" in reason and daemon.app("grower")["state"] == "running", reason
        assert "autosave of grower failed: not saved" in daemon.logs("grower")
        result = daemon.mig("checkpoint", "grower", check=9)
        assert "full" in one_sentence(result.err) and "OperationalError" not in result.err
        going = numbers(daemon.logs("grower"))[-1]
        wait_until(lambda: numbers(daemon.logs("grower"))[-1] > going + 10, 20, what="the app to go on counting")
        assert daemon.app("grower")["pid"] == app["pid"]
    daemon.wait_logs("grower", "autosave of grower works again", timeout=90)
    wait_until(lambda: not daemon.app("grower")["reason"], 10, what="ps to stop saying not saved")
    daemon.mig("checkpoint", "grower")
    seen = numbers(daemon.logs("grower"))
    assert seen == list(range(1, len(seen) + 1)), "a console line was lost or repeated while the disk was full"
    assert "Traceback" not in daemon.stderr_log()


def test_shutdown_and_start_on_a_full_disk_are_one_sentence_each(
    daemons: Daemons, small_disk: Path, app_dir: AppDir
) -> None:
    daemon = daemons.start(state_dir=small_disk)
    daemon.mig("run", str(app_dir.write("grower.py", CHURNING_TICKER)), "--name", "grower", *GROWER_ARGS)
    daemon.mig("checkpoint", "grower")
    daemon.wait_logs("grower", "tick 3")
    with filled(small_disk):
        daemon.mig("shutdown")
        wait_until(lambda: not daemon.alive(), 30, what="the daemon to stop")
        log = daemon.stderr_log()
        assert "Traceback" not in log, log
        assert "grower could not be saved" in log and "full" in log, log
        started = subprocess.Popen([MIGRATED, "--dir", str(small_disk)], stderr=subprocess.PIPE, text=True)
        try:
            answered = wait_until(
                lambda: started.poll() is not None or daemon.mig("status", check=None).code == 0 or None,
                30,
                what="the daemon to start or refuse",
            )
            if started.poll() is None:  # it started on the full disk: it must stop as cleanly
                assert answered
                daemon.mig("shutdown")
            _, err = started.communicate(timeout=30)
        finally:
            if started.poll() is None:
                started.kill()
        assert "Traceback" not in err, err
        if started.returncode != 0:  # refused: one sentence, the exit code of a state directory it cannot use
            refusal = [line for line in err.splitlines() if line.startswith("migrated: ")]
            assert started.returncode == 7 and len(refusal) == 1 and "full" in refusal[0], err
    again = daemons.start(state_dir=small_disk)
    entry = again.app("grower")
    assert entry["state"] == "closed" and entry["version"] >= 1, entry
    again.mig("open", "grower")
    again.wait_state("grower", "running")
