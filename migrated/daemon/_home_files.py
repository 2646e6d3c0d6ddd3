"""The home side of an away app's files: the ``file.*`` and ``os.*`` calls its runner sends, carried out on this
host's file system.

The runner (``migrated.runtime._files``) keeps the app's working directory and positions; every call names an
absolute path or a handle and an explicit offset, so a call means the same whenever it runs. Calls of one app
arrive in order and are answered in order (``AppHome`` chains them), which is what lets the runner post writes
without waiting.

Vocabulary (args -> answer; data travels beside the JSON header)::

    file.open      {path, flags: [read|write|create|truncate|exclusive|append], perm}
                   -> {handle, size, regular, path}
    file.read      {handle, offset, size}               -> {}, data (short only at the end of the file)
    file.write     {handle, offset: int | null}, data   -> {end}   (offset null: append)
    file.truncate  {handle, size}                       -> {}
    file.size      {handle}                             -> {size}
    file.close     {handle}                             -> {}
    os.stat        {path, follow}                       -> {stat}
    os.listdir     {path}                               -> {names}
    os.scandir     {path}                               -> {entries: [[name, lstat, stat | null], ...]}
    os.mkdir       {path, perm}                         -> {}
    os.rmdir       {path}                               -> {}
    os.unlink      {path}                               -> {}
    os.rename      {src, dst}                           -> {}
    os.replace     {src, dst}                           -> {}
    os.access      {path, mode, follow, effective}      -> {ok}
    os.utime       {path, times | ns | neither, follow} -> {}
    os.truncate    {path, size}                         -> {}
    os.readlink    {path}                               -> {target}
    os.chdir       {path}                               -> {cwd}   (checks it; the runner keeps the cwd)
    os.chmod       {path, perm, follow}                 -> {}

A stat is the list ``STAT_FIELDS``. Errors are ``OSError``: the caller turns them into error answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from migrated.runtime._files import MAX_READ, STAT_FIELDS  # both ends share them; the runner's side is light

__all__ = ["MAX_OPEN", "MAX_READ", "STAT_FIELDS", "HomeFiles", "stat_list"]

MAX_OPEN = 1024
"""Files one app may hold open at its home."""

_FLAGS = {
    "create": os.O_CREAT,
    "truncate": os.O_TRUNC,
    "exclusive": os.O_EXCL,
    "append": os.O_APPEND,
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def stat_list(result: os.stat_result) -> list[Any]:
    """A stat result as it travels."""
    return [getattr(result, name, None) for name in STAT_FIELDS]


class HomeFiles:
    """The files one app has open here, and the calls that act on this host's file system for it."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self._files: dict[int, int] = {}  # handle -> descriptor
        self._next = 0
        self._lock = threading.Lock()
        self._ops: dict[str, Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]] = {
            "file.open": self._open,
            "file.read": self._read,
            "file.write": self._write,
            "file.truncate": self._truncate,
            "file.size": self._size,
            "file.close": self._close,
            "os.stat": self._stat,
            "os.listdir": self._listdir,
            "os.scandir": self._scandir,
            "os.mkdir": self._mkdir,
            "os.rmdir": self._rmdir,
            "os.unlink": self._unlink,
            "os.rename": self._rename,
            "os.replace": self._replace,
            "os.access": self._access,
            "os.utime": self._utime,
            "os.truncate": self._truncate_path,
            "os.readlink": self._readlink,
            "os.chdir": self._chdir,
            "os.chmod": self._chmod,
        }

    @property
    def open_count(self) -> int:
        """How many files the app holds open here."""
        return len(self._files)

    def handle(self, op: str, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        """Carry out one call (blocking); raises ``OSError`` for the error answer."""
        method = self._ops.get(op)
        if method is None:
            raise OSError(errno.ENOSYS, f"unknown file call {op!r}")
        if not isinstance(args, dict):
            raise OSError(errno.EINVAL, f"malformed {op}: its arguments are not an object")
        with self._lock:
            return method(args, data)

    def close_all(self) -> None:
        """Close every file the app has open here."""
        with self._lock:
            files, self._files = self._files, {}
        for fd in files.values():
            with contextlib.suppress(OSError):  # already gone; nothing to flush at this level
                os.close(fd)

    # -- arguments

    def _path(self, args: dict[str, Any], key: str = "path") -> str:
        value = args.get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            raise OSError(errno.EINVAL, f"malformed call: {key!r} must be a non-empty path")
        return os.path.join(self.cwd, value)

    def _fd(self, args: dict[str, Any]) -> int:
        fd = self._files.get(_int(args, "handle"))
        if fd is None:
            raise OSError(errno.EBADF, "no such open file at the app's home")
        return fd

    # -- open files

    def _open(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        path = self._path(args)
        flags = args.get("flags")
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise OSError(errno.EINVAL, "malformed file.open: 'flags' must be a list of names")
        bits = _open_bits(set(flags))
        perm = _int(args, "perm", 0o666)
        if len(self._files) >= MAX_OPEN:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
        fd = os.open(path, bits | _CLOEXEC, perm)
        try:
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        self._next += 1
        self._files[self._next] = fd
        regular = stat.S_ISREG(info.st_mode)
        answer = {"handle": self._next, "size": info.st_size, "regular": regular, "path": os.path.normpath(path)}
        return answer, b""

    def _read(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        fd = self._fd(args)
        offset, size = _int(args, "offset"), _int(args, "size")
        if offset < 0 or not 0 <= size <= MAX_READ:
            raise OSError(errno.EINVAL, f"malformed file.read: offset {offset}, size {size}")
        parts = []
        while size > 0:
            part = os.pread(fd, size, offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
            size -= len(part)
        return {}, b"".join(parts)

    def _write(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        fd = self._fd(args)
        offset = args.get("offset")
        view = memoryview(data)
        if offset is None:
            while view:
                view = view[os.write(fd, view) :]
            return {"end": os.lseek(fd, 0, os.SEEK_CUR)}, b""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise OSError(errno.EINVAL, "malformed file.write: 'offset' must be a position or null")
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        return {"end": offset}, b""

    def _truncate(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        fd = self._fd(args)
        size = _int(args, "size")
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.ftruncate(fd, size)
        return {}, b""

    def _size(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        return {"size": os.fstat(self._fd(args)).st_size}, b""

    def _close(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        fd = self._fd(args)
        del self._files[_int(args, "handle")]
        os.close(fd)
        return {}, b""

    # -- paths

    def _stat(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        result = os.stat(self._path(args), follow_symlinks=_bool(args, "follow", True))
        return {"stat": stat_list(result)}, b""

    def _listdir(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        return {"names": os.listdir(self._path(args))}, b""

    def _scandir(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        entries = []
        with os.scandir(self._path(args)) as found:
            for entry in found:
                try:
                    lstat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed while we listed
                target = None
                if stat.S_ISLNK(lstat.st_mode):
                    with contextlib.suppress(OSError):  # a dangling link has no target
                        target = stat_list(entry.stat())
                entries.append([entry.name, stat_list(lstat), target])
        return {"entries": entries}, b""

    def _mkdir(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        os.mkdir(self._path(args), _int(args, "perm", 0o777))
        return {}, b""

    def _rmdir(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        os.rmdir(self._path(args))
        return {}, b""

    def _unlink(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        os.unlink(self._path(args))
        return {}, b""

    def _rename(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        os.rename(self._path(args, "src"), self._path(args, "dst"))
        return {}, b""

    def _replace(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        os.replace(self._path(args, "src"), self._path(args, "dst"))
        return {}, b""

    def _truncate_path(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        size = _int(args, "size")
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.truncate(self._path(args), size)
        return {}, b""

    def _readlink(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        return {"target": os.readlink(self._path(args))}, b""

    def _access(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        ok = os.access(
            self._path(args),
            _int(args, "mode"),
            effective_ids=_bool(args, "effective", False) and os.access in os.supports_effective_ids,
            follow_symlinks=_bool(args, "follow", True),
        )
        return {"ok": ok}, b""

    def _utime(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        path, follow = self._path(args), _bool(args, "follow", True)
        times, ns = args.get("times"), args.get("ns")
        if times is not None:
            os.utime(path, _pair(times, (int, float)), follow_symlinks=follow)
        elif ns is not None:
            os.utime(path, ns=_pair(ns, (int,)), follow_symlinks=follow)
        else:
            os.utime(path, follow_symlinks=follow)
        return {}, b""

    def _chmod(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        follow = _bool(args, "follow", True)
        try:
            os.chmod(self._path(args), _int(args, "perm"), follow_symlinks=follow)
        except NotImplementedError:
            raise OSError(errno.ENOTSUP, "this home cannot change the mode of a symbolic link") from None
        return {}, b""

    def _chdir(self, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        path = self._path(args)
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if not os.access(path, os.X_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return {"cwd": os.path.realpath(path)}, b""


def _open_bits(flags: set[str]) -> int:
    unknown = flags - {"read", "write", *_FLAGS}
    if unknown or not flags & {"read", "write"}:
        raise OSError(errno.EINVAL, f"malformed file.open: flags {sorted(flags)}")
    access = os.O_RDWR if {"read", "write"} <= flags else os.O_WRONLY if "write" in flags else os.O_RDONLY
    for name, bit in _FLAGS.items():
        if name in flags:
            access |= bit
    return access


def _int(args: dict[str, Any], key: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise OSError(errno.EINVAL, f"malformed call: {key!r} must be an integer")
    return value


def _bool(args: dict[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise OSError(errno.EINVAL, f"malformed call: {key!r} must be true or false")
    return value


def _pair(value: Any, kinds: tuple[type, ...]) -> tuple[Any, Any]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
    ):
        raise OSError(errno.EINVAL, "malformed os.utime: times must be two numbers")
    return value[0], value[1]
