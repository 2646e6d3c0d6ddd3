"""Bad input: each error is one sentence on stderr that names the thing, with its exit code, and loses nothing."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import AppDir, Daemon
from tests.helpers import ECHO, mig, new_state_dir, one_sentence, pid_alive

pytestmark = pytest.mark.integration  # every test runs mig, most against a daemon

BAD_APPS = {
    "noapp": (
        """
        import migrated

        def helper():
            return 1
        """,
        2,
        ["noapp.py", "App"],
    ),
    "twoapps": (
        """
        import migrated

        class Alpha(migrated.App):
            pass

        class Beta(migrated.App):
            pass
        """,
        2,
        ["twoapps.py", "Alpha", "Beta", ":"],
    ),
    "badsyntax": (
        """
        import migrated

        class Broken(migrated.App):
            def start(self)
                pass
        """,
        2,
        ["badsyntax.py", "line 4", "def start(self)"],
    ),
    "badimport": (
        """
        import migrated

        RATIO = 1 / 0
        """,
        2,
        ["badimport.py", "line 3", "ZeroDivisionError"],
    ),
    "diesatimport": (
        """
        import os

        os._exit(1)
        """,
        8,
        ["diesatimport"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_APPS))
def test_run_of_a_bad_app_is_refused(shared_daemon: Daemon, app_dir: AppDir, name: str) -> None:
    source, code, mentions = BAD_APPS[name]
    app = app_dir.write(f"{name}.py", source)
    _, out, err = shared_daemon.mig("run", str(app), check=code)
    assert out == ""
    sentence = one_sentence(err)
    for word in mentions:
        assert word in sentence
    assert name not in shared_daemon.ps()


def test_run_of_a_missing_file_is_refused(shared_daemon: Daemon, app_dir: AppDir) -> None:
    _, _, err = shared_daemon.mig("run", "nowhere/missing.py", cwd=app_dir.path, check=2)
    assert "missing.py" in one_sentence(err)
    assert "missing" not in shared_daemon.ps()


def test_run_of_a_class_that_is_not_there_is_refused(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("noclass.py", ECHO)
    _, _, err = shared_daemon.mig("run", f"{app}:Missing", check=2)
    sentence = one_sentence(err)
    assert "Missing" in sentence
    assert "noclass.py" in sentence


def test_run_with_an_invalid_name_is_refused(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("named.py", ECHO)
    _, _, err = shared_daemon.mig("run", str(app), "--name", "no/slashes", check=2)
    assert "no/slashes" in one_sentence(err)
    assert "no/slashes" not in shared_daemon.ps()


def test_a_duplicate_name_is_refused_and_the_existing_app_keeps_running(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("dup.py", ECHO)
    shared_daemon.mig("run", str(app))
    shared_daemon.mig("send", "dup", "first")
    before = shared_daemon.wait_logs("dup", "got first")
    pid = shared_daemon.app("dup")["pid"]
    _, _, err = shared_daemon.mig("run", str(app), check=4)
    assert "dup" in one_sentence(err)
    assert shared_daemon.app("dup")["pid"] == pid
    assert pid_alive(pid)
    assert shared_daemon.logs("dup") == before
    shared_daemon.mig("send", "dup", "second")
    shared_daemon.wait_logs("dup", "got second")


def test_a_duplicate_of_an_ended_app_is_refused(shared_daemon: Daemon, app_dir: AppDir) -> None:
    app = app_dir.write("dupended.py", ECHO)
    shared_daemon.mig("run", str(app))
    shared_daemon.mig("kill", "dupended")
    _, _, err = shared_daemon.mig("run", str(app), check=4)
    assert "dupended" in one_sentence(err)
    assert shared_daemon.app("dupended")["state"] == "exited"


@pytest.mark.parametrize(
    "command",
    [["send", "ghost", "hi"], ["logs", "ghost"], ["logs", "-f", "ghost"], ["kill", "ghost"], ["rm", "ghost"]],
)
def test_an_unknown_app_name_is_reported(shared_daemon: Daemon, command: list[str]) -> None:
    _, _, err = shared_daemon.mig(*command, check=3)
    assert "ghost" in one_sentence(err)


def test_commands_that_need_a_running_app_refuse_an_ended_one(shared_daemon: Daemon, app_dir: AppDir) -> None:
    shared_daemon.mig("run", str(app_dir.write("ended.py", ECHO)))
    shared_daemon.mig("kill", "ended")
    for command in (["send", "ended", "hi"], ["kill", "ended"]):
        _, _, err = shared_daemon.mig(*command, check=5)
        sentence = one_sentence(err)
        assert "ended" in sentence
        assert "exited" in sentence
    assert "got hi" not in shared_daemon.logs("ended")


def test_no_daemon_and_no_autostart_is_reported() -> None:
    state_dir = new_state_dir()
    try:
        _, _, err = mig("status", dir=state_dir, check=6)
        assert str(state_dir) in one_sentence(err)
        assert "MIG_NO_AUTOSTART" in err
        assert not (state_dir / "control.sock").exists()
        assert not (state_dir / "daemon.log").exists()
    finally:
        shutil.rmtree(state_dir)


def test_a_state_directory_path_too_long_for_a_socket_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    long_dir = tmp_path_factory.mktemp("x" * 60) / ("y" * 60)
    _, _, err = mig("status", dir=long_dir, autostart=True, check=7)
    assert str(long_dir) in one_sentence(err)
    assert not long_dir.exists()


def test_a_usage_error_exits_2(shared_daemon: Daemon) -> None:
    assert shared_daemon.mig("frobnicate", check=2).err
    assert shared_daemon.mig("send", "onlyname", check=2).err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run",), ["Missing argument", "mig run --help"]),
        (("frobnicate",), ["No such command 'frobnicate'", "mig --help"]),
        (("ps", "--bogus"), ["No such option '--bogus'", "mig ps --help"]),
        (("run", "app.py", "--autosvae", "5"), ["No such option '--autosvae'", "--autosave", "mig run --help"]),
        (("run", "app.py", "extra"), ["unexpected extra argument (extra)", "after --", "mig run --help"]),
    ],
)
def test_a_usage_mistake_is_one_sentence_that_points_to_help(args: tuple[str, ...], words: list[str]) -> None:
    _, out, err = mig(*args, dir=new_state_dir(), check=2)
    assert out == ""
    sentence = one_sentence(err)
    for word in words:
        assert word in sentence
