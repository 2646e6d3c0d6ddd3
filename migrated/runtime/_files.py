"""The app's files at its home: while an app runs away from home, ``open``, ``pathlib`` and the common ``os`` and
``os.path`` calls act on the home host's file system.

``install`` puts proxies in place of ``builtins.open``/``io.open`` and of the ``os`` primitives that
``os.path``, ``pathlib``, ``glob``, ``os.walk`` and ``shutil`` look up at call time; ``uninstall`` puts the
originals back. Relative paths resolve against the app's working directory at home (``os.chdir`` moves it
there, ``os.getcwd`` tells it). Paths under the local roots (the Python installation, the app's code on this
host, temporary files, ``/proc``...) and file descriptors stay on this host.

A file opened at home is a ``HomeRaw`` (a handle at home, a position here) under the usual buffered and text
wrappers. Sequential reads fetch blocks and ask for the next one before returning (read-ahead); writes are
posted without waiting, a bounded amount at a time (write-behind), and an error surfaces at the next call that
waits; ``flush`` and ``close`` return once the home has applied every write. The calls are those of
``migrated.daemon._home_files``.

This module is imported by the runner only when an app runs away from home, and by a checkpoint that holds an
open file (``reopen``): it imports nothing heavy.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import io
import os
import stat as _stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from collections.abc import Callable, Iterator
    from typing import Any

    from migrated.runtime._home import Home

__all__ = [
    "BUFFER_SIZE",
    "HomeDirEntry",
    "HomeRaw",
    "closed_file",
    "default_local_roots",
    "install",
    "installed",
    "reopen",
    "suspended",
    "uninstall",
]

BUFFER_SIZE = 256 * 1024
"""The buffer of a file opened at home."""
READ_BLOCK = 1024 * 1024
"""What a sequential read fetches at a time, and asks for ahead."""
READ_AHEAD = 4
"""Blocks a sequential read keeps asked for ahead of the one it reads (one round trip each would cap it)."""
MAX_READ = 16 * 1024 * 1024
"""The most one ``file.read`` asks for and the home returns (a frame must stay well below ``_wire.MAX_FRAME``)."""
WRITE_CHUNK = 4 * 1024 * 1024
"""The most one call writes."""
MAX_IN_FLIGHT = 8 * 1024 * 1024
"""Bytes written but not yet confirmed by the home before a write waits."""

# The order of a stat's fields as it travels (the home's ``HomeFiles`` imports it from here; the three last may
# be null on some systems).
STAT_FIELDS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)
_STAT_EXTRAS = [name for name in STAT_FIELDS[7:] if hasattr(os.stat_result, name)]

_OS_NAMES = (
    "stat",
    "lstat",
    "listdir",
    "scandir",
    "mkdir",
    "rmdir",
    "remove",
    "unlink",
    "rename",
    "replace",
    "access",
    "utime",
    "truncate",
    "readlink",
    "getcwd",
    "getcwdb",
    "chdir",
    "chmod",
)

_real_open = builtins.open
_real_getcwd = os.getcwd
_proxy: _Proxy | None = None


def installed() -> bool:
    """Whether files resolve at home now."""
    return _proxy is not None


def install(home: Home, local_roots: list[str]) -> None:
    """Make files resolve at ``home`` (``home.cwd``: the app's working directory there), except under
    ``local_roots`` and for file descriptors."""
    global _proxy
    uninstall()
    proxy = _Proxy(home, local_roots)
    proxy.patch()
    _proxy = proxy


def uninstall() -> None:
    """Put the real ``open`` and ``os`` functions back (files opened at home stay usable while the line is)."""
    global _proxy
    if _proxy is not None:
        _proxy.unpatch()
        _proxy = None


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """The real ``open`` and ``os`` functions for a while (code of the runner that must act on this host)."""
    proxy = _proxy
    if proxy is None:
        yield
        return
    proxy.unpatch()
    try:
        yield
    finally:
        proxy.patch()


def default_local_roots(code_dir: str) -> list[str]:
    """What stays on this host: the Python installation, the app's code here, the migrated package, temporary
    files, and the kernel's ``/proc``, ``/sys`` and ``/dev``."""
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.__file__)]
    site = sys.modules.get("site")
    if site is not None:
        roots += [*site.getsitepackages(), site.getusersitepackages()]
    roots += [code_dir, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    roots += [os.environ.get(name, "") for name in ("TMPDIR", "TEMP", "TMP")]
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        roots.append(tempfile.gettempdir())
    roots += ["/tmp", "/var/tmp", "/proc", "/sys", "/dev"]
    found: list[str] = []
    for root in roots:
        if not root:
            continue
        for path in (_absolute(root), os.path.realpath(root) if _proxy is None else _absolute(root)):
            if path not in found and path != os.sep:
                found.append(path)
    return found


def reopen(
    path: str | bytes,
    mode: str,
    position: int,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    buffering: int = -1,
) -> Any:
    """Open ``path`` again for a checkpoint that held it open: at home when files resolve there, without
    truncating or requiring it to be new, and at ``position`` (for a text file, a cookie its ``tell`` gave)."""
    if _proxy is not None:
        file = _proxy.open(path, mode, buffering, encoding, errors, newline, keep=True)
    else:
        file = _real_open(path, mode, buffering, encoding, errors, newline, opener=_keep_opener)
    try:
        file.seek(position)
    except BaseException:
        file.close()
        raise
    return file


def closed_file(name: Any, mode: str, text: bool) -> Any:
    """A closed file of the same kind, name and mode (a checkpoint held it closed, or it could not be reopened)."""
    try:
        parsed = _Mode(mode.replace("t", "").replace("b", "") + ("" if text else "b"))
    except ValueError:
        parsed = _Mode("r" if text else "rb")
    file = _wrap(_ClosedRaw(name, parsed), parsed, -1, None, None, None)
    file.close()
    return file


def _keep_opener(path: str, flags: int) -> int:
    return os.open(path, flags & ~(os.O_TRUNC | os.O_EXCL), 0o666)


def _absolute(path: str) -> str:
    return os.path.normpath(os.path.join(_real_getcwd(), os.fsdecode(path)))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


# -- modes


class _Mode:
    """An ``open`` mode, checked as ``open`` checks it."""

    def __init__(self, mode: str) -> None:
        if not isinstance(mode, str):
            raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
        chars = set(mode)
        if chars - set("axrwb+t") or len(mode) > len(chars):
            raise ValueError(f"invalid mode: {mode!r}")
        self.text = "b" not in chars
        if "t" in chars and not self.text:
            raise ValueError("can't have text and binary mode at once")
        kinds = chars & set("rwax")
        if len(kinds) != 1:
            raise ValueError("must have exactly one of create/read/write/append mode")
        self.mode = mode
        self.kind = kinds.pop()
        self.plus = "+" in chars
        self.readable = self.kind == "r" or self.plus
        self.writable = self.kind != "r" or self.plus
        self.append = self.kind == "a"

    def flags(self, keep: bool) -> list[str]:
        """The home's ``file.open`` flags (``keep``: never truncate, never insist on a new file)."""
        flags = ["read"] if self.readable else []
        if self.writable:
            flags.append("write")
        if self.kind != "r":
            flags.append("create")
        if self.kind == "w" and not keep:
            flags.append("truncate")
        if self.kind == "x" and not keep:
            flags.append("exclusive")
        if self.append:
            flags.append("append")
        return flags

    def raw_mode(self) -> str:
        """The mode a ``FileIO`` opened so would report."""
        if self.kind == "x":
            return "xb+" if self.readable else "xb"
        if self.append:
            return "ab+" if self.readable else "ab"
        if self.readable:
            return "rb+" if self.writable else "rb"
        return "wb"


def _wrap(
    raw: io.RawIOBase, mode: _Mode, buffering: int, encoding: str | None, errors: str | None, newline: str | None
) -> Any:
    """``raw`` under the buffered and text layers ``open`` would give for ``mode``."""
    if not mode.text:
        if encoding is not None:
            raise ValueError("binary mode doesn't take an encoding argument")
        if errors is not None:
            raise ValueError("binary mode doesn't take an errors argument")
        if newline is not None:
            raise ValueError("binary mode doesn't take a newline argument")
    if buffering == 0:
        if mode.text:
            raise ValueError("can't have unbuffered text I/O")
        return raw
    size = BUFFER_SIZE if buffering in (-1, 1) else buffering
    if size < 0:
        raise ValueError("invalid buffering size")
    buffered: Any
    if mode.readable and mode.writable:
        buffered = _HomeRandom(raw, size)
    elif mode.writable:
        buffered = _HomeWriter(raw, size)
    else:
        buffered = _HomeReader(raw, size)
    if not mode.text:
        return buffered
    text = io.TextIOWrapper(buffered, encoding, errors, newline, line_buffering=buffering == 1)
    text.mode = mode.mode  # type: ignore[misc]  # as open() does
    text._migrated_newline = newline  # type: ignore[attr-defined]  # for a checkpoint: TextIOWrapper hides it
    return text


# -- files at home


class HomeRaw(io.RawIOBase):
    """A file open at the app's home: a handle there, the position here, read-ahead and write-behind."""

    _migrated_reopen = True  # the checkpoint saves it as its home path, mode and position

    def __init__(self, home: Home, answer: dict[str, Any], name: Any, mode: _Mode) -> None:
        super().__init__()
        self.name = name
        self.mode = mode.raw_mode()
        self.home_path = str(answer["path"])
        self.regular = bool(answer.get("regular", True))
        self._home = home
        self._handle = int(answer["handle"])
        self._readable, self._writable, self._append = mode.readable, mode.writable, mode.append
        self._end = int(answer.get("size", 0))  # the size of the file as far as this handle knows it
        self._pos = self._end if mode.append else 0
        self._block = b""  # bytes read from the file at _block_at
        self._block_at = 0
        self._ahead: list[tuple[int, int, int]] = []  # posted reads, in order: request, offset, size
        self._writes: collections.deque[tuple[int, int]] = collections.deque()  # posted: request, bytes
        self._in_flight = 0
        self._dropped: list[int] = []  # requests whose answers nobody wants

    def __repr__(self) -> str:
        return f"<migrated.HomeRaw name={self.name!r} mode={self.mode!r} at home {self.home_path!r}>"

    # -- what it is

    def readable(self) -> bool:
        self._check_open()
        return self._readable

    def writable(self) -> bool:
        self._check_open()
        return self._writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def isatty(self) -> bool:
        self._check_open()
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a file at the app's home has no descriptor on this host")

    # -- position

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._pos + offset
        elif whence == os.SEEK_END:
            position = self._size() + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if position < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._forget_reads()  # another reader may have changed the file: read it afresh
        self._pos = position
        return position

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        size = self._pos if size is None else size
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._forget_reads()
        self._call("file.truncate", {"size": size})
        self._end = size
        return size

    # -- reading

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        view = memoryview(buffer).cast("B")
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        self._check_open()
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        parts = []
        while part := self._read(MAX_READ):
            parts.append(part)
        return b"".join(parts)

    def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes from the position on (fewer: the end of a block; none: the end of the file)."""
        if size <= 0:
            return b""
        start = self._pos - self._block_at
        if not 0 <= start < len(self._block):
            self._fetch(size)
            start = self._pos - self._block_at
            if not 0 <= start < len(self._block):
                return b""
        data = self._block[start : start + size]
        self._pos += len(data)
        return data

    def _fetch(self, size: int) -> None:
        """Make ``_block`` the bytes at the position: from the read asked ahead, or asked now."""
        sequential = self._pos == self._block_at + len(self._block) or self._pos == 0
        if self._ahead and self._ahead[0][1] == self._pos:
            request, _, asked = self._ahead.pop(0)
            _, data = self._collect(request)
        else:
            self._forget_ahead()
            asked = min(max(size, READ_BLOCK if sequential else size), MAX_READ)
            _, data = self._call("file.read", {"offset": self._pos, "size": asked})
        self._block, self._block_at = data, self._pos
        if sequential and len(data) == asked:
            offset = self._ahead[-1][1] + self._ahead[-1][2] if self._ahead else self._pos + asked
            while len(self._ahead) < READ_AHEAD:
                request = self._home.post("file.read", {"handle": self._handle, "offset": offset, "size": asked})
                self._ahead.append((request, offset, asked))
                offset += asked

    def _forget_ahead(self) -> None:
        self._dropped.extend(request for request, _, _ in self._ahead)
        self._ahead.clear()

    def _forget_reads(self) -> None:
        self._block, self._block_at = b"", 0
        self._forget_ahead()

    # -- writing

    def write(self, data: Any) -> int:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        view = memoryview(data).cast("B")
        self._forget_reads()
        for start in range(0, len(view), WRITE_CHUNK):
            chunk = bytes(view[start : start + WRITE_CHUNK])  # a copy: the caller may reuse its buffer
            offset = None if self._append else self._pos
            request = self._home.post("file.write", {"handle": self._handle, "offset": offset}, chunk)
            self._writes.append((request, len(chunk)))
            self._in_flight += len(chunk)
            if self._append:
                self._end += len(chunk)
                self._pos = self._end
            else:
                self._pos += len(chunk)
                self._end = max(self._end, self._pos)
            while self._in_flight > MAX_IN_FLIGHT:
                self._settle_one()
        return len(view)

    def flush(self) -> None:
        """Return once the home applied every write (an error of one of them is raised here)."""
        super().flush()
        self._settle()

    def _settle_one(self) -> None:
        request, size = self._writes.popleft()
        self._in_flight -= size
        header, _ = self._home.collect(request)
        if self._append and "end" in header:
            self._end = max(self._end, int(header["end"]))

    def _settle(self) -> None:
        """Collect every posted write; raise the first error once all are in."""
        failure: OSError | None = None
        while self._writes:
            try:
                self._settle_one()
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    # -- closing

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._settle()
        finally:
            try:
                self._forget_reads()
                self._call("file.close", {})
            finally:
                self._writes.clear()
                super().close()

    # -- calls

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _call(self, op: str, args: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        return self._collect(self._home.post(op, {"handle": self._handle, **args}))

    def _collect(self, request: int) -> tuple[dict[str, Any], bytes]:
        """The answer to ``request``; the home answers in order, so every call posted before it is answered too:
        collect the writes (raising the first error) and the unwanted reads."""
        try:
            answer = self._home.collect(request)
        finally:
            dropped, self._dropped = self._dropped, []
            for unwanted in dropped:
                if unwanted < request:
                    with contextlib.suppress(OSError):  # the answer to a read nobody wants
                        self._home.collect(unwanted)
                else:
                    self._dropped.append(unwanted)
        while self._writes and self._writes[0][0] < request:
            self._settle_one()
        return answer

    def _size(self) -> int:
        header, _ = self._call("file.size", {})
        return int(header["size"])


class _HomeReader(io.BufferedReader):
    _migrated_reopen = True


class _HomeWriter(io.BufferedWriter):
    _migrated_reopen = True

    def flush(self) -> None:
        """Write the buffer and wait until the home applied it (``BufferedWriter.flush`` stops at the raw file)."""
        super().flush()
        self.raw.flush()


class _HomeRandom(io.BufferedRandom):
    _migrated_reopen = True

    def flush(self) -> None:
        """Write the buffer and wait until the home applied it."""
        super().flush()
        self.raw.flush()


class _ClosedRaw(io.RawIOBase):
    """Stands for a file a checkpoint could only give back closed."""

    def __init__(self, name: Any, mode: _Mode) -> None:
        super().__init__()
        self.name = name
        self.mode = mode.raw_mode()
        self._readable, self._writable = mode.readable, mode.writable

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return 0


# -- directories


class HomeDirEntry:
    """What ``os.scandir`` gives for an entry of a directory at home (``os.DirEntry`` cannot be made)."""

    __slots__ = ("_lstat", "_stat", "name", "path")

    def __init__(self, name: Any, path: Any, lstat: os.stat_result, target: os.stat_result | None) -> None:
        self.name = name
        self.path = path
        self._lstat = lstat
        self._stat = target

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"

    def __fspath__(self) -> Any:
        return self.path

    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self._lstat.st_mode)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        found = self._followed(follow_symlinks)
        return found is not None and _stat.S_ISDIR(found.st_mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        found = self._followed(follow_symlinks)
        return found is not None and _stat.S_ISREG(found.st_mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        found = self._followed(follow_symlinks)
        if found is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
        return found

    def inode(self) -> int:
        return self._lstat.st_ino

    def _followed(self, follow: bool) -> os.stat_result | None:
        return self._stat if follow and self.is_symlink() else self._lstat


class _Entries:
    """``os.scandir``'s iterator over entries at home: an iterator and a context manager."""

    def __init__(self, entries: list[HomeDirEntry]) -> None:
        self._entries: Iterator[HomeDirEntry] = iter(entries)

    def __iter__(self) -> _Entries:
        return self

    def __next__(self) -> HomeDirEntry:
        return next(self._entries)

    def __enter__(self) -> _Entries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._entries = iter(())


def _stat_result(values: list[Any]) -> os.stat_result:
    fields = dict(zip(STAT_FIELDS, values, strict=False))
    seconds = [int(fields[name]) // 1_000_000_000 for name in ("st_atime_ns", "st_mtime_ns", "st_ctime_ns")]
    visible = [int(fields[name]) for name in STAT_FIELDS[:7]]
    extras = {name: fields[name] for name in _STAT_EXTRAS if fields.get(name) is not None}
    return os.stat_result((*visible, *seconds), extras)


# -- the proxy


class _Proxy:
    """The functions that stand in for ``open`` and ``os``'s while files resolve at home."""

    def __init__(self, home: Home, local_roots: list[str]) -> None:
        self.home = home
        self.cwd = os.path.normpath(home.cwd)
        self.home_cwd = self.cwd
        self.roots = [_absolute(root) for root in local_roots if root and _absolute(root) != os.sep]
        self.real: dict[str, Any] = {name: getattr(os, name) for name in _OS_NAMES}
        self._saved: list[tuple[object, str, object]] = []

    # -- patching

    def patch(self) -> None:
        import pathlib  # both are there in almost any app; only an app away from home pays for them here
        import shutil

        opener = self.open
        self._set(builtins, "open", opener)
        self._set(io, "open", opener)
        for name in _OS_NAMES:
            self._set(os, name, getattr(self, "os_" + name))
        if hasattr(os, "listxattr"):
            self.real["listxattr"] = os.listxattr
            self._set(os, "listxattr", self.os_listxattr)
        proxy = self

        def touch(path: Any, mode: int = 0o666, exist_ok: bool = True) -> None:
            proxy.touch(path, mode, exist_ok)

        self.real["touch"] = pathlib.Path.touch
        self._set(pathlib.Path, "touch", touch)
        self.real["rmtree"] = shutil.rmtree
        self._set(shutil, "rmtree", self._rmtree)

    def unpatch(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _set(self, owner: object, name: str, value: object) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    # -- where a path resolves

    def route(self, path: Any) -> tuple[str | None, Any]:
        """``(path at home, None)`` for a path that resolves at home, ``(None, path for the real call)`` for one
        that stays on this host."""
        if isinstance(path, int):
            return None, path
        given = os.fspath(path)
        text = os.fsdecode(given)
        if "\0" in text:
            raise ValueError("embedded null byte")
        full = os.path.join(self.cwd, text)
        if not self._local(os.path.normpath(full)):
            return full, None
        if os.path.isabs(text):
            return None, given
        return None, os.fsencode(full) if isinstance(given, bytes) else full

    def _local(self, path: str) -> bool:
        """Whether ``path`` stays here: the longest root that holds it is a local root, not the cwd at home."""
        local = max((len(root) for root in self.roots if _under(path, root)), default=-1)
        home = max((len(cwd) for cwd in (self.cwd, self.home_cwd) if _under(path, cwd)), default=-1)
        return local >= 0 and local >= home

    def call(self, op: str, args: dict[str, Any], *names: Any) -> dict[str, Any]:
        """A call at home; its error names the paths as the app gave them."""
        try:
            header, _ = self.home.call(op, args)
        except OSError as exc:
            if names:
                exc.filename = names[0]
            if len(names) > 1:
                exc.filename2 = names[1]
            raise
        return header

    # -- open

    def open(
        self,
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        closefd: bool = True,
        opener: Callable[[str, int], int] | None = None,
        *,
        keep: bool = False,
    ) -> Any:
        """``open``, at home for a path that resolves there (``keep``: reopen, never truncate)."""
        at_home, local = (None, file) if opener is not None or not closefd else self.route(file)
        if at_home is None:
            real_opener = _keep_opener if keep and opener is None and not isinstance(local, int) else opener
            return _real_open(local, mode, buffering, encoding, errors, newline, closefd, real_opener)
        parsed = _Mode(mode)
        if not parsed.text and buffering == 1:
            import warnings

            warnings.warn(
                "line buffering (buffering=1) isn't supported in binary mode, the default buffer size will be used",
                RuntimeWarning,
                stacklevel=2,
            )
        name = os.fspath(file)
        answer = self.call("file.open", {"path": at_home, "flags": parsed.flags(keep), "perm": 0o666}, name)
        raw = HomeRaw(self.home, answer, name, parsed)
        try:
            return _wrap(raw, parsed, buffering, encoding, errors, newline)
        except BaseException:
            raw.close()
            raise

    # -- os

    def os_stat(self, path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            result: os.stat_result = self.real["stat"](local, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
            return result
        header = self.call("os.stat", {"path": at_home, "follow": follow_symlinks}, os.fspath(path))
        return _stat_result(header["stat"])

    def os_lstat(self, path: Any, *, dir_fd: int | None = None) -> os.stat_result:
        return self.os_stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def os_listdir(self, path: Any = None) -> list[Any]:
        path = "." if path is None else path
        at_home, local = self.route(path)
        if at_home is None:
            names: list[Any] = self.real["listdir"](local)
            return names
        header = self.call("os.listdir", {"path": at_home}, os.fspath(path))
        if isinstance(os.fspath(path), bytes):
            return [os.fsencode(name) for name in header["names"]]
        return list(header["names"])

    def os_scandir(self, path: Any = None) -> Any:
        path = "." if path is None else path
        at_home, local = self.route(path)
        if at_home is None:
            return self.real["scandir"](local)
        given = os.fspath(path)
        header = self.call("os.scandir", {"path": at_home}, given)
        entries = []
        for name, lstat, target in header["entries"]:
            shown = os.fsencode(name) if isinstance(given, bytes) else name
            stats = (_stat_result(lstat), _stat_result(target) if target is not None else None)
            entries.append(HomeDirEntry(shown, os.path.join(given, shown), *stats))
        return _Entries(entries)

    def os_mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            self.real["mkdir"](local, mode, dir_fd=dir_fd)
        else:
            self.call("os.mkdir", {"path": at_home, "perm": mode}, os.fspath(path))

    def os_rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._path_call("rmdir", "os.rmdir", path, dir_fd)

    def os_remove(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._path_call("remove", "os.unlink", path, dir_fd)

    def os_unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._path_call("unlink", "os.unlink", path, dir_fd)

    def _path_call(self, name: str, op: str, path: Any, dir_fd: int | None) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            self.real[name](local, dir_fd=dir_fd)
        else:
            self.call(op, {"path": at_home}, os.fspath(path))

    def os_rename(self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        self._move("rename", src, dst, src_dir_fd, dst_dir_fd)

    def os_replace(self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        self._move("replace", src, dst, src_dir_fd, dst_dir_fd)

    def _move(self, name: str, src: Any, dst: Any, src_dir_fd: int | None, dst_dir_fd: int | None) -> None:
        if src_dir_fd is not None or dst_dir_fd is not None:
            (src_home, src_local), (dst_home, dst_local) = (None, src), (None, dst)
        else:
            (src_home, src_local), (dst_home, dst_local) = self.route(src), self.route(dst)
        if src_home is None and dst_home is None:
            self.real[name](src_local, dst_local, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        elif src_home is None or dst_home is None:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), None, os.fspath(dst))
        else:
            self.call("os." + name, {"src": src_home, "dst": dst_home}, os.fspath(src), os.fspath(dst))

    def os_access(
        self,
        path: Any,
        mode: int,
        *,
        dir_fd: int | None = None,
        effective_ids: bool = False,
        follow_symlinks: bool = True,
    ) -> bool:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            ok: bool = self.real["access"](
                local, mode, dir_fd=dir_fd, effective_ids=effective_ids, follow_symlinks=follow_symlinks
            )
            return ok
        args = {"path": at_home, "mode": mode, "follow": follow_symlinks, "effective": effective_ids}
        return bool(self.call("os.access", args, os.fspath(path))["ok"])

    def os_utime(
        self,
        path: Any,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        dir_fd: int | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            kwargs: dict[str, Any] = {} if ns is None else {"ns": ns}
            self.real["utime"](local, times, dir_fd=dir_fd, follow_symlinks=follow_symlinks, **kwargs)
            return
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None and (not isinstance(times, tuple) or len(times) != 2):
            raise TypeError("utime: 'times' must be either a tuple of two ints or None")
        if ns is not None and (not isinstance(ns, tuple) or len(ns) != 2):
            raise TypeError("utime: 'ns' must be a tuple of two ints")
        args = {"path": at_home, "follow": follow_symlinks}
        args.update({"times": list(times)} if times is not None else {"ns": list(ns)} if ns is not None else {})
        self.call("os.utime", args, os.fspath(path))

    def os_truncate(self, path: Any, length: int) -> None:
        at_home, local = self.route(path)
        if at_home is None:
            self.real["truncate"](local, length)
        else:
            self.call("os.truncate", {"path": at_home, "size": length}, os.fspath(path))

    def os_readlink(self, path: Any, *, dir_fd: int | None = None) -> Any:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            return self.real["readlink"](local, dir_fd=dir_fd)
        given = os.fspath(path)
        target = str(self.call("os.readlink", {"path": at_home}, given)["target"])
        return os.fsencode(target) if isinstance(given, bytes) else target

    def os_getcwd(self) -> str:
        return self.cwd

    def os_getcwdb(self) -> bytes:
        return os.fsencode(self.cwd)

    def os_chdir(self, path: Any) -> None:
        at_home, local = self.route(path)
        if at_home is None:
            self.real["chdir"](local)
            return
        self.cwd = os.path.normpath(str(self.call("os.chdir", {"path": at_home}, os.fspath(path))["cwd"]))

    def os_chmod(self, path: Any, mode: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            self.real["chmod"](local, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        else:
            self.call("os.chmod", {"path": at_home, "perm": mode, "follow": follow_symlinks}, os.fspath(path))

    def os_listxattr(self, path: Any = None, *, follow_symlinks: bool = True) -> list[str]:
        """Extended attributes are not carried: at home, a file system without them (``shutil`` copes)."""
        at_home, local = self.route("." if path is None else path)
        if at_home is None:
            names: list[str] = self.real["listxattr"](local, follow_symlinks=follow_symlinks)
            return names
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), os.fspath("." if path is None else path))

    # -- what does not go through the primitives

    def touch(self, target: Any, mode: int = 0o666, exist_ok: bool = True) -> None:
        """``Path.touch``, which opens with ``os.open``."""
        if self.route(target)[0] is None:
            self.real["touch"](target, mode, exist_ok)
            return
        if exist_ok:
            try:
                self.os_utime(target)
            except FileNotFoundError:
                pass
            else:
                return
        self.open(target, "ab" if exist_ok else "xb").close()

    def _rmtree(
        self,
        path: Any,
        ignore_errors: bool = False,
        onerror: Any = None,
        *,
        onexc: Any = None,
        dir_fd: int | None = None,
    ) -> None:
        """``shutil.rmtree``, which works with descriptors: at home, a path-based walk of its own. Takes the
        3.11 ``onerror`` and the 3.12 ``onexc`` alike."""
        if dir_fd is not None or self.route(path)[0] is None:
            more = {"onexc": onexc} if onexc is not None else {}
            self.real["rmtree"](path, ignore_errors, onerror, dir_fd=dir_fd, **more)
            return
        if ignore_errors:
            failed: Any = _ignore
        elif onexc is not None:
            failed = onexc
        elif onerror is not None:
            failed = lambda function, where, exc: onerror(function, where, (type(exc), exc, exc.__traceback__))  # noqa: E731
        else:
            failed = _reraise
        if os.path.islink(path):
            failed(os.path.islink, path, OSError("Cannot call rmtree on a symbolic link"))
            return
        _remove_tree(path, failed)


def _remove_tree(path: Any, failed: Any) -> None:
    """Remove ``path`` and what it holds through the (patched) ``os`` calls; ``failed(function, path, exc)``."""
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        failed(os.scandir, path, exc)
        entries = []
    for entry in entries:
        try:
            folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            folder = False
        if folder:
            _remove_tree(entry.path, failed)
            continue
        try:
            os.unlink(entry.path)
        except OSError as exc:
            failed(os.unlink, entry.path, exc)
    try:
        os.rmdir(path)
    except OSError as exc:
        failed(os.rmdir, path, exc)


def _ignore(*args: object) -> None:
    pass


def _reraise(function: object, path: object, exc: BaseException) -> None:
    raise exc  # shutil's own default: raise the error
