"""``mig repl``: a managed interactive Python session whose statements are events."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Daemon
from tests.helpers import Background


def test_repl_keeps_its_namespace_between_statements(shared_daemon: Daemon) -> None:
    _, _, err = shared_daemon.mig("repl", "notes", "-d")
    assert "notes" in err
    entry = shared_daemon.app("notes")
    assert entry["state"] == "running"
    assert entry["kind"] == "repl"
    shared_daemon.mig("send", "notes", "x = 21")
    shared_daemon.mig("send", "notes", "x * 2")
    logs = shared_daemon.wait_logs("notes", "42")
    assert ">>> 42\n" in logs


def test_repl_runs_a_multi_line_definition(shared_daemon: Daemon) -> None:
    shared_daemon.mig("repl", "defs", "-d")
    for line in ["def plus_one(a):", "    return a + 1", "", "plus_one(41) * 1000"]:
        shared_daemon.mig("send", "defs", line)
    logs = shared_daemon.wait_logs("defs", "42000")
    assert "... " in logs  # the continuation prompt while the definition was incomplete
    assert "Error" not in logs


def test_an_exception_in_a_statement_shows_a_traceback_and_the_session_lives_on(shared_daemon: Daemon) -> None:
    shared_daemon.mig("repl", "oops", "-d")
    shared_daemon.mig("send", "oops", "kept = 'still here'")
    shared_daemon.mig("send", "oops", "1 / 0")
    shared_daemon.mig("send", "oops", "undefined_name")
    shared_daemon.mig("send", "oops", "kept.upper()")
    logs = shared_daemon.wait_logs("oops", "STILL HERE")
    assert "Traceback (most recent call last):" in logs
    assert "ZeroDivisionError: division by zero" in logs
    assert "NameError: name 'undefined_name' is not defined" in logs
    assert "_runner.py" not in logs  # the traceback shows the statement, not the runtime's frames
    assert shared_daemon.app("oops")["state"] == "running"


def test_a_syntax_error_is_reported_and_the_session_lives_on(shared_daemon: Daemon) -> None:
    shared_daemon.mig("repl", "syntax", "-d")
    shared_daemon.mig("send", "syntax", "x = = 1")
    shared_daemon.mig("send", "syntax", "'alive' * 2")
    logs = shared_daemon.wait_logs("syntax", "alivealive")
    assert "SyntaxError" in logs
    assert shared_daemon.app("syntax")["state"] == "running"


def test_repl_again_rejoins_the_same_session(shared_daemon: Daemon) -> None:
    shared_daemon.mig("repl", "again", "-d")
    pid = shared_daemon.app("again")["pid"]
    shared_daemon.mig("repl", "again", "-d")
    assert shared_daemon.app("again")["pid"] == pid
    assert list(shared_daemon.ps()).count("again") == 1


def test_repl_attaches_typed_statements_and_detaches_on_eof(
    shared_daemon: Daemon, attached: Callable[..., Background]
) -> None:
    session = attached(shared_daemon, "repl", "typed")
    session.wait_for(">>> ")
    session.type("y = 5")
    session.type("y * 3")
    session.wait_for("15\n")
    assert session.finish() == 0
    assert shared_daemon.app("typed")["state"] == "running"
    shared_daemon.mig("send", "typed", "y + 100")
    shared_daemon.wait_logs("typed", "105")


def test_exit_in_a_repl_ends_it(shared_daemon: Daemon) -> None:
    shared_daemon.mig("repl", "leave", "-d")
    shared_daemon.mig("send", "leave", "raise SystemExit(4)")
    entry = shared_daemon.wait_state("leave", "exited", "crashed")
    assert entry["state"] == "exited"
    assert entry["exit_code"] == 4
