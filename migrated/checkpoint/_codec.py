"""Per-chunk compression: zstd where it pays, raw where it does not.

Pickled objects compress ~5x at zstd level 1-3; float arrays ~1.04x at level 1 (at ~800 MB/s, slower than
storing them). So each buffer is sampled first and stored raw when the sample shrinks by less than
``MIN_RATIO``; each compressed chunk that still does not pay is stored raw too. The codec is recorded per
chunk; a chunk's hash is always that of its raw bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import zstandard

from migrated.checkpoint._snapshot import Bytes

__all__ = [
    "BUFFER_LEVEL",
    "MAX_CHUNK",
    "MIN_RATIO",
    "STREAM_LEVEL",
    "Codec",
    "StoredChunk",
    "decode",
    "encode",
    "sample_level",
]

MIN_RATIO = 1.1
STREAM_LEVEL = 3  # pickled objects: ~6x at 16 KiB, ~350 MB/s
BUFFER_LEVEL = 1  # array memory: the fastest level, when it pays at all
_SAMPLES = 3
MAX_CHUNK = 64 * 1024 * 1024
"""Raw bytes a chunk may hold (state chunks are at most 64 KiB; a code file is one chunk): what a chunk from a
file or a peer may expand to, checked before anything is allocated."""


class Codec(IntEnum):
    """How a chunk is stored."""

    RAW = 0
    ZSTD = 1


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as stored and sent: its codec, its raw size and its stored bytes."""

    codec: Codec
    raw_size: int
    data: Bytes


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    found = cache.get(level)
    if found is None:
        found = cache[level] = zstandard.ZstdCompressor(level=level)
    return found


def encode(data: Bytes, level: int) -> StoredChunk:
    """``data`` compressed at ``level`` if that saves at least ``1 - 1/MIN_RATIO``; raw otherwise or at level 0."""
    size = memoryview(data).nbytes
    if level > 0:
        packed = _compressor(level).compress(data)
        if len(packed) * MIN_RATIO <= size:
            return StoredChunk(Codec.ZSTD, size, packed)
    return StoredChunk(Codec.RAW, size, data)


def decode(chunk: StoredChunk) -> Bytes:
    """The raw bytes of a stored chunk; ``ValueError`` when they cannot be recovered. The raw size it declares
    is checked against ``MAX_CHUNK`` and against the zstd frame before anything is allocated."""
    if not 0 <= chunk.raw_size <= MAX_CHUNK:
        raise ValueError(f"it declares {chunk.raw_size} raw bytes, more than a chunk may hold ({MAX_CHUNK})")
    if chunk.codec == Codec.RAW:
        data = chunk.data
    elif chunk.codec == Codec.ZSTD:
        try:
            declared = zstandard.frame_content_size(chunk.data)
            if declared != chunk.raw_size:
                raise ValueError(f"its zstd frame declares {declared} bytes where {chunk.raw_size} were recorded")
            data = zstandard.ZstdDecompressor().decompress(chunk.data, max_output_size=chunk.raw_size)
        except zstandard.ZstdError as exc:
            raise ValueError(f"zstd cannot decompress it ({exc})") from None
    else:
        raise ValueError(f"unknown codec {chunk.codec}")
    if memoryview(data).nbytes != chunk.raw_size:
        raise ValueError(f"{memoryview(data).nbytes} bytes where {chunk.raw_size} were recorded")
    return data


def sample_level(pieces: Sequence[Bytes], level: int = BUFFER_LEVEL) -> int:
    """``level`` if compressing a few of ``pieces`` (first, middle, last) pays, else 0 (store raw)."""
    if not pieces:
        return 0
    picks = {0, len(pieces) // 2, len(pieces) - 1}
    sample = [pieces[index] for index in sorted(picks)][:_SAMPLES]
    raw = sum(memoryview(piece).nbytes for piece in sample)
    packed = sum(len(_compressor(level).compress(piece)) for piece in sample)
    return level if packed * MIN_RATIO <= raw else 0
