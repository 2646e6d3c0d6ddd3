"""Cut a snapshot into content-addressed chunks, without copying: each chunk is a view of the snapshot.

Hash: BLAKE3-256. Chunks arrive from paired but otherwise independent peers and land in one store shared by
every app, so the hash must resist deliberate collisions: with xxh3-128 (non-cryptographic) a peer could
craft a chunk that replaces another app's data. Measured on this machine (bench/checkpoint_core.py, 64 KiB
chunks): BLAKE3 3.1-3.9 GB/s on one core, xxh3-128 6.7-10 GB/s, SHA-256 1.0-1.2 GB/s, while storing runs at
0.2-0.4 GB/s (SQLite, synchronous=FULL): hashing is ~5 % of a 256 MiB checkpoint with BLAKE3, and xxh3 would
save ~3 % of it. SHA-256 would cost 3x BLAKE3 for no gain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blake3 import blake3

from migrated.checkpoint import _chunker, _codec
from migrated.checkpoint._snapshot import Bytes, Snapshot

__all__ = ["HASH_SIZE", "BufferLayout", "Chunked", "Piece", "chunk_hash", "chunk_snapshot", "split"]

HASH_SIZE = 32


def chunk_hash(data: Bytes) -> bytes:
    """The content address of a chunk: BLAKE3-256 of its raw bytes."""
    return blake3(data).digest()


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

    @property
    def size(self) -> int:
        """Raw bytes of the stream and buffers."""
        return sum(size for _, size in self.stream) + sum(buffer.size for buffer in self.buffers)

    def add(self, data: Bytes, level: int) -> tuple[bytes, int]:
        """Hash one chunk and keep its piece; return its (hash, size)."""
        digest = chunk_hash(data)
        if digest not in self.pieces:
            self.pieces[digest] = Piece(data, level)
        return digest, memoryview(data).nbytes


def split(data: Bytes, cuts: list[int]) -> list[memoryview]:
    """Views of ``data`` between consecutive ``cuts``."""
    view = memoryview(data).cast("B")
    starts = [0, *cuts[:-1]] if cuts else []
    return [view[start:end] for start, end in zip(starts, cuts, strict=True)]


def chunk_snapshot(snapshot: Snapshot) -> Chunked:
    """Cut and hash a snapshot: the stream by content, buffers and large payloads at fixed offsets."""
    chunked = Chunked(snapshot.serializer)
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
