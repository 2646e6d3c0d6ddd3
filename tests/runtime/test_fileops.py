"""The table of file calls (``runtime._fileops``): the wire it describes, its round trips, and that both ends
use it (the runner's end is checked in ``test_files_proxy``: the proxy sends every call of the table)."""

from __future__ import annotations

import ast
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrated.daemon.home._files import HomeFiles
from migrated.runtime import _fileops
from tests.helpers import REPO

# The wire, pinned: each call's name, its arguments in the order they travel, the fields of its answer.
WIRE = {
    "file.open": (["path", "flags", "perm"], ["handle", "size", "regular", "path"]),
    "file.read": (["handle", "offset", "size"], []),
    "file.write": (["handle", "offset"], ["end"]),
    "file.truncate": (["handle", "size"], []),
    "file.size": (["handle"], ["size"]),
    "file.close": (["handle"], []),
    "os.stat": (["path", "follow"], ["stat"]),
    "os.listdir": (["path"], ["names"]),
    "os.scandir": (["path"], ["entries"]),
    "os.mkdir": (["path", "perm"], []),
    "os.rmdir": (["path"], []),
    "os.unlink": (["path"], []),
    "os.rename": (["src", "dst"], []),
    "os.replace": (["src", "dst"], []),
    "os.access": (["path", "mode", "follow", "effective"], ["ok"]),
    "os.utime": (["path", "follow", "times", "ns"], []),
    "os.truncate": (["path", "size"], []),
    "os.readlink": (["path"], ["target"]),
    "os.chdir": (["path"], ["cwd"]),
    "os.chmod": (["path", "perm", "follow"], []),
}


def test_the_table_describes_the_wire() -> None:
    described = {
        op: ([argument.name for argument in call.arguments], list(call.answer)) for op, call in _fileops.CALLS.items()
    }
    assert described == WIRE
    for op, call in _fileops.CALLS.items():
        assert call.op == op
        assert issubclass(call, _fileops.HandleCall) == (op.startswith("file.") and call is not _fileops.Open)
        assert issubclass(call, _fileops.PathCall) != issubclass(call, _fileops.HandleCall)


def test_arguments_travel_in_order_and_only_optional_times_are_left_out() -> None:
    assert list(_fileops.Access("p", os.R_OK).args().items()) == [
        ("path", "p"),
        ("mode", os.R_OK),
        ("follow", True),
        ("effective", False),
    ]
    assert _fileops.Write(1, None).args() == {"handle": 1, "offset": None}  # null: append
    assert _fileops.Utime("p").args() == {"path": "p", "follow": True}
    assert _fileops.Utime("p", False, ns=(1, 2)).args() == {"path": "p", "follow": False, "ns": (1, 2)}
    assert _fileops.Open("p", ["read"]).args() == {"path": "p", "flags": ["read"], "perm": 0o666}


def test_a_call_is_immutable_and_checks_its_arguments_as_it_is_made() -> None:
    call = _fileops.Stat("p")
    with pytest.raises(AttributeError):
        call.path = "q"  # type: ignore[misc]
    with pytest.raises(TypeError):
        _fileops.Stat()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _fileops.Stat("p", nofollow=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _fileops.Stat("p", True, 3)  # type: ignore[call-arg]
    assert call == _fileops.Stat(path="p", follow=True) and call != _fileops.Readlink("p")
    assert repr(call) == "Stat(path='p', follow=True)"


def _values(kind: str) -> st.SearchStrategy[Any]:
    numbers = st.integers(-(2**63), 2**63)
    return {
        "HomePath": st.text(min_size=1).filter(lambda text: "\0" not in text),
        "Handle": numbers,
        "int": numbers,
        "bool": st.booleans(),
        "Names": st.lists(st.text()),
        "Position": st.none() | st.integers(0, 2**63),
        "Seconds": st.none() | st.tuples(*[numbers | st.floats(allow_nan=False, allow_infinity=False)] * 2),
        "Nanoseconds": st.none() | st.tuples(numbers, numbers),
    }[kind]


@st.composite
def _calls(draw: st.DrawFn) -> _fileops.FileCall:
    call = draw(st.sampled_from(sorted(_fileops.CALLS.values(), key=lambda call: call.op)))
    return call(*[draw(_values(argument.kind)) for argument in call.arguments])


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(_calls())
def test_a_call_comes_out_at_home_as_it_was_sent(call: _fileops.FileCall) -> None:
    assert type(call).parse(json.loads(json.dumps(call.args()))) == call


def test_a_stat_comes_out_as_it_was_taken(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    for taken in (os.stat(tmp_path / "f"), os.stat(tmp_path)):
        sent = _fileops.stat_result(json.loads(json.dumps(_fileops.stat_list(taken))))
        assert sent == taken
        assert [getattr(sent, name, None) for name in _fileops.STAT_FIELDS] == _fileops.stat_list(taken)


def test_every_call_of_the_table_is_carried_out_at_home(tmp_path: Path) -> None:
    files = HomeFiles(str(tmp_path))
    for op in _fileops.CALLS:
        with pytest.raises(OSError) as caught:
            files.handle(op, {}, b"")  # taken, parsed, and refused for what it lacks: not an unknown call
        assert caught.value.errno == errno.EINVAL, op
    with pytest.raises(OSError) as unknown:
        files.handle("os.symlink", {}, b"")
    assert unknown.value.errno == errno.ENOSYS


@pytest.mark.parametrize(
    "path",
    [
        "migrated/runtime/_files.py",
        "migrated/runtime/_files_dirs.py",
        "migrated/runtime/_files_proxy.py",
        "migrated/runtime/_files_raw.py",
        "migrated/daemon/home/_files.py",
    ],
)
def test_neither_end_spells_the_name_of_a_call(path: str) -> None:
    tree = ast.parse((REPO / path).read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    spelled = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and any(op in node.value for op in _fileops.CALLS)
    ]
    assert spelled == []
