"""An app's console: sequence-numbered lines, kept within bounds, that followers read from any point."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["Console", "ConsoleLog", "ConsoleRead"]


@dataclass(frozen=True, slots=True)
class ConsoleRead:
    """Lines read from a console log, and how many wanted lines were no longer kept."""

    lines: list[tuple[int, bytes]]
    dropped: int
    next_seq: int


class ConsoleLog:
    """Numbered console lines (from 1), the oldest dropped past ``max_lines`` or ``max_bytes``. No I/O."""

    def __init__(self, max_lines: int = 100_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(1, max_bytes)
        self._lines: list[bytes] = []
        self._head = 0  # index in _lines of the oldest kept line
        self._first_seq = 1  # seq of _lines[_head]
        self._bytes = 0

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest line kept."""
        return self._first_seq

    @property
    def next_seq(self) -> int:
        """Sequence number the next line will get."""
        return self._first_seq + len(self._lines) - self._head

    def append(self, data: bytes) -> int:
        """Add output (split into lines; a trailing partial line is a line of its own); return lines added."""
        if not data:
            return 0
        parts = data.splitlines(keepends=True)
        self._lines.extend(parts)
        self._bytes += len(data)
        self._trim()
        return len(parts)

    def read(self, since: int = 0, limit: int = 10_000) -> ConsoleRead:
        """Lines from ``since`` on (0: from the oldest kept), at most ``limit``."""
        start_seq = max(since, self._first_seq) if since else self._first_seq
        dropped = max(0, self._first_seq - since) if since else self._first_seq - 1
        start = self._head + (start_seq - self._first_seq)
        chunk = self._lines[start : start + limit]
        lines = list(zip(range(start_seq, start_seq + len(chunk)), chunk, strict=True))
        return ConsoleRead(lines, dropped, start_seq + len(chunk))

    def tail_start(self, count: int) -> int:
        """The sequence number from which the last ``count`` kept lines start."""
        return max(self._first_seq, self.next_seq - count)

    def _trim(self) -> None:
        kept = len(self._lines) - self._head
        while kept > 1 and (kept > self.max_lines or self._bytes > self.max_bytes):
            self._bytes -= len(self._lines[self._head])
            self._head += 1
            self._first_seq += 1
            kept -= 1
        if self._head > 4096 and self._head * 2 > len(self._lines):
            del self._lines[: self._head]
            self._head = 0


class Console:
    """A console log that followers can wait on; closed when the app's runner ends."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.log = ConsoleLog(max_lines, max_bytes)
        self.closed = False
        self._changed = asyncio.Condition()

    async def write(self, data: bytes) -> None:
        """Append output and wake followers."""
        self.log.append(data)
        async with self._changed:
            self._changed.notify_all()

    async def note(self, text: str) -> None:
        """Append a line from the daemon itself (a lifecycle event)."""
        await self.write(f"[migrated] {text}\n".encode())

    async def close(self) -> None:
        """Mark the end of this run of output."""
        self.closed = True
        async with self._changed:
            self._changed.notify_all()

    def reopen(self) -> None:
        """A new runner writes to this console again."""
        self.closed = False

    async def wait_beyond(self, seq: int) -> None:
        """Wait until a line numbered ``seq`` or later exists, or the console is closed."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.log.next_seq > seq or self.closed)
