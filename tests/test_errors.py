"""The one exception tree: each error's gRPC status and exit code, and finding a class by name."""

from __future__ import annotations

import re

import grpc
import pytest

from migrated import errors
from migrated.transport._errors import ERROR_KEY, error_of, status_of

ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__ if name.endswith("Error")]

EXIT_CODES = {
    "MigError": 1,
    "UsageError": 2,
    "AppFileError": 2,
    "NotAnAppError": 2,
    "AmbiguousAppError": 2,
    "AppCodeError": 2,
    "AppNotFoundError": 3,
    "AppExistsError": 4,
    "AppStateError": 5,
    "DaemonError": 6,
    "DaemonNotRunningError": 6,
    "StateDirError": 7,
    "DirectoryLockedError": 7,
    "RunnerError": 8,
}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_each_error_names_a_real_grpc_status(cls: type[errors.MigError]) -> None:
    assert cls.grpc_status in grpc.StatusCode.__members__
    assert status_of(cls("x")) is grpc.StatusCode[cls.grpc_status]
    assert grpc.StatusCode[cls.grpc_status] is not grpc.StatusCode.OK


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_each_error_is_found_by_its_name(cls: type[errors.MigError]) -> None:
    assert errors.error_class(cls.__name__) is cls


def test_an_unknown_error_name_gives_the_base_class() -> None:
    assert errors.error_class("ErrorFromANewerDaemon") is errors.MigError
    assert errors.error_class("") is errors.MigError
    assert errors.error_class("error_class") is errors.MigError


def drawn_tree() -> dict[str, tuple[str, str, int]]:
    """The tree drawn in the module docstring: name -> (parent, gRPC status, exit code)."""
    tree: dict[str, tuple[str, str, int]] = {}
    parents: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*[│├└─ ]*)(\w+Error)\s+([A-Z_]+)\s+(\d+)", line)
        if match:
            depth = len(match.group(1)) // 4 - 1
            parents[depth:] = [match.group(2)]
            tree[match.group(2)] = (parents[depth - 1] if depth else "", match.group(3), int(match.group(4)))
    return tree


def test_the_drawn_tree_is_the_real_one() -> None:
    tree = drawn_tree()
    assert set(tree) == {cls.__name__ for cls in ERROR_CLASSES}
    for cls in ERROR_CLASSES:
        parent, status, exit_code = tree[cls.__name__]
        assert (cls.grpc_status, cls.exit_code) == (status, exit_code), cls.__name__
        if parent:
            assert cls.__bases__ == (getattr(errors, parent),), cls.__name__


def test_exit_codes_of_the_command_line_are_the_documented_ones() -> None:
    assert {cls.__name__: cls.exit_code for cls in ERROR_CLASSES if cls.__name__ in EXIT_CODES} == EXIT_CODES


def test_every_error_derives_from_mig_error_and_has_a_docstring() -> None:
    for cls in ERROR_CLASSES:
        assert issubclass(cls, errors.MigError)
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()
        assert cls.__name__ in (errors.__doc__ or "")


def test_an_error_is_its_message() -> None:
    error = errors.AppNotFoundError("no app is called 'x'")
    assert str(error) == error.message == "no app is called 'x'"


@pytest.mark.parametrize(
    ("code", "details", "error", "said"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: ...", "", "cannot be reached"),
        (grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)", "", "the connection to it was lost"),
        (grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer (104)", "", "the connection to it was lost"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "", "h1 did not answer in time"),
        (grpc.StatusCode.UNAVAILABLE, "h1 is still starting", "PeerUnreachableError", "h1 is still starting"),
        (grpc.StatusCode.FAILED_PRECONDITION, "epoch 1 of 'sim' is stale on h1", "", "epoch 1 of 'sim' is stale"),
    ],
)
def test_a_failed_call_to_a_peer_is_said_in_words(code: grpc.StatusCode, details: str, error: str, said: str) -> None:
    trailing = grpc.aio.Metadata((ERROR_KEY, error)) if error else grpc.aio.Metadata()
    text = error_of(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, ""), "h1").message
    assert said in text
    assert "addresses" not in text and "Socket" not in text and "recvmsg" not in text
