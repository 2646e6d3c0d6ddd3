"""The home side of an away app's files: ``HomeFiles`` on the real file system, and what it refuses."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from migrated.daemon.home import _files as _home_files
from migrated.daemon.home._files import HomeFiles
from migrated.runtime import _fileops


def _errno(files: HomeFiles, op: str, args: dict[str, Any], data: bytes = b"") -> int | None:
    with pytest.raises(OSError) as caught:
        files.handle(op, args, data)
    return caught.value.errno


def test_calls_on_open_files(tmp_path: Path) -> None:
    files = HomeFiles(str(tmp_path))
    opened, _ = files.handle("file.open", {"path": "f", "flags": ["read", "write", "create"], "perm": 0o600}, b"")
    assert opened["path"] == str(tmp_path / "f") and opened["size"] == 0 and opened["regular"] is True
    handle = opened["handle"]
    assert files.handle("file.write", {"handle": handle, "offset": 3}, b"abc")[0] == {"end": 6}
    assert files.handle("file.read", {"handle": handle, "offset": 2, "size": 100}, b"") == ({}, b"\0abc")
    assert files.handle("file.size", {"handle": handle}, b"")[0] == {"size": 6}
    files.handle("file.truncate", {"handle": handle, "size": 4}, b"")
    files.handle("file.close", {"handle": handle}, b"")
    assert (tmp_path / "f").read_bytes() == b"\0\0\0a" and (tmp_path / "f").stat().st_mode & 0o777 == 0o600
    assert _errno(files, "file.read", {"handle": handle, "offset": 0, "size": 1}) == errno.EBADF
    appended, _ = files.handle("file.open", {"path": str(tmp_path / "f"), "flags": ["write", "append"]}, b"")
    assert files.handle("file.write", {"handle": appended["handle"], "offset": None}, b"zz")[0] == {"end": 6}
    assert (tmp_path / "f").read_bytes() == b"\0\0\0azz"


def test_malformed_calls_are_refused_with_einval(tmp_path: Path) -> None:
    files = HomeFiles(str(tmp_path))
    (tmp_path / "f").write_text("x")
    handle = files.handle("file.open", {"path": "f", "flags": ["read"]}, b"")[0]["handle"]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("file.open", {"path": "f"}),
        ("file.open", {"path": "f", "flags": ["sideways"]}),
        ("file.open", {"path": "f", "flags": ["create"]}),
        ("file.open", {"path": 3, "flags": ["read"]}),
        ("file.open", {"path": "", "flags": ["read"]}),
        ("file.open", {"path": "f\0", "flags": ["read"]}),
        ("file.read", {"handle": handle, "offset": -1, "size": 1}),
        ("file.read", {"handle": handle, "offset": 0, "size": _fileops.MAX_READ + 1}),
        ("file.read", {"handle": "1", "offset": 0, "size": 1}),
        ("file.read", {"handle": True, "offset": 0, "size": 1}),
        ("file.write", {"handle": handle, "offset": "0"}),
        ("os.stat", {"path": "f", "follow": "yes"}),
        ("os.utime", {"path": "f", "times": [1]}),
        ("os.rename", {"src": "f"}),
        ("os.truncate", {"path": "f", "size": -1}),
    ]
    for op, args in calls:
        assert _errno(files, op, args) == errno.EINVAL, (op, args)
    assert _errno(files, "file.nope", {}) == errno.ENOSYS
    assert _errno(files, "os.stat", []) == errno.EINVAL  # type: ignore[arg-type]


def test_open_files_are_bounded_and_closed_all_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_home_files, "MAX_OPEN", 3)
    files = HomeFiles(str(tmp_path))
    (tmp_path / "f").write_text("x")
    handles = [files.handle("file.open", {"path": "f", "flags": ["read"]}, b"")[0]["handle"] for _ in range(3)]
    assert len(set(handles)) == 3
    assert _errno(files, "file.open", {"path": "f", "flags": ["read"]}) == errno.EMFILE
    fds_before = len(os.listdir("/proc/self/fd"))
    files.close_all()
    assert files.open_count == 0 and len(os.listdir("/proc/self/fd")) == fds_before - 3
    assert _errno(files, "file.size", {"handle": handles[0]}) == errno.EBADF
    files.handle("file.open", {"path": "f", "flags": ["read"]}, b"")


def test_errors_name_the_path(tmp_path: Path) -> None:
    files = HomeFiles(str(tmp_path))
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError) as missing:
        files.handle("os.stat", {"path": "nope"}, b"")
    assert missing.value.filename == str(tmp_path / "nope")
    with pytest.raises(IsADirectoryError):
        files.handle("file.open", {"path": "d", "flags": ["read"]}, b"")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        files.handle("os.chdir", {"path": "f"}, b"")
    assert files.handle("os.chdir", {"path": "d/.."}, b"")[0] == {"cwd": str(tmp_path.resolve())}
    assert files.open_count == 0


def test_scandir_gives_each_entry_with_its_stats(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("abc")
    (tmp_path / "ok").symlink_to("f")
    (tmp_path / "dangling").symlink_to("missing")
    files = HomeFiles(str(tmp_path))
    entries = {
        name: (lstat, target) for name, lstat, target in files.handle("os.scandir", {"path": "."}, b"")[0]["entries"]
    }
    assert entries["f"][0] == _fileops.stat_list(os.lstat(tmp_path / "f")) and entries["f"][1] is None
    assert entries["ok"][1] == _fileops.stat_list(os.stat(tmp_path / "f"))
    assert entries["dangling"][1] is None and entries["dangling"][0][0] == os.lstat(tmp_path / "dangling").st_mode
