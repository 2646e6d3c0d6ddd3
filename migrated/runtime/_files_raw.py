"""A file open at the app's home: ``HomeRaw`` (a handle there, the position here) under the buffered and text
layers ``open`` would give.

Sequential reads fetch blocks and ask for the next ones before returning (read-ahead); writes are posted without
waiting, a bounded amount at a time (write-behind), and an error surfaces at the next call that waits; ``flush``
and ``close`` return once the home has applied every write.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import os

from migrated.runtime import _fileops
from migrated.runtime._fileops import MAX_READ

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from typing import Any

    from migrated.runtime._home import Home

__all__ = ["BUFFER_SIZE", "ClosedRaw", "HomeRaw", "Mode", "wrap"]

BUFFER_SIZE = 256 * 1024
"""The buffer of a file opened at home."""
READ_BLOCK = 1024 * 1024
"""What a sequential read fetches at a time, and asks for ahead."""
READ_AHEAD = 4
"""Blocks a sequential read keeps asked for ahead of the one it reads (one round trip each would cap it)."""
WRITE_CHUNK = 4 * 1024 * 1024
"""The most one call writes."""
MAX_IN_FLIGHT = 8 * 1024 * 1024
"""Bytes written but not yet confirmed by the home before a write waits."""


# -- modes


class Mode:
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
        """The flags of ``_fileops.Open`` (``keep``: never truncate, never insist on a new file)."""
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


def wrap(
    raw: io.RawIOBase, mode: Mode, buffering: int, encoding: str | None, errors: str | None, newline: str | None
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

    def __init__(self, home: Home, answer: dict[str, Any], name: Any, mode: Mode) -> None:
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
        self._call(_fileops.Truncate(self._handle, size))
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
            _, data = self._call(_fileops.Read(self._handle, self._pos, asked))
        self._block, self._block_at = data, self._pos
        if sequential and len(data) == asked:
            offset = self._ahead[-1][1] + self._ahead[-1][2] if self._ahead else self._pos + asked
            while len(self._ahead) < READ_AHEAD:
                request = self._post(_fileops.Read(self._handle, offset, asked))
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
            request = self._post(_fileops.Write(self._handle, offset), chunk)
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
                self._call(_fileops.Close(self._handle))
            finally:
                self._writes.clear()
                super().close()

    # -- calls

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _post(self, call: _fileops.HandleCall, data: bytes = b"") -> int:
        return self._home.post(call.op, call.args(), data)

    def _call(self, call: _fileops.HandleCall) -> tuple[dict[str, Any], bytes]:
        return self._collect(self._post(call))

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
        header, _ = self._call(_fileops.Size(self._handle))
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


class ClosedRaw(io.RawIOBase):
    """Stands for a file a checkpoint could only give back closed."""

    def __init__(self, name: Any, mode: Mode) -> None:
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
