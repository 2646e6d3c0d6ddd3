"""Cut a snapshot into content-addressed chunks, without copying: each chunk is a view of the snapshot.

Hash: BLAKE3-256. Chunks arrive from paired but otherwise independent peers and land in one store shared by
every app, so the hash must resist deliberate collisions: with xxh3-128 (non-cryptographic) a peer could
craft a chunk that replaces another app's data. Measured on this machine (bench/checkpoint_core.py, 64 KiB
chunks): BLAKE3 3.1-3.9 GB/s on one core, xxh3-128 6.7-10 GB/s, SHA-256 1.0-1.2 GB/s, while storing runs at
0.2-0.4 GB/s (SQLite, synchronous=FULL): hashing is ~5 % of a 256 MiB checkpoint with BLAKE3, and xxh3 would
save ~3 % of it. SHA-256 would cost 3x BLAKE3 for no gain.

Within one runner, though, successive captures of the same app mostly hash the same bytes again, and a move's
freeze waits for that: ``HashMemo`` looks up each large chunk by its xxh3-128 among the chunks of the previous
capture and reuses the BLAKE3 address found there. xxh3 only compares the app's memory with itself there (no
peer's bytes are involved), so a deliberate collision gains nothing an app could not do directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blake3 import blake3
from xxhash import xxh3_128

from migrated.checkpoint import _chunker, _codec
from migrated.checkpoint._snapshot import Bytes, Snapshot

__all__ = ["HASH_SIZE", "BufferLayout", "Chunked", "HashMemo", "Piece", "chunk_hash", "chunk_snapshot", "split"]

HASH_SIZE = 32


def chunk_hash(data: Bytes) -> bytes:
    """The content address of a chunk: BLAKE3-256 of its raw bytes."""
    return blake3(data).digest()


class HashMemo:
    """The addresses of the previous capture's large chunks by their xxh3-128, for the next capture to reuse."""

    SMALLEST = 16 * 1024  # below this, BLAKE3 costs no more than the lookup

    def __init__(self) -> None:
        self._last: dict[bytes, bytes] = {}
        self._now: dict[bytes, bytes] = {}

    def next_capture(self) -> None:
        """A new capture begins: what the one before saw is what it may reuse."""
        if self._now:
            self._last, self._now = self._now, {}

    def address(self, data: Bytes) -> bytes:
        """``chunk_hash(data)``, from the memo when the previous capture had the same bytes."""
        if memoryview(data).nbytes < self.SMALLEST:
            return chunk_hash(data)
        quick = xxh3_128(data).digest()
        digest = self._last.get(quick) or self._now.get(quick) or chunk_hash(data)
        self._now[quick] = digest
        return digest


@dataclass(frozen=True, slots=True)
class Piece:
    """A chunk's raw bytes (a view of the snapshot) and the zstd level worth trying on it (0: store raw)."""

    data: Bytes
    level: int


@dataclass(frozen=True, slots=True)
class BufferLayout:
    """One out-of-band buffer as chunks."""

    size: int
    readonly: bool
    chunks: list[tuple[bytes, int]]


@dataclass
class Chunked:
    """A snapshot as chunk lists, (hash, size) in order, and the pieces by hash."""

    serializer: str
    stream: list[tuple[bytes, int]] = field(default_factory=list)
    buffers: list[BufferLayout] = field(default_factory=list)
    pieces: dict[bytes, Piece] = field(default_factory=dict)
    memo: HashMemo | None = None

    @property
    def size(self) -> int:
        """Raw bytes of the stream and buffers."""
        return sum(size for _, size in self.stream) + sum(buffer.size for buffer in self.buffers)

    def add(self, data: Bytes, level: int) -> tuple[bytes, int]:
        """Hash one chunk and keep its piece; return its (hash, size)."""
        digest = chunk_hash(data) if self.memo is None else self.memo.address(data)
        if digest not in self.pieces:
            self.pieces[digest] = Piece(data, level)
        return digest, memoryview(data).nbytes


def split(data: Bytes, cuts: list[int]) -> list[memoryview]:
    """Views of ``data`` between consecutive ``cuts``."""
    view = memoryview(data).cast("B")
    starts = [0, *cuts[:-1]] if cuts else []
    return [view[start:end] for start, end in zip(starts, cuts, strict=True)]


def chunk_snapshot(snapshot: Snapshot, memo: HashMemo | None = None) -> Chunked:
    """Cut and hash a snapshot: the stream by content, buffers and large payloads at fixed offsets; ``memo``
    (the runner's, kept from its previous capture) spares hashing what did not change."""
    if memo is not None:
        memo.next_capture()
    chunked = Chunked(snapshot.serializer, memo=memo)
    for segment in snapshot.stream:
        if segment.aligned:
            chunked.stream += _fixed(chunked, segment.data)
        else:
            pieces = split(segment.data, _chunker.content_cuts(segment.data))
            chunked.stream += [chunked.add(piece, _codec.STREAM_LEVEL) for piece in pieces]
    for buffer in snapshot.buffers:
        refs = _fixed(chunked, buffer.data)
        chunked.buffers.append(BufferLayout(memoryview(buffer.data).nbytes, buffer.readonly, refs))
    return chunked


def _fixed(chunked: Chunked, data: Bytes) -> list[tuple[bytes, int]]:
    pieces = split(data, _chunker.fixed_cuts(memoryview(data).nbytes))
    level = _codec.sample_level(pieces)
    return [chunked.add(piece, level) for piece in pieces]
