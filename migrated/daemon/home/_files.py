"""The home side of an away app's files: the calls of ``migrated.runtime._fileops`` that its runner sends,
carried out on this host's file system.

The runner (``migrated.runtime._files``) keeps the app's working directory and positions; every call names an
absolute path or a handle and an explicit offset, so a call means the same whenever it runs. Calls of one app
arrive in order and are answered in order (``AppHome`` chains them), which is what lets the runner post writes
without waiting. Each call is parsed and checked by its ``_fileops`` class; errors are ``OSError``: the caller
turns them into error answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from migrated.runtime import _fileops
from migrated.runtime._fileops import MAX_READ, stat_list

__all__ = ["MAX_OPEN", "HomeFiles"]

MAX_OPEN = 1024
"""Files one app may hold open at its home."""

_FLAGS = {
    "create": os.O_CREAT,
    "truncate": os.O_TRUNC,
    "exclusive": os.O_EXCL,
    "append": os.O_APPEND,
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

_Answer = tuple[dict[str, Any], bytes]


class HomeFiles:
    """The files one app has open here, and the calls that act on this host's file system for it."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self._files: dict[int, int] = {}  # handle -> descriptor
        self._next = 0
        self._lock = threading.Lock()
        self._on_path: dict[type[_fileops.FileCall], Callable[[Any], dict[str, Any]]] = {
            _fileops.Open: self._open,
            _fileops.Stat: self._stat,
            _fileops.Listdir: self._listdir,
            _fileops.Scandir: self._scandir,
            _fileops.Mkdir: self._mkdir,
            _fileops.Rmdir: self._rmdir,
            _fileops.Unlink: self._unlink,
            _fileops.Rename: self._rename,
            _fileops.Replace: self._replace,
            _fileops.Access: self._access,
            _fileops.Utime: self._utime,
            _fileops.TruncatePath: self._truncate_path,
            _fileops.Readlink: self._readlink,
            _fileops.Chdir: self._chdir,
            _fileops.Chmod: self._chmod,
        }
        self._on_file: dict[type[_fileops.FileCall], Callable[[int, Any, bytes], _Answer]] = {
            _fileops.Read: self._read,
            _fileops.Write: self._write,
            _fileops.Truncate: self._truncate,
            _fileops.Size: self._size,
            _fileops.Close: self._close,
        }

    @property
    def open_count(self) -> int:
        """How many files the app holds open here."""
        return len(self._files)

    def handle(self, op: str, args: dict[str, Any], data: bytes) -> _Answer:
        """Carry out one call (blocking); raises ``OSError`` for the error answer."""
        kind = _fileops.CALLS.get(op)
        if kind is None:
            raise OSError(errno.ENOSYS, f"unknown file call {op!r}")
        if not isinstance(args, dict):
            raise OSError(errno.EINVAL, f"malformed {op}: its arguments are not an object")
        with self._lock:
            if issubclass(kind, _fileops.HandleCall):
                fd = self._fd(_fileops.HandleCall.handle_of(args))  # an unknown handle first, whatever else is wrong
                return self._on_file[kind](fd, kind.parse(args), data)
            return self._on_path[kind](kind.parse(args)), b""

    def close_all(self) -> None:
        """Close every file the app has open here."""
        with self._lock:
            files, self._files = self._files, {}
        for fd in files.values():
            with contextlib.suppress(OSError):  # already gone; nothing to flush at this level
                os.close(fd)

    def _path(self, path: str) -> str:
        return os.path.join(self.cwd, path)

    def _fd(self, handle: int) -> int:
        fd = self._files.get(handle)
        if fd is None:
            raise OSError(errno.EBADF, "no such open file at the app's home")
        return fd

    # -- open files

    def _open(self, call: _fileops.Open) -> dict[str, Any]:
        path = self._path(call.path)
        bits = _open_bits(set(call.flags))
        if len(self._files) >= MAX_OPEN:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
        fd = os.open(path, bits | _CLOEXEC, call.perm)
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
        return {"handle": self._next, "size": info.st_size, "regular": regular, "path": os.path.normpath(path)}

    def _read(self, fd: int, call: _fileops.Read, data: bytes) -> _Answer:
        offset, size = call.offset, call.size
        if offset < 0 or not 0 <= size <= MAX_READ:
            raise OSError(errno.EINVAL, f"malformed {call.op}: offset {offset}, size {size}")
        parts = []
        while size > 0:
            part = os.pread(fd, size, offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
            size -= len(part)
        return {}, b"".join(parts)

    def _write(self, fd: int, call: _fileops.Write, data: bytes) -> _Answer:
        view = memoryview(data)
        offset = call.offset
        if offset is None:
            while view:
                view = view[os.write(fd, view) :]
            return {"end": os.lseek(fd, 0, os.SEEK_CUR)}, b""
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        return {"end": offset}, b""

    def _truncate(self, fd: int, call: _fileops.Truncate, data: bytes) -> _Answer:
        if call.size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.ftruncate(fd, call.size)
        return {}, b""

    def _size(self, fd: int, call: _fileops.Size, data: bytes) -> _Answer:
        return {"size": os.fstat(fd).st_size}, b""

    def _close(self, fd: int, call: _fileops.Close, data: bytes) -> _Answer:
        del self._files[call.handle]
        os.close(fd)
        return {}, b""

    # -- paths

    def _stat(self, call: _fileops.Stat) -> dict[str, Any]:
        return {"stat": stat_list(os.stat(self._path(call.path), follow_symlinks=call.follow))}

    def _listdir(self, call: _fileops.Listdir) -> dict[str, Any]:
        return {"names": os.listdir(self._path(call.path))}

    def _scandir(self, call: _fileops.Scandir) -> dict[str, Any]:
        entries = []
        with os.scandir(self._path(call.path)) as found:
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
        return {"entries": entries}

    def _mkdir(self, call: _fileops.Mkdir) -> dict[str, Any]:
        os.mkdir(self._path(call.path), call.perm)
        return {}

    def _rmdir(self, call: _fileops.Rmdir) -> dict[str, Any]:
        os.rmdir(self._path(call.path))
        return {}

    def _unlink(self, call: _fileops.Unlink) -> dict[str, Any]:
        os.unlink(self._path(call.path))
        return {}

    def _rename(self, call: _fileops.Rename) -> dict[str, Any]:
        os.rename(self._path(call.src), self._path(call.dst))
        return {}

    def _replace(self, call: _fileops.Replace) -> dict[str, Any]:
        os.replace(self._path(call.src), self._path(call.dst))
        return {}

    def _truncate_path(self, call: _fileops.TruncatePath) -> dict[str, Any]:
        if call.size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.truncate(self._path(call.path), call.size)
        return {}

    def _readlink(self, call: _fileops.Readlink) -> dict[str, Any]:
        return {"target": os.readlink(self._path(call.path))}

    def _access(self, call: _fileops.Access) -> dict[str, Any]:
        ok = os.access(
            self._path(call.path),
            call.mode,
            effective_ids=call.effective and os.access in os.supports_effective_ids,
            follow_symlinks=call.follow,
        )
        return {"ok": ok}

    def _utime(self, call: _fileops.Utime) -> dict[str, Any]:
        path = self._path(call.path)
        if call.times is not None:
            os.utime(path, call.times, follow_symlinks=call.follow)
        elif call.ns is not None:
            os.utime(path, ns=call.ns, follow_symlinks=call.follow)
        else:
            os.utime(path, follow_symlinks=call.follow)
        return {}

    def _chmod(self, call: _fileops.Chmod) -> dict[str, Any]:
        try:
            os.chmod(self._path(call.path), call.perm, follow_symlinks=call.follow)
        except NotImplementedError:
            raise OSError(errno.ENOTSUP, "this home cannot change the mode of a symbolic link") from None
        return {}

    def _chdir(self, call: _fileops.Chdir) -> dict[str, Any]:
        path = self._path(call.path)
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if not os.access(path, os.X_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return {"cwd": os.path.realpath(path)}


def _open_bits(flags: set[str]) -> int:
    unknown = flags - {"read", "write", *_FLAGS}
    if unknown or not flags & {"read", "write"}:
        raise OSError(errno.EINVAL, f"malformed {_fileops.Open.op}: flags {sorted(flags)}")
    access = os.O_RDWR if {"read", "write"} <= flags else os.O_WRONLY if "write" in flags else os.O_RDONLY
    for name, bit in _FLAGS.items():
        if name in flags:
            access |= bit
    return access
