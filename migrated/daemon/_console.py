"""An app's console: sequence-numbered lines, kept within bounds, that followers read from any point.

``ConsoleLog`` is the index (which line numbers live in which block of bytes, and what the bounds drop); the
bytes themselves live in a ``ConsoleStore`` (``_console_store``): segment files on disk for the daemon, memory
in unit tests. So a console costs the daemon a few bytes of RAM per block, whatever it holds. The console of an
app that runs elsewhere also keeps, with its lines, how far it has the remote console (``cursor``), so that a
home restarted in the middle of a batch applies no line twice.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from migrated.daemon._console_store import NO_CURSOR, ConsoleStore, Cursor, FileStore, MemoryStore, Stored

__all__ = ["Console", "ConsoleLog", "ConsoleRead", "FileStore", "MemoryStore", "Stored", "split_lines"]

log = logging.getLogger("migrated.daemon")

MAX_RECORD = 1024 * 1024  # a longer line is kept as several records, so a batch stays bounded
_COALESCE_BELOW = 64 * 1024


def split_lines(data: bytes) -> list[bytes]:
    """Split on ``\\n`` only, keeping it; a trailing piece without one is a line of its own."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


@dataclass(slots=True)
class _Block:
    first_seq: int
    lines: int
    segment: int
    offset: int
    length: int
    whole: bool  # ends with a newline, so more lines may be added to it


@dataclass(frozen=True, slots=True)
class ConsoleRead:
    """Lines read from a console log, and how many wanted lines were no longer kept."""

    lines: list[tuple[int, bytes]]
    dropped: int
    next_seq: int


class ConsoleLog:
    """Numbered console lines (from 1); the oldest dropped past ``max_lines`` or ``max_bytes``.

    Output arrives in arbitrary pieces: whole lines are numbered at once, an unfinished line waits for its
    newline until ``flush()`` (the caller flushes when output pauses).
    """

    def __init__(
        self, max_lines: int = 1_000_000, max_bytes: int = 64 * 1024 * 1024, store: ConsoleStore | None = None
    ) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(1, max_bytes)
        self.store: ConsoleStore = store if store is not None else MemoryStore()
        self._blocks: list[_Block] = []
        self._starts: list[int] = []  # first_seq of each block, for bisect
        self._head = 0  # index of the oldest kept block
        self._first_seq = 1
        self._next_seq = 1
        self._bytes = 0  # bytes of the lines kept
        self._skip = 0  # bytes of the oldest block that belong to lines no longer kept
        self._head_lengths: list[int] | None = None  # line lengths of the oldest block, once read
        self._partial = b""
        self.cursor: Cursor = NO_CURSOR  # how far this console has a remote one (an app running elsewhere)
        taken_up = self.store.stored()  # what the store kept from an earlier run
        if taken_up:
            self._first_seq = self._next_seq = taken_up[0].seq
        for stored in taken_up:
            self._add(stored)
            if stored.cursor != NO_CURSOR:
                self.cursor = stored.cursor

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest line kept."""
        return self._first_seq

    @property
    def next_seq(self) -> int:
        """Sequence number the next line will get."""
        return self._next_seq

    @property
    def partial(self) -> bytes:
        """Output of an unfinished line, not numbered yet."""
        return self._partial

    @property
    def at_line_start(self) -> bool:
        """Whether the last numbered line ended with a newline (or there is none)."""
        return not self._partial and (self._head == len(self._blocks) or self._blocks[-1].whole)

    def append(self, data: bytes) -> int:
        """Add output; number the lines it finishes; return how many."""
        buffer = self._partial + data
        cut = buffer.rfind(b"\n") + 1
        self._partial = buffer[cut:]
        added = self._commit(buffer[:cut])
        while len(self._partial) > MAX_RECORD:
            added += self._commit(self._partial[:MAX_RECORD])
            self._partial = self._partial[MAX_RECORD:]
        return added

    def append_remote(self, data: bytes, cursor: Cursor) -> int:
        """Lines of a remote console, numbered here at once (an unfinished last one too), kept with the cursor
        they bring this console's copy of it up to; return how many."""
        buffer, self._partial = self._partial + data, b""
        added = self._commit(buffer, cursor) if buffer else 0
        self.cursor = cursor
        return added

    def flush(self) -> int:
        """Number an unfinished line as it is; return 1 if there was one."""
        partial, self._partial = self._partial, b""
        return self._commit(partial)

    def _commit(self, data: bytes, cursor: Cursor = NO_CURSOR) -> int:
        if not data:
            return 0
        if len(data) > MAX_RECORD and any(len(line) > MAX_RECORD for line in split_lines(data)):
            pieces = _pieces(data)
            return sum(self._commit(piece, cursor if last else NO_CURSOR) for last, piece in _lasts(pieces))
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        segment, offset = self.store.append(data, self._next_seq, lines, cursor)
        self._add(Stored(self._next_seq, lines, segment, offset, len(data), data.endswith(b"\n"), cursor), data)
        return lines

    def _add(self, stored: Stored, data: bytes | None = None) -> None:
        """Index an append (``data``: its bytes, when at hand)."""
        last = self._blocks[-1] if self._head < len(self._blocks) else None
        if (
            last is not None
            and last.whole
            and last.segment == stored.segment
            and last.offset + last.length == stored.offset
            and last.length < _COALESCE_BELOW
        ):
            last.lines += stored.lines
            last.length += stored.length
            last.whole = stored.whole
            if self._head_lengths is not None and last is self._blocks[self._head]:
                if data is None:
                    self._head_lengths = None  # read again when needed
                else:
                    self._head_lengths.extend(map(len, split_lines(data)))
        else:
            block = _Block(stored.seq, stored.lines, stored.segment, stored.offset, stored.length, stored.whole)
            self._blocks.append(block)
            self._starts.append(block.first_seq)
        self._next_seq += stored.lines
        self._bytes += stored.length
        self._trim()

    def read(self, since: int = 0, limit: int = 10_000, max_bytes: int = 1 << 20) -> ConsoleRead:
        """Lines from ``since`` on (0: from the oldest kept): at most ``limit`` lines and, unless one line alone
        is longer, ``max_bytes`` bytes."""
        start_seq = max(since, self._first_seq) if since else self._first_seq
        dropped = max(0, self._first_seq - since) if since else self._first_seq - 1
        if start_seq >= self._next_seq:
            return ConsoleRead([], dropped, start_seq)
        lines: list[tuple[int, bytes]] = []
        size = 0
        index = bisect.bisect_right(self._starts, start_seq, lo=self._head) - 1
        seq = start_seq
        while index < len(self._blocks) and len(lines) < limit and (size <= max_bytes or not lines):
            block = self._blocks[index]
            data = self.store.read(block.segment, block.offset, block.length)
            for line in split_lines(data)[seq - block.first_seq :]:
                if len(lines) >= limit or (lines and size + len(line) > max_bytes):
                    return ConsoleRead(lines, dropped, seq)
                lines.append((seq, line))
                size += len(line)
                seq += 1
            index += 1
        return ConsoleRead(lines, dropped, seq)

    def tail_start(self, count: int) -> int:
        """The sequence number from which the last ``count`` kept lines start."""
        return max(self._first_seq, self._next_seq - count)

    def _trim(self) -> None:
        self._advance_to(self._next_seq - self.max_lines)
        while self._bytes > self.max_bytes and self._first_seq < self._next_seq - 1:
            head = self._blocks[self._head]
            rest = head.length - self._skip
            if self._head < len(self._blocks) - 1 and self._bytes - rest >= self.max_bytes:
                self._advance_to(head.first_seq + head.lines)
            else:
                self._advance_to(self._fitting_start(head))
        if self._head > 1024 and self._head * 2 > len(self._blocks):
            del self._blocks[: self._head]
            del self._starts[: self._head]
            self._head = 0
        self.store.drop_before(self._blocks[self._head].segment)

    def _head_line_lengths(self) -> list[int]:
        if self._head_lengths is None:
            head = self._blocks[self._head]
            self._head_lengths = [
                len(line) for line in split_lines(self.store.read(head.segment, head.offset, head.length))
            ]
        return self._head_lengths

    def _fitting_start(self, head: _Block) -> int:
        """The first line of ``head`` from which what is kept fits ``max_bytes`` (keeping one line at least)."""
        seq = self._first_seq
        excess = self._bytes - self.max_bytes
        for length in self._head_line_lengths()[seq - head.first_seq :]:
            if excess <= 0 or seq >= self._next_seq - 1:
                break
            excess -= length
            seq += 1
        return seq

    def _advance_to(self, seq: int) -> None:
        """Drop every line before ``seq``: whole blocks, then lines of the oldest block kept."""
        if seq <= self._first_seq:
            return
        while self._head < len(self._blocks) - 1 and self._blocks[self._head + 1].first_seq <= seq:
            self._bytes -= self._blocks[self._head].length - self._skip
            self._skip = 0
            self._head += 1
            self._head_lengths = None
            self._first_seq = self._blocks[self._head].first_seq
        head = self._blocks[self._head]
        if seq > self._first_seq:
            lengths = self._head_line_lengths()
            dropped = sum(lengths[self._first_seq - head.first_seq : seq - head.first_seq])
            self._skip += dropped
            self._bytes -= dropped
            self._first_seq = seq


def _lasts(pieces: list[bytes]) -> list[tuple[bool, bytes]]:
    return [(index == len(pieces) - 1, piece) for index, piece in enumerate(pieces)]


def _pieces(data: bytes) -> list[bytes]:
    pieces: list[bytes] = []
    for line in split_lines(data):
        pieces.extend(line[i : i + MAX_RECORD] for i in range(0, len(line), MAX_RECORD))
    return pieces


class Console:
    """A console log that followers can wait on; closed when the app's runner ends."""

    def __init__(
        self, max_lines: int, max_bytes: int, directory: Path | None = None, keep: bool = False, session: float = 0.0
    ) -> None:
        """``keep``: take up the lines an earlier run of the daemon left in ``directory``, numbered in ``session``
        (a new console's numbering is a session of its own)."""
        store = FileStore(directory, keep=keep) if directory is not None else MemoryStore()
        self.directory = directory
        self.session = session if keep and session else time.time()  # tells a home which numbering its lines are in
        self.log = ConsoleLog(max_lines, max_bytes, store)
        self.closed = False
        self._changed = asyncio.Event()
        self._waiting = False  # the disk refused lines, which wait in memory

    async def write(self, data: bytes) -> None:
        """Append output and wake followers (also for an unfinished line: it may be a prompt)."""
        self.log.append(data)
        self._notify()
        failure = getattr(self.log.store, "failure", None)
        if (failure is not None) != self._waiting:
            self._waiting = failure is not None
            if failure is not None:
                log.warning("console lines of %s wait in memory: %s", self.directory, failure)

    async def write_remote(self, data: bytes, cursor: Cursor) -> None:
        """Append lines of a remote console (see ``ConsoleLog.append_remote``) and wake followers."""
        self.log.append_remote(data, cursor)
        self._notify()

    async def note(self, text: str) -> None:
        """Append a line from the daemon itself (a lifecycle event), always on a line of its own."""
        self.log.flush()
        prefix = "" if self.log.at_line_start else "\n"
        await self.write(f"{prefix}[migrated] {text}\n".encode())

    async def close(self) -> None:
        """Mark the end of this run of output; an unfinished last line is numbered as it is."""
        self.log.flush()
        self.closed = True
        self._notify()

    def reopen(self) -> None:
        """A new runner writes to this console again."""
        self.closed = False

    def destroy(self) -> None:
        """Delete what the console keeps (the app was removed)."""
        self.log.store.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def wait_change(self, seq: int, partial: int) -> None:
        """Wait until line ``seq`` exists, the unfinished line is no longer ``partial`` bytes, or the end."""
        while not (self.log.next_seq > seq or self.closed or len(self.log.partial) != partial):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
