"""An app's files at its home: ``open``, ``os``, ``os.path``, ``pathlib``, ``glob`` and ``shutil`` through the
proxy, against a real ``HomeFiles`` run in this process.

The runner's real ``Home`` talks to a link that keeps every call until the runner waits for an answer, then
carries the calls out in order, as the home does: so a test sees what was posted without waiting (write-behind,
read-ahead) and what the home has applied. The home directory and this process's working directory differ, so
a test can tell a file at home from one here.
"""

from __future__ import annotations

import builtins
import errno
import glob
import io
import os
import pathlib
import shutil
import stat
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from migrated import App
from migrated.checkpoint import capture, restore
from migrated.daemon.home._files import HomeFiles
from migrated.errors import UnserialisableStateError
from migrated.runtime import _fileops, _files, _files_proxy, _files_raw, _wire
from migrated.runtime._home import Home
from tests.helpers import REPO

ORIGINALS = {name: getattr(os, name) for name in (*_files_proxy.OS_NAMES, "listxattr")}
ORIGINAL_OPEN, ORIGINAL_TOUCH, ORIGINAL_RMTREE = builtins.open, pathlib.Path.touch, shutil.rmtree


class LazyLink:
    """The runner's socket to a home that carries out each call only when the runner waits for an answer."""

    def __init__(self, files: HomeFiles) -> None:
        self.files = files
        self.decoder = _wire.FrameDecoder()
        self.pending: list[tuple[dict[str, Any], bytes]] = []
        self.ops: Counter[str] = Counter()
        self.answered: dict[str, set[str]] = {}  # op -> the fields of its answers
        self.waits = 0
        self.most_pending_writes = 0

    def send_raw(self, frame: bytes) -> None:
        for decoded in self.decoder.feed(frame):
            header, data = decoded.io()
            self.ops[header["op"]] += 1
            self.pending.append((header, data))
        self.most_pending_writes = max(self.most_pending_writes, self.pending_write_bytes())

    def recv_reply(self, *kinds: _wire.Kind) -> _wire.Frame | None:
        self.waits += 1
        if not self.pending:
            return None
        header, data = self.pending.pop(0)
        return _wire.Frame(_wire.Kind.IO_REPLY, self._carry_out(header, data))

    def pending_write_bytes(self) -> int:
        return sum(len(data) for header, data in self.pending if header["op"] == "file.write")

    def _carry_out(self, header: dict[str, Any], data: bytes) -> bytes:
        """What the home daemon does with a call (``daemon._home.AppHome._answer``)."""
        with _files.suspended():  # the home acts on the real file system
            try:
                result, out = self.files.handle(header["op"], header, data)
            except OSError as exc:
                failure: dict[str, Any] = {"errno": exc.errno or errno.EIO, "error": exc.strerror or str(exc)}
                if isinstance(exc.filename, str):
                    failure["filename"] = exc.filename
                return _wire.io_payload({"id": header["id"], **failure})
        self.answered.setdefault(header["op"], set()).update(result)
        return _wire.io_payload({**result, "id": header["id"]}, out)


@dataclass
class Rig:
    home: Path  # the app's working directory at home
    here: Path  # this process's real working directory
    local: Path  # a local root
    link: LazyLink
    line: Home


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    home, here, local = tmp_path / "home", tmp_path / "here", tmp_path / "local"
    for folder in (home, here, local):
        folder.mkdir()
    monkeypatch.chdir(here)
    link = LazyLink(HomeFiles(str(home)))
    line = Home(link, str(home), away=True)
    _files.install(line, [*_files.default_local_roots(str(REPO)), str(local)])
    try:
        yield Rig(home, here, local, link, line)
    finally:
        _files.uninstall()
        link.files.close_all()


def real(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` on this host's real file system, whatever is installed."""
    with _files.suspended():
        return function(*args, **kwargs)


# -- where paths resolve


def test_a_relative_path_lands_at_home_and_not_here(rig: Rig) -> None:
    with open("notes.txt", "w") as f:
        f.write("at home")
    assert real((rig.home / "notes.txt").read_text) == "at home"
    assert not real((rig.here / "notes.txt").exists)
    assert os.getcwd() == str(rig.home)
    assert os.path.abspath("notes.txt") == str(rig.home / "notes.txt")
    assert Path("notes.txt").resolve() == rig.home / "notes.txt"


def test_local_roots_and_descriptors_stay_here(rig: Rig) -> None:
    before = sum(rig.link.ops.values())
    target = rig.local / "cache.bin"
    with open(target, "wb") as f:
        f.write(b"local")
        assert isinstance(f.raw, io.FileIO)
        assert os.stat(f.fileno()).st_size in (0, 5)
    assert os.stat(target).st_size == 5 and os.path.isfile(target) and os.listdir(rig.local) == ["cache.bin"]
    assert os.stat(os.__file__).st_size > 0  # the Python installation
    assert sum(rig.link.ops.values()) == before
    assert real(target.read_bytes) == b"local"


def test_a_cwd_at_home_inside_a_local_root_still_goes_home(rig: Rig) -> None:
    # the test's home is under /tmp, a local root: the longer root, the home cwd, wins
    assert any(str(rig.home).startswith(root + os.sep) for root in _files.default_local_roots(str(REPO)))
    Path("inside.txt").write_text("x")
    assert real((rig.home / "inside.txt").exists) and rig.link.ops["file.open"] == 1


def test_chdir_moves_the_cwd_at_home(rig: Rig) -> None:
    real((rig.home / "sub").mkdir)
    os.chdir("sub")
    assert os.getcwd() == str(rig.home / "sub") and os.getcwdb() == os.fsencode(rig.home / "sub")
    Path("deeper.txt").write_text("x")
    assert real((rig.home / "sub" / "deeper.txt").exists)
    with pytest.raises(FileNotFoundError):
        os.chdir("nowhere")
    with pytest.raises(NotADirectoryError):
        os.chdir("deeper.txt")
    assert os.getcwd() == str(rig.home / "sub")
    assert real(lambda: os.getcwd()) == str(rig.here)


def test_bytes_and_path_like_paths(rig: Rig) -> None:
    class Named:
        def __fspath__(self) -> bytes:
            return b"named.bin"

    with open(b"raw.bin", "wb") as f:
        f.write(b"1")
    with open(Named(), "wb") as f:
        f.write(b"2")
    assert f.name == b"named.bin"
    assert sorted(os.listdir(b".")) == [b"named.bin", b"raw.bin"]
    with os.scandir(b".") as entries:
        assert sorted((e.name, e.path) for e in entries) == [(b"named.bin", b"./named.bin"), (b"raw.bin", b"./raw.bin")]
    assert os.path.getsize(Named()) == 1 and os.path.exists(pathlib.PurePosixPath("raw.bin"))
    assert real((rig.home / "raw.bin").read_bytes) == b"1"


def test_uninstall_puts_everything_back(rig: Rig) -> None:
    assert builtins.open is io.open and builtins.open is not ORIGINAL_OPEN
    assert all(getattr(os, name) is not original for name, original in ORIGINALS.items())
    assert pathlib.Path.touch is not ORIGINAL_TOUCH and shutil.rmtree is not ORIGINAL_RMTREE
    _files.uninstall()
    assert builtins.open is ORIGINAL_OPEN and io.open is ORIGINAL_OPEN
    assert all(getattr(os, name) is original for name, original in ORIGINALS.items())
    assert pathlib.Path.touch is ORIGINAL_TOUCH and shutil.rmtree is ORIGINAL_RMTREE
    with open("after.txt", "w") as f:
        f.write("here")
    assert (rig.here / "after.txt").read_text() == "here" and not (rig.home / "after.txt").exists()
    assert os.getcwd() == str(rig.here) and not _files.installed()


# -- open files


def _exercise(path: str, mode: str) -> list[Any]:
    """What a program sees doing a little of everything a mode allows."""
    seen: list[Any] = []
    binary = "b" in mode
    sample: Any = b"abc\ndef\n" if binary else "abc\ndef\n"
    with open(path, mode) as f:
        seen += [f.readable(), f.writable(), f.seekable(), f.mode, f.tell()]
        if f.writable():
            seen.append(f.write(sample))
            seen.append(f.tell())
        if f.readable():
            f.seek(0)
            seen += [f.readline(), f.read(), f.tell()]
            f.seek(2)
            seen.append(f.read(3))
        if f.writable():
            f.seek(0, os.SEEK_END)
            f.writelines([sample[:2], sample[:1]])
            seen.append(f.tell())
            if "a" not in mode:
                seen.append(f.truncate(5))
                seen.append(f.tell())
    seen.append(f.closed)
    return seen


@pytest.mark.parametrize(
    "mode", ["r", "r+", "w", "w+", "a", "a+", "x", "x+", "rb", "r+b", "wb", "w+b", "ab", "a+b", "xb", "x+b", "rt"]
)
def test_every_mode_acts_as_on_a_real_file(rig: Rig, mode: str) -> None:
    local, remote = rig.local / "f.txt", rig.home / "f.txt"
    if "x" not in mode:
        real(local.write_bytes, b"0123456789\n")
        real(remote.write_bytes, b"0123456789\n")
    expected = _exercise(str(local), mode)
    assert _exercise("f.txt", mode) == expected
    assert real(remote.read_bytes) == real(local.read_bytes)
    assert rig.link.ops["file.open"] == 1 and rig.link.files.open_count == 0


def test_text_encodings_newlines_and_errors(rig: Rig) -> None:
    text = "héllo\nwörld\r\nend\r"
    for encoding, newline, errors in [
        ("utf-16", "\r\n", None),
        ("utf-8-sig", None, None),
        ("latin-1", "", None),
        ("ascii", "\n", "replace"),
    ]:
        for path in (str(rig.local / "t.txt"), "t.txt"):
            with open(path, "w", encoding=encoding, newline=newline, errors=errors) as f:
                f.write(text)
        assert real((rig.home / "t.txt").read_bytes) == real((rig.local / "t.txt").read_bytes)
        read = []
        for path in (str(rig.local / "t.txt"), "t.txt"):
            with open(path, encoding=encoding, newline=newline, errors=errors) as f:
                read.append((list(f), f.encoding, f.newlines))
        assert read[0] == read[1]


def test_seek_tell_and_iteration_in_text(rig: Rig) -> None:
    body = "".join(f"line {i} ünïcode\n" for i in range(5000))
    real((rig.home / "lines.txt").write_text, body, encoding="utf-8")
    with open("lines.txt", encoding="utf-8") as f:
        assert f.readline() == "line 0 ünïcode\n"
        cookie = f.tell()
        assert [next(f) for _ in range(3)][-1] == "line 3 ünïcode\n"
        f.seek(cookie)
        assert f.readline() == "line 1 ünïcode\n"
        assert sum(1 for _ in f) == 4998
        f.seek(0)
        assert f.readlines() == body.splitlines(keepends=True)
        assert f.read() == ""


def test_append_mode_appends_at_home_and_tells_the_end(rig: Rig) -> None:
    real((rig.home / "log.txt").write_text, "0123456789")
    with open("log.txt", "a") as f:
        assert f.tell() == 10
        f.write("abc")
        assert f.tell() == 13
    with open("log.txt", "ab", buffering=0) as raw:
        assert raw.tell() == 13
        assert raw.write(b"de") == 2 and raw.tell() == 15
        raw.seek(0)
        raw.write(b"f")  # append mode writes at the end, wherever the position is
    with open("log.txt", "a+") as f:
        f.seek(0)
        assert f.read() == "0123456789abcdef"
    assert real((rig.home / "log.txt").read_text) == "0123456789abcdef"


def test_writes_are_posted_without_waiting_until_flush(rig: Rig) -> None:
    chunk = os.urandom(1024 * 1024)
    with open("out.bin", "wb") as f:
        waits = rig.link.waits
        for _ in range(4):
            f.write(chunk)
        assert rig.link.waits == waits  # nothing waited for the home
        assert rig.link.pending_write_bytes() == 4 * len(chunk)
        assert real((rig.home / "out.bin").stat).st_size == 0  # not applied yet
        f.flush()
        assert rig.link.pending == []
        assert real((rig.home / "out.bin").read_bytes) == chunk * 4
        f.write(b"tail")
    assert real((rig.home / "out.bin").read_bytes) == chunk * 4 + b"tail"  # close waits too


def test_write_behind_is_bounded(rig: Rig) -> None:
    with open("big.bin", "wb") as f:
        for _ in range(24):
            f.write(b"x" * (1024 * 1024))
    assert rig.link.most_pending_writes <= _files_raw.MAX_IN_FLIGHT + _files_raw.WRITE_CHUNK
    assert real((rig.home / "big.bin").stat).st_size == 24 * 1024 * 1024


def test_text_flush_makes_writes_visible(rig: Rig) -> None:
    with open("t.txt", "w", encoding="utf-8") as f:
        f.write("written")
        assert real((rig.home / "t.txt").read_text) == ""
        f.flush()
        assert real((rig.home / "t.txt").read_text) == "written"


def test_a_write_error_surfaces_at_the_next_flush_and_close(rig: Rig) -> None:
    f = open("w.bin", "wb")  # noqa: SIM115
    f.write(b"y" * (1024 * 1024))  # past the buffer: posted
    rig.link.files.close_all()  # the home lost the file
    with pytest.raises(OSError) as caught:
        f.flush()
    assert caught.value.errno == errno.EBADF
    with pytest.raises(OSError):
        f.close()
    assert f.closed


def test_sequential_reads_fetch_blocks_ahead(rig: Rig) -> None:
    data = os.urandom(5 * 1024 * 1024)
    real((rig.home / "in.bin").write_bytes, data)
    with open("in.bin", "rb") as f:
        first = f.read(4096)
        posted_ahead = [h for h, _ in rig.link.pending if h["op"] == "file.read"]
        ahead = [_files_raw.READ_BLOCK * n for n in range(1, _files_raw.READ_AHEAD + 1)]
        assert [h["offset"] for h in posted_ahead] == ahead  # asked before read() returned
        parts = [first]
        while part := f.read(4096):
            parts.append(part)
    assert b"".join(parts) == data
    assert rig.link.ops["file.read"] <= 6 + _files_raw.READ_AHEAD  # 4 KiB reads would take 1280 calls
    assert rig.line._replies == {}  # no answer left behind


def test_a_seek_discards_the_read_ahead(rig: Rig) -> None:
    data = os.urandom(4 * 1024 * 1024)
    real((rig.home / "in.bin").write_bytes, data)
    with open("in.bin", "rb") as f:
        assert f.read(10) == data[:10]
        ahead = [_files_raw.READ_BLOCK * n for n in range(1, _files_raw.READ_AHEAD + 1)]
        assert [h["offset"] for h, _ in rig.link.pending if h["op"] == "file.read"] == ahead
        far = 3 * 1024 * 1024 + 5
        real((rig.home / "in.bin").write_bytes, data[:far] + b"changed" + data[far + 7 :])
        f.seek(far)  # past what the buffer holds: the file is read afresh there
        assert f.read(7) == b"changed"
        f.seek(100)
        assert f.read(100) == data[100:200]
        assert f.read() == data[200:far] + b"changed" + data[far + 7 :]
    assert rig.line._replies == {} and rig.link.pending == []


def test_read_whole_file_and_readinto(rig: Rig) -> None:
    data = os.urandom(40 * 1024 * 1024 + 3)
    real((rig.home / "in.bin").write_bytes, data)
    assert Path("in.bin").read_bytes() == data
    assert rig.link.ops["file.read"] <= 4 + _files_raw.READ_AHEAD  # 16 MiB blocks, and those asked ahead
    with open("in.bin", "rb", buffering=0) as raw:
        buffer = bytearray(10)
        assert raw.readinto(buffer) == 10 and bytes(buffer) == data[:10]


def test_reads_see_writes_through_the_same_file(rig: Rig) -> None:
    with open("rw.bin", "w+b") as f:
        f.write(b"a" * 300_000)
        f.seek(0)
        assert f.read() == b"a" * 300_000
        f.seek(10)
        f.write(b"bb")
        f.seek(0)
        assert f.read(13) == b"a" * 10 + b"bb" + b"a"
        f.seek(0, os.SEEK_END)
        assert f.tell() == 300_000
        f.truncate(5)
        f.seek(0)
        assert f.read() == b"aaaaa"


def test_errors_are_the_real_ones(rig: Rig) -> None:
    real((rig.home / "d").mkdir)
    with pytest.raises(FileNotFoundError) as missing:
        open("missing.txt")  # noqa: SIM115
    assert missing.value.filename == "missing.txt" and missing.value.errno == errno.ENOENT
    with pytest.raises(IsADirectoryError):
        open("d")  # noqa: SIM115
    with pytest.raises(IsADirectoryError):
        open("d", "w")  # noqa: SIM115
    real((rig.home / "f").write_text, "x")
    with pytest.raises(FileExistsError):
        open("f", "x")  # noqa: SIM115
    with pytest.raises(FileExistsError):
        os.mkdir("d")
    with pytest.raises(NotADirectoryError):
        os.listdir("f")
    with pytest.raises(ValueError, match="invalid mode"):
        open("f", "rz")  # noqa: SIM115
    with pytest.raises(ValueError, match="exactly one of"):
        open("f", "rw")  # noqa: SIM115
    with pytest.raises(ValueError, match="unbuffered text"):
        open("f", buffering=0)  # noqa: SIM115
    with pytest.raises(ValueError, match="embedded null"):
        open("f\0")  # noqa: SIM115
    with open("f", "rb") as f, pytest.raises(io.UnsupportedOperation):
        f.fileno()
    with open("f") as text, pytest.raises(io.UnsupportedOperation):
        text.write("x")
    with pytest.raises(ValueError, match="closed file"):
        text.read()
    assert rig.link.files.open_count == 0


def test_permission_errors_are_the_real_ones(rig: Rig) -> None:
    locked = rig.home / "locked.txt"
    real(locked.write_text, "x")
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], check=False, capture_output=True).returncode != 0:
            pytest.fail(f"as root, this test needs chattr +i on the file system of {locked}")
    else:
        real(locked.chmod, 0o444)
    try:
        with pytest.raises(PermissionError):
            open("locked.txt", "w")  # noqa: SIM115
        assert real(locked.read_text) == "x"
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=False)


# -- os, os.path, pathlib, glob, shutil


def test_os_functions_act_at_home(rig: Rig) -> None:
    os.makedirs("a/b/c")
    assert real((rig.home / "a" / "b" / "c").is_dir)
    Path("a/f.txt").write_text("12345")
    st = os.stat("a/f.txt")
    assert st == real(lambda: os.stat(rig.home / "a" / "f.txt"))
    assert st.st_size == 5 and st.st_mtime_ns == real(lambda: os.stat(rig.home / "a" / "f.txt")).st_mtime_ns
    assert isinstance(st.st_mtime, float) and st.st_mtime == real(lambda: os.stat(rig.home / "a" / "f.txt")).st_mtime
    real(os.symlink, "f.txt", rig.home / "a" / "link")
    assert os.readlink("a/link") == "f.txt" and os.readlink(b"a/link") == b"f.txt"
    assert os.path.islink("a/link") and stat.S_ISLNK(os.lstat("a/link").st_mode)
    assert stat.S_ISREG(os.stat("a/link").st_mode)
    assert sorted(os.listdir("a")) == ["b", "f.txt", "link"]
    assert os.access("a/f.txt", os.R_OK) and not os.access("a/none", os.F_OK)
    os.utime("a/f.txt", (1_000_000, 2_000_000))
    assert real(lambda: os.stat(rig.home / "a" / "f.txt")).st_mtime == 2_000_000
    os.utime("a/f.txt", ns=(5, 3_000_000_000_000_000_123))
    assert os.path.getmtime("a/f.txt") == real(os.path.getmtime, rig.home / "a" / "f.txt")
    assert os.stat("a/f.txt").st_mtime_ns == 3_000_000_000_000_000_123
    os.truncate("a/f.txt", 2)
    assert os.path.getsize("a/f.txt") == 2
    os.chmod("a/f.txt", 0o640)
    assert real(lambda: os.stat(rig.home / "a" / "f.txt")).st_mode & 0o777 == 0o640
    os.rename("a/f.txt", "a/g.txt")
    os.replace("a/g.txt", "a/h.txt")
    assert real((rig.home / "a" / "h.txt").read_text) == "12"
    os.remove("a/h.txt")
    os.unlink("a/link")
    os.rmdir("a/b/c")
    os.removedirs("a/b")
    assert real(lambda: os.listdir(rig.home)) == []
    with pytest.raises(OSError) as caught:
        os.rename("x", str(rig.local / "x"))
    assert caught.value.errno == errno.EXDEV


def test_os_path_functions(rig: Rig) -> None:
    real((rig.home / "d").mkdir)
    real((rig.home / "d" / "f").write_bytes, b"abc")
    assert os.path.exists("d") and os.path.isdir("d") and not os.path.isfile("d")
    assert os.path.isfile("d/f") and os.path.getsize("d/f") == 3
    assert os.path.getmtime("d/f") == real(os.path.getmtime, rig.home / "d" / "f")
    assert not os.path.exists("nothing") and not os.path.exists(str(rig.here / "d"))
    assert os.path.abspath("d/f") == str(rig.home / "d" / "f")
    assert os.path.realpath("d/../d/f") == str(rig.home / "d" / "f")
    assert os.path.samefile("d/f", rig.home / "d" / "f")


def test_pathlib_at_home(rig: Rig) -> None:
    p = Path("data")
    p.mkdir()
    (p / "sub").mkdir(parents=True, exist_ok=True)
    (p / "a.txt").write_text("A")
    (p / "b.bin").write_bytes(b"B")
    (p / "sub" / "c.txt").touch()
    with (p / "a.txt").open("a") as f:
        f.write("!")
    assert (p / "a.txt").read_text() == "A!" and (p / "b.bin").read_bytes() == b"B"
    assert p.exists() and p.is_dir() and (p / "a.txt").is_file() and not (p / "zz").exists()
    assert sorted(x.name for x in p.iterdir()) == ["a.txt", "b.bin", "sub"]
    assert (p / "b.bin").stat().st_size == 1
    assert sorted(str(x) for x in p.glob("*.txt")) == ["data/a.txt"]
    assert sorted(str(x) for x in p.rglob("*.txt")) == ["data/a.txt", "data/sub/c.txt"]
    assert Path.cwd() == rig.home and p.absolute() == rig.home / "data"
    (p / "b.bin").rename(p / "c.bin")
    (p / "c.bin").unlink()
    (p / "sub" / "c.txt").unlink()
    (p / "sub").rmdir()
    assert real(lambda: sorted(os.listdir(rig.home / "data"))) == ["a.txt"]
    assert not real((rig.here / "data").exists)


def test_walk_and_glob_match_the_real_ones(rig: Rig) -> None:
    for folder in ("t", "t/x", "t/x/y", "t/z"):
        real((rig.home / folder).mkdir)
    for name in ("t/1.py", "t/x/2.py", "t/x/y/3.txt", "t/z/4.py"):
        real((rig.home / name).write_text, name)
    real(os.symlink, "x", rig.home / "t" / "lnk")
    walked = list(os.walk(str(rig.home / "t")))
    assert walked == real(lambda: list(os.walk(str(rig.home / "t"))))
    assert len(walked) == 4
    found_py = sorted(glob.glob("t/**/*.py", recursive=True))
    assert found_py == real(lambda: sorted(glob.glob("t/**/*.py", recursive=True, root_dir=rig.home)))
    assert {"t/1.py", "t/x/2.py", "t/z/4.py", "t/lnk/2.py"} <= set(found_py)
    assert sorted(glob.glob("*/*")) == real(lambda: sorted(glob.glob("*/*", root_dir=rig.home)))
    assert rig.link.ops["os.scandir"] >= 4
    with os.scandir("t") as entries:
        found = {e.name: e for e in entries}
    assert found["lnk"].is_symlink() and found["lnk"].is_dir() and not found["lnk"].is_dir(follow_symlinks=False)
    assert found["1.py"].is_file() and found["1.py"].stat().st_size == 6 and found["1.py"].inode() > 0
    assert os.fspath(found["1.py"]) == "t/1.py"


def test_shutil_copies_moves_and_removes_at_home(rig: Rig) -> None:
    real((rig.home / "tree" / "in").mkdir, parents=True)
    real((rig.home / "tree" / "in" / "f").write_bytes, b"data" * 100_000)
    shutil.copyfile("tree/in/f", "copy")
    assert real((rig.home / "copy").read_bytes) == b"data" * 100_000
    shutil.copytree("tree", "tree2")
    shutil.move("copy", "moved")
    shutil.rmtree("tree")
    assert real(lambda: sorted(os.listdir(rig.home))) == ["moved", "tree2"]
    assert real((rig.home / "tree2" / "in" / "f").read_bytes) == b"data" * 100_000
    shutil.rmtree("nothing", ignore_errors=True)
    with pytest.raises(FileNotFoundError):
        shutil.rmtree("nothing")
    # The error callbacks of 3.11 (onerror, with exc_info) and of 3.12 (onexc, with the exception) alike.
    seen: list[tuple[str, type[BaseException]]] = []
    shutil.rmtree("nothing", onerror=lambda function, path, info: seen.append((path, info[0])))
    shutil_rmtree: Any = shutil.rmtree
    shutil_rmtree("nothing", onexc=lambda function, path, exc: seen.append((path, type(exc))))
    assert seen == [("nothing", FileNotFoundError)] * 4  # scandir, then rmdir, each way


def test_the_proxy_sends_every_call_of_the_table_and_the_home_answers_as_it_says(rig: Rig) -> None:
    """The table of file calls cannot drift from the runner: each call in it is one the proxy sends, and the
    home's answer to it holds exactly the fields the table names."""
    os.mkdir("d")
    os.chdir("d")
    with open("f", "w+b") as f:
        f.write(b"abcdef")
        assert f.seek(0, os.SEEK_END) == 6  # the size at home
        f.truncate(3)
        f.seek(0)
        assert f.read() == b"abc"
    assert os.stat("f").st_size == 3 and os.listdir(".") == ["f"] and [e.name for e in os.scandir()] == ["f"]
    assert os.access("f", os.R_OK)
    os.utime("f", (1, 2))
    os.truncate("f", 1)
    os.chmod("f", 0o600)
    real(os.symlink, "f", rig.home / "d" / "link")
    assert os.readlink("link") == "f"
    os.rename("link", "link2")
    os.replace("link2", "link3")
    os.unlink("link3")
    os.remove("f")
    os.chdir("..")
    os.rmdir("d")
    assert set(rig.link.ops) == set(_fileops.CALLS)
    assert rig.link.answered == {op: set(call.answer) for op, call in _fileops.CALLS.items()}


# -- open files in checkpoints


class Holder(App):
    """An app that keeps files open between events."""


def _round_trip(app: Holder) -> Holder:
    restored = restore(capture(app, "holder"))
    assert isinstance(restored, Holder) and restored is not app
    return restored


@pytest.mark.parametrize("mode", ["r", "rb", "r+", "r+b", "w", "w+", "wb", "a", "a+b", "x", "xb"])
def test_a_real_open_file_comes_back_at_its_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.chdir(tmp_path)
    body = "".join(f"line {i}\n" for i in range(1000))
    if "x" not in mode:
        Path("data.txt").write_text(body)
    app = Holder()
    app.f = open("data.txt", mode)  # type: ignore[attr-defined]  # noqa: SIM115
    f: Any = app.f  # type: ignore[attr-defined]
    if f.readable():
        f.readline()
        f.readline()
    if f.writable():
        f.write(b"written\n" if "b" in mode else "written\n")  # not flushed: the checkpoint flushes it
    snapshot = capture(app, "holder")
    position = f.tell()
    monkeypatch.chdir(tmp_path.parent)  # the path was kept absolute
    restored = restore(snapshot)
    assert isinstance(restored, Holder)
    g: Any = restored.f  # type: ignore[attr-defined]
    try:
        assert g is not f and not g.closed and g.mode == f.mode and g.tell() == position
        assert g.name == str(tmp_path / "data.txt") and type(g) is type(f)
        if g.readable():
            assert g.read() == f.read()
        if g.writable():
            g.write(b"more\n" if "b" in mode else "more\n")
    finally:
        f.close()
        g.close()
    content = (tmp_path / "data.txt").read_text()
    if mode[0] == "a" or mode in ("r", "rb"):
        assert content.startswith(body)  # reopening never truncates
    if mode == "r+b":
        assert content == body[:14] + "written\n" + body[22:] + "more\n"
    if "+" in mode or mode[0] != "r":
        assert "written\n" in content and content.endswith("more\n")


def test_a_real_unbuffered_file_and_a_text_cookie_come_back(tmp_path: Path) -> None:
    path = tmp_path / "u.txt"
    path.write_text("ünï\ncödé\nlast\n", encoding="utf-8")
    app = Holder()
    app.raw = open(path, "rb", buffering=0)  # type: ignore[attr-defined]  # noqa: SIM115
    app.raw.read(3)  # type: ignore[attr-defined]
    app.text = open(path, encoding="utf-8", errors="replace")  # type: ignore[attr-defined]  # noqa: SIM115
    assert app.text.readline() == "ünï\n"  # type: ignore[attr-defined]
    restored = _round_trip(app)
    try:
        assert isinstance(restored.raw, io.FileIO) and restored.raw.tell() == 3  # type: ignore[attr-defined]
        assert restored.text.encoding == "utf-8" and restored.text.errors == "replace"  # type: ignore[attr-defined]
        assert restored.text.readline() == "cödé\n"  # type: ignore[attr-defined]
    finally:
        for holder in (app, restored):
            holder.raw.close()  # type: ignore[attr-defined]
            holder.text.close()  # type: ignore[attr-defined]


def test_a_closed_file_comes_back_closed(tmp_path: Path) -> None:
    app = Holder()
    with open(tmp_path / "c.txt", "w") as f:
        app.f = f  # type: ignore[attr-defined]
    restored = _round_trip(app)
    g: Any = restored.f  # type: ignore[attr-defined]
    assert g.closed and g.name == str(tmp_path / "c.txt") and g.mode == "w"
    with pytest.raises(ValueError, match="closed file"):
        g.write("x")


def test_a_file_that_is_gone_comes_back_closed_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "gone.txt"
    path.write_text("x")
    app = Holder()
    app.f = open(path)  # type: ignore[attr-defined]  # noqa: SIM115
    snapshot = capture(app, "holder")
    app.f.close()  # type: ignore[attr-defined]
    path.unlink()
    with pytest.warns(UserWarning, match="could not be reopened"):
        restored = restore(snapshot)
    assert restored.f.closed and restored.f.name == str(path)  # type: ignore[attr-defined]


def test_pipes_and_devices_are_still_refused(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    makers: list[Any] = [lambda: os.fdopen(read_end), lambda: open(os.devnull)]  # noqa: SIM115
    for make in makers:
        app = Holder()
        app.f = make()  # type: ignore[attr-defined]
        try:
            with pytest.raises(UnserialisableStateError, match=r"self\.f is an open file \(io\.TextIOWrapper\)"):
                capture(app, "holder")
        finally:
            app.f.close()  # type: ignore[attr-defined]


def test_a_file_at_home_comes_back_at_home(rig: Rig) -> None:
    real((rig.home / "data.txt").write_text, "a\r\nb\r\nc\r\n", newline="")
    app = Holder()
    app.f = open("data.txt", "r+", newline="")  # type: ignore[attr-defined]  # noqa: SIM115
    app.out = open("out.bin", "wb")  # type: ignore[attr-defined]  # noqa: SIM115
    app.log = open("log.txt", "a")  # type: ignore[attr-defined]  # noqa: SIM115
    assert app.f.readline() == "a\r\n"  # type: ignore[attr-defined]
    app.out.write(b"x" * 1000)  # type: ignore[attr-defined]
    app.log.write("one\n")  # type: ignore[attr-defined]
    restored = _round_trip(app)
    f, out, log = restored.f, restored.out, restored.log  # type: ignore[attr-defined]
    try:
        assert isinstance(_raw(f), _files.HomeRaw) and _raw(f).home_path == str(rig.home / "data.txt")
        assert f.name == "data.txt" or f.name == str(rig.home / "data.txt")
        assert f.readline() == "b\r\n"  # the position, and newline="" kept
        assert out.tell() == 1000 and log.tell() == 4
        out.write(b"y")
        log.write("two\n")
    finally:
        for file in (f, out, log, app.f, app.out, app.log):  # type: ignore[attr-defined]
            file.close()
    assert real((rig.home / "out.bin").read_bytes) == b"x" * 1000 + b"y"  # not truncated by the reopen
    assert real((rig.home / "log.txt").read_text) == "one\ntwo\n"
    assert not real((rig.here / "out.bin").exists)


def test_a_file_at_home_comes_back_at_home_after_a_move(rig: Rig, tmp_path: Path) -> None:
    real((rig.home / "data.bin").write_bytes, bytes(range(256)) * 10)
    app = Holder()
    app.f = open("data.bin", "rb")  # type: ignore[attr-defined]  # noqa: SIM115
    app.f.read(300)  # type: ignore[attr-defined]
    snapshot = capture(app, "holder")
    app.f.close()  # type: ignore[attr-defined]
    _files.uninstall()
    _files.install(rig.line, [str(rig.local)])  # another runner, with the same home
    restored = restore(snapshot)
    with restored.f as g:  # type: ignore[attr-defined]
        assert g.tell() == 300 and g.read(2) == bytes([300 % 256, 301 % 256])
        assert isinstance(g.raw, _files.HomeRaw)


def _raw(file: Any) -> Any:
    return file.buffer.raw
