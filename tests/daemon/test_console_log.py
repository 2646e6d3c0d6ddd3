"""ConsoleLog: numbered lines kept within bounds, read back from any point."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrated.daemon import _console_store
from migrated.daemon._console import ConsoleLog, FileStore, MemoryStore

# Output as a list of writes, each of whole lines ending with a newline (no carriage returns).
line_bodies = st.binary(max_size=12).map(lambda body: body.replace(b"\n", b"").replace(b"\r", b""))
writes = st.lists(
    st.lists(line_bodies, min_size=1, max_size=4).map(lambda bodies: b"\n".join(bodies) + b"\n"), max_size=25
)


def lines_of(written: list[bytes]) -> list[bytes]:
    return [line for data in written for line in data.splitlines(keepends=True)]


def append_all(log: ConsoleLog, written: list[bytes]) -> None:
    for data in written:
        log.append(data)


def read_all(log: ConsoleLog, since: int = 0, batch: int = 10_000) -> list[tuple[int, bytes]]:
    """Read from ``since`` to the end, ``batch`` lines at a time."""
    lines: list[tuple[int, bytes]] = []
    while True:
        read = log.read(since, batch)
        lines += read.lines
        if not read.lines:
            return lines
        since = read.next_seq


def test_lines_are_numbered_from_one() -> None:
    log = ConsoleLog()
    assert (log.first_seq, log.next_seq) == (1, 1)
    assert log.append(b"a\nb\n") == 2
    assert log.append(b"c\n") == 1
    read = log.read()
    assert read.lines == [(1, b"a\n"), (2, b"b\n"), (3, b"c\n")]
    assert read.dropped == 0
    assert read.next_seq == log.next_seq == 4


def test_a_line_written_in_pieces_reads_back_as_written() -> None:
    log = ConsoleLog()
    log.append(b"ab")
    log.append(b"c")
    log.append(b"d\nef\n")
    assert b"".join(data for _, data in log.read().lines) == b"abcd\nef\n"
    assert log.read().lines[-1] == (log.next_seq - 1, b"ef\n")


def test_nothing_appended_adds_no_line() -> None:
    log = ConsoleLog()
    assert log.append(b"") == 0
    assert log.next_seq == 1
    assert log.read().lines == []


def test_the_line_bound_drops_the_oldest_lines() -> None:
    log = ConsoleLog(max_lines=3)
    log.append(b"1\n2\n3\n4\n5\n")
    assert log.first_seq == 3
    read = log.read()
    assert read.lines == [(3, b"3\n"), (4, b"4\n"), (5, b"5\n")]
    assert read.dropped == 2


def test_the_byte_bound_drops_the_oldest_lines() -> None:
    log = ConsoleLog(max_bytes=10)
    for i in range(5):
        log.append(f"ab{i}\n".encode())
    assert [data for _, data in log.read().lines] == [b"ab3\n", b"ab4\n"]
    assert log.read().dropped == 3


def test_a_line_larger_than_the_byte_bound_is_still_kept() -> None:
    log = ConsoleLog(max_bytes=4)
    log.append(b"short\n")
    log.append(b"x" * 100 + b"\n")
    assert log.read().lines == [(2, b"x" * 100 + b"\n")]


def test_read_since_a_dropped_line_says_how_many_are_gone() -> None:
    log = ConsoleLog(max_lines=2)
    log.append(b"1\n2\n3\n4\n")
    read = log.read(since=2)
    assert read.dropped == 1
    assert read.lines == [(3, b"3\n"), (4, b"4\n")]
    assert log.read(since=3).dropped == 0


def test_read_since_the_end_is_empty() -> None:
    log = ConsoleLog()
    log.append(b"1\n2\n")
    read = log.read(since=3)
    assert (read.lines, read.dropped, read.next_seq) == ([], 0, 3)


def test_read_honours_its_limit() -> None:
    log = ConsoleLog()
    log.append(b"1\n2\n3\n")
    read = log.read(since=1, limit=2)
    assert read.lines == [(1, b"1\n"), (2, b"2\n")]
    assert read.next_seq == 3


def test_tail_start() -> None:
    log = ConsoleLog(max_lines=5)
    log.append(b"".join(b"%d\n" % i for i in range(1, 9)))  # keeps 4..8
    assert log.tail_start(2) == 7
    assert log.tail_start(5) == 4
    assert log.tail_start(50) == 4
    assert log.tail_start(0) == log.next_seq == 9
    assert [seq for seq, _ in log.read(log.tail_start(2)).lines] == [7, 8]


def test_long_output_at_the_bound_keeps_numbering_and_content() -> None:
    log = ConsoleLog(max_lines=10)
    line = b"%063d\n"
    for start in range(0, 1100 * 1024, 1024):  # 70 MB in writes of 64 KiB: the bookkeeping is compacted on the way
        log.append(b"".join(line % seq for seq in range(start + 1, start + 1025)))
    last = 1100 * 1024
    assert log.first_seq == last - 9
    assert log.read().lines == [(seq, line % seq) for seq in range(last - 9, last + 1)]
    assert log.read().dropped == last - 10


class CountingStore(MemoryStore):
    """A memory store that counts the bytes read back from it."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0

    def read(self, segment: int, offset: int, length: int) -> bytes:
        self.bytes_read += length
        return super().read(segment, offset, length)


def test_appending_at_the_bound_does_not_reread_the_kept_lines() -> None:
    """A long-running app lives at its console bound: keeping it there must not re-read what is kept."""
    store = CountingStore()
    log = ConsoleLog(max_lines=1000, store=store)
    for seq in range(1000):
        log.append(b"%06d\n" % seq)
    before = store.bytes_read
    for seq in range(1000, 6000):
        log.append(b"%06d\n" % seq)
    assert log.first_seq == 5001
    assert (store.bytes_read - before) / 5000 < 100, f"{store.bytes_read - before} bytes read for 5000 lines"


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(writes, st.integers(min_value=1, max_value=7))
def test_reading_back_in_any_batch_size_gives_what_was_appended(written: list[bytes], batch: int) -> None:
    log = ConsoleLog()
    append_all(log, written)
    lines = read_all(log, batch=batch)
    assert [data for _, data in lines] == lines_of(written)
    assert [seq for seq, _ in lines] == list(range(1, log.next_seq))
    assert log.read().dropped == 0


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(writes, st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=60))
def test_the_kept_lines_are_the_newest_within_bounds(written: list[bytes], max_lines: int, max_bytes: int) -> None:
    log = ConsoleLog(max_lines=max_lines, max_bytes=max_bytes)
    append_all(log, written)
    everything = lines_of(written)
    kept = log.read()
    assert log.next_seq == len(everything) + 1
    assert kept.lines == list(zip(range(log.first_seq, log.next_seq), everything[log.first_seq - 1 :], strict=True))
    assert kept.dropped == log.first_seq - 1
    kept_bytes = sum(len(data) for _, data in kept.lines)
    if len(kept.lines) > 1:
        assert len(kept.lines) <= max_lines
        assert kept_bytes <= max_bytes
    if kept.dropped:  # no line was dropped that fitted
        newest_dropped = everything[log.first_seq - 2]
        assert len(kept.lines) + 1 > max_lines or kept_bytes + len(newest_dropped) > max_bytes


# -- a log on disk, taken up again by a restarted daemon


def reopened(directory: Path, max_lines: int = 1_000_000, segment_bytes: int = 64) -> ConsoleLog:
    return ConsoleLog(max_lines=max_lines, store=FileStore(directory, segment_bytes=segment_bytes, keep=True))


@settings(deadline=None, max_examples=50)
@given(writes, st.integers(min_value=1, max_value=30))
def test_a_log_on_disk_is_taken_up_with_its_numbers(written: list[bytes], max_lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first = reopened(Path(tmp) / "c", max_lines)
        append_all(first, written)
        before = first.read()
        first.store.close()
        again = reopened(Path(tmp) / "c", max_lines)
        after = again.read()
        assert after.lines[-len(before.lines) :] == before.lines if before.lines else after.lines == []
        assert again.next_seq == first.next_seq
        again.append(b"more\n")
        assert again.read(first.next_seq).lines == [(first.next_seq, b"more\n")]


def test_an_unfinished_line_flushed_before_a_restart_stays_a_line_of_its_own(tmp_path: Path) -> None:
    log = reopened(tmp_path / "c")
    log.append(b"prompt> ")
    log.flush()
    log.append(b"answer\n")
    log.store.close()
    assert reopened(tmp_path / "c").read().lines == [(1, b"prompt> "), (2, b"answer\n")]


def test_an_append_torn_by_a_crash_is_cut_off_and_numbering_goes_on(tmp_path: Path) -> None:
    log = reopened(tmp_path / "c", segment_bytes=1 << 20)
    for n in range(1, 6):
        log.append(b"line %d\n" % n)
    log.store.close()
    data = tmp_path / "c" / "00000000.log"
    data.write_bytes(data.read_bytes()[:-3])  # the last append's bytes did not all reach the disk
    index = tmp_path / "c" / "00000000.idx"
    index.write_bytes(index.read_bytes() + b"\x01\x02")  # nor did an index record after it
    again = reopened(tmp_path / "c", segment_bytes=1 << 20)
    assert again.read().lines == [(n, b"line %d\n" % n) for n in range(1, 5)]
    again.append(b"line 5 again\n")
    again.store.close()
    assert reopened(tmp_path / "c").read().lines[-1] == (5, b"line 5 again\n")


def test_a_fresh_store_forgets_what_was_there(tmp_path: Path) -> None:
    log = reopened(tmp_path / "c")
    log.append(b"old\n")
    log.store.close()
    assert ConsoleLog(store=FileStore(tmp_path / "c")).read().lines == []


class _Os:
    """The ``os`` module as the console module sees it, with ``write`` replaced."""

    def __init__(self, write: object) -> None:
        self.write = write

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


class FullDisk:
    """``os.write`` for the console module that fails with ENOSPC while ``full``, after ``budget`` bytes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.budget = 0
        self._write = os.write
        monkeypatch.setattr(_console_store, "os", _Os(self))

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.full:
            if self.budget <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = memoryview(data)[: self.budget]  # a write the disk takes only in part
            self.budget -= len(data)
        return self._write(fd, data)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes, writes, st.integers(min_value=0, max_value=40))
def test_a_full_disk_keeps_every_line_and_writes_it_once_there_is_room(
    monkeypatch: pytest.MonkeyPatch, before: list[bytes], during: list[bytes], budget: int
) -> None:
    disk = FullDisk(monkeypatch)
    with tempfile.TemporaryDirectory() as tmp:
        log = reopened(Path(tmp) / "c")
        append_all(log, before)
        disk.full, disk.budget = True, budget
        append_all(log, during)
        log.flush()
        everything = log.read(limit=10**6)
        assert b"".join(data for _, data in everything.lines) == b"".join(before + during)
        disk.full = False
        log.append(b"room again\n")
        log.store.close()
        again = reopened(Path(tmp) / "c").read(limit=10**6)
        assert again.lines == [*everything.lines, (log.next_seq - 1, b"room again\n")]


def test_a_console_an_older_daemon_indexed_is_taken_up_and_goes_on_in_a_segment_of_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "00000000.log").write_bytes(b"a\nb\n")
    (folder / "00000000.idx").write_bytes(_console_store._INDEX_V1.pack(1, 2, 4, 1))  # before the cursor was kept
    log = reopened(folder, segment_bytes=1 << 20)
    assert log.read().lines == [(1, b"a\n"), (2, b"b\n")]
    log.append(b"c\n")
    log.append(b"d\n")
    log.store.close()
    again = reopened(folder, segment_bytes=1 << 20).read().lines
    assert again == [(1, b"a\n"), (2, b"b\n"), (3, b"c\n"), (4, b"d\n")]
