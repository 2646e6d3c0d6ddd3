"""Where a console's bytes live: numbered append-only segments, on disk for the daemon (``FileStore``), in
memory for unit tests (``MemoryStore``). On disk each segment has an index beside it, one small record per
append (its first line number, lines, length, and the cursor of a remote console it came from), from which a
restarted daemon rebuilds the log as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["NO_CURSOR", "SEGMENT_BYTES", "ConsoleStore", "Cursor", "FileStore", "MemoryStore", "Stored"]

SEGMENT_BYTES = 8 * 1024 * 1024
Cursor = tuple[float, int]  # a remote console's (session, last line) an append brings this one up to
NO_CURSOR: Cursor = (0.0, 0)
# Per append: first line number, lines, length, ends with a newline; and, from format 2 on (files that start
# with the magic), the cursor of the remote console it came from.
_INDEX_V1 = struct.Struct("<QIIB")
_INDEX = struct.Struct("<QIIBdQ")
_MAGIC = b"MIGIDX2\n"


@dataclass(frozen=True, slots=True)
class Stored:
    """One append as a store's index keeps it."""

    seq: int
    lines: int
    segment: int
    offset: int
    length: int
    whole: bool
    cursor: Cursor = NO_CURSOR


class ConsoleStore(Protocol):
    """Where console bytes live: numbered append-only segments."""

    def append(self, data: bytes, seq: int, lines: int, cursor: Cursor = NO_CURSOR) -> tuple[int, int]:
        """Write ``data`` (lines ``seq`` on, ``lines`` of them, bringing a remote console up to ``cursor``);
        return (segment, offset). A new segment starts past ``SEGMENT_BYTES``."""
        ...

    def stored(self) -> list[Stored]:
        """The appends an earlier run left, oldest first (none for a fresh store)."""
        ...

    def read(self, segment: int, offset: int, length: int) -> bytes:
        """Read back bytes written earlier."""
        ...

    def drop_before(self, segment: int) -> None:
        """Forget every segment older than ``segment``."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...


class MemoryStore:
    """Segments in memory (unit tests)."""

    def __init__(self, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.segment_bytes = segment_bytes
        self.segments: dict[int, bytearray] = {0: bytearray()}
        self._current = 0

    def append(self, data: bytes, seq: int, lines: int, cursor: Cursor = NO_CURSOR) -> tuple[int, int]:
        if len(self.segments[self._current]) >= self.segment_bytes:
            self._current += 1
            self.segments[self._current] = bytearray()
        segment = self.segments[self._current]
        offset = len(segment)
        segment += data
        return self._current, offset

    def read(self, segment: int, offset: int, length: int) -> bytes:
        return bytes(self.segments[segment][offset : offset + length])

    def stored(self) -> list[Stored]:
        return []

    def drop_before(self, segment: int) -> None:
        for number in [n for n in self.segments if n < segment]:
            del self.segments[number]

    def close(self) -> None:
        self.segments.clear()


@dataclass(frozen=True, slots=True)
class _Pending:
    """An append the disk did not take yet: where it belongs and what its index record says."""

    segment: int
    offset: int
    data: bytes
    seq: int
    lines: int
    cursor: Cursor


class FileStore:
    """Segment files ``00000000.log``, ``00000001.log``, ... in a directory of their own, each with its index
    (``.idx``). With ``keep`` what an earlier run wrote there is taken up (a torn last append is cut off);
    without, the directory starts empty.

    When the disk refuses a write (full, read-only), appends wait in memory in order, readable as usual, and
    go to disk as soon as it takes them again: a full disk costs no console line while the daemon runs.
    """

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES, keep: bool = False) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._fds: dict[int, int] = {}
        self._indexes: dict[int, int] = {}
        self._stored: list[Stored] = []
        self._current = 0
        self._size = 0  # bytes of the current segment, written or pending
        self._pending: deque[_Pending] = deque()
        self._retry_at = 0.0
        self.failure: OSError | None = None  # why appends wait in memory, while they do
        if keep and directory.is_dir():
            self._take_up()
        else:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, mode=0o700)
        if not self._fds:
            self._open(0)

    def _path(self, segment: int, suffix: str) -> Path:
        return self.directory / f"{segment:08d}.{suffix}"

    def _open(self, segment: int) -> None:
        log = os.open(self._path(segment, "log"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        index = -1
        try:
            index = os.open(self._path(segment, "idx"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            if os.fstat(index).st_size < len(_MAGIC):  # new, or its header torn by a full disk: write it whole
                os.ftruncate(index, 0)
                _write_all(index, _MAGIC)
        except OSError:
            os.close(log)
            if index >= 0:
                os.close(index)
            raise
        self._fds[segment], self._indexes[segment] = log, index

    def _take_up(self) -> None:
        """Rebuild the appends from the indexes; cut what follows the last whole one (a crash mid-append)."""
        torn = False
        for segment in sorted(int(path.stem) for path in self.directory.glob("*.idx") if path.stem.isdigit()):
            if torn:  # nothing after a torn append can follow on
                self._path(segment, "log").unlink(missing_ok=True)
                self._path(segment, "idx").unlink(missing_ok=True)
                continue
            data = self._path(segment, "log")
            size = data.stat().st_size if data.exists() else 0
            index = self._path(segment, "idx").read_bytes()
            offset, kept, whole_index = self._take_up_segment(segment, index, size)
            self._open(segment)
            os.ftruncate(self._fds[segment], offset)
            os.ftruncate(self._indexes[segment], kept)
            self._current, self._size = segment, offset
            if not index.startswith(_MAGIC):  # an older daemon's index: new appends go to a segment of their own
                self._size = self.segment_bytes
            torn = offset < size or kept < whole_index

    def _take_up_segment(self, segment: int, index: bytes, size: int) -> tuple[int, int, int]:
        """Take up one segment's appends; return the bytes of data and of index that hold whole ones, and the
        index's length in whole records."""
        header, record = (len(_MAGIC), _INDEX) if index.startswith(_MAGIC) else (0, _INDEX_V1)
        whole_index = header + (len(index) - header) // record.size * record.size
        offset, kept = 0, header
        for fields in record.iter_unpack(index[header:whole_index]):
            seq, lines, length, whole = fields[:4]
            last = self._stored[-1] if self._stored else None
            if offset + length > size or (last is not None and seq != last.seq + last.lines):
                break
            cursor = (fields[4], fields[5]) if len(fields) > 4 else NO_CURSOR
            self._stored.append(Stored(seq, lines, segment, offset, length, bool(whole), cursor))
            offset += length
            kept += record.size
        return offset, kept, whole_index

    def stored(self) -> list[Stored]:
        stored, self._stored = self._stored, []
        return stored

    def append(self, data: bytes, seq: int, lines: int, cursor: Cursor = NO_CURSOR) -> tuple[int, int]:
        if self._size >= self.segment_bytes:
            self._current += 1
            self._size = 0
        place = _Pending(self._current, self._size, data, seq, lines, cursor)
        self._size += len(data)
        self._pending.append(place)
        self._write_pending(force=len(self._pending) == 1)
        return place.segment, place.offset

    def _write_pending(self, force: bool = False) -> None:
        """Write waiting appends in order until one fails (then try again a second later, or when forced)."""
        now = time.monotonic()
        if not force and now < self._retry_at:
            return
        while self._pending:
            try:
                self._write(self._pending[0])
            except OSError as exc:
                self.failure, self._retry_at = exc, now + 1.0
                return
            self._pending.popleft()
        self.failure = None

    def _write(self, place: _Pending) -> None:
        """One append and its index record, or (on failure) neither: a restart sees whole appends only."""
        if place.segment not in self._fds:
            self._open(place.segment)
        fd, index = self._fds[place.segment], self._indexes[place.segment]
        try:
            _write_all(fd, place.data)
            whole = place.data.endswith(b"\n")
            _write_all(index, _INDEX.pack(place.seq, place.lines, len(place.data), whole, *place.cursor))
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, place.offset)
                header = len(_MAGIC)
                os.ftruncate(index, header + (os.fstat(index).st_size - header) // _INDEX.size * _INDEX.size)
            raise

    def read(self, segment: int, offset: int, length: int) -> bytes:
        first = self._pending[0] if self._pending else None
        if first is None or segment < first.segment:
            return os.pread(self._fds[segment], length, offset)
        written = first.offset if segment == first.segment else 0  # bytes of this segment on disk
        data = os.pread(self._fds[segment], min(length, written - offset), offset) if offset < written else b""
        for place in self._pending:  # a block read may span appends on disk and appends waiting
            if place.segment == segment and place.offset + len(place.data) > offset + len(data):
                start = offset + len(data) - place.offset
                data += place.data[start : start + length - len(data)]
        return data

    def drop_before(self, segment: int) -> None:
        while self._pending and self._pending[0].segment < segment:
            self._pending.popleft()
        for number in [n for n in self._fds if n < segment]:
            os.close(self._fds.pop(number))
            os.close(self._indexes.pop(number))
            for suffix in ("log", "idx"):
                with contextlib.suppress(FileNotFoundError):
                    self._path(number, suffix).unlink()
        if self._pending:
            self._write_pending()

    def close(self) -> None:
        self._write_pending(force=True)
        for fd in [*self._fds.values(), *self._indexes.values()]:
            os.close(fd)
        self._fds.clear()
        self._indexes.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
