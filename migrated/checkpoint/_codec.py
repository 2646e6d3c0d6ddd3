"""Per-chunk compression: zstd where it pays, raw where it does not, a zstd delta against base chunks where
that pays more.

Pickled objects compress ~5x at zstd level 1-3; float arrays ~1.04x at level 1 (at ~800 MB/s, slower than
storing them). So each buffer is sampled first and stored raw when the sample shrinks by less than
``MIN_RATIO``; each compressed chunk that still does not pay is stored raw too. The codec is recorded per
chunk; a chunk's hash is always that of its raw bytes.

A ``DELTA`` chunk is a zstd frame compressed with a raw-content dictionary: the raw bytes of its base chunks,
concatenated in order (``_delta`` chooses them). Only the store makes and reads them; what travels to a peer
or into an export is always ``RAW`` or ``ZSTD`` (``WIRE_CODECS``), so nothing from outside needs a base.
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
    "WIRE_CODECS",
    "Codec",
    "StoredChunk",
    "decode",
    "delta_compressor",
    "delta_decompressor",
    "encode",
    "encode_delta",
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
    DELTA = 2


WIRE_CODECS = frozenset({Codec.RAW, Codec.ZSTD})
"""The codecs a chunk may have when it comes from a peer or a file (a delta's base might not travel with it)."""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as stored and sent: its codec, its raw size and its stored bytes; for a ``DELTA`` chunk, the hashes
    of its base chunks in order and its depth (1 + the deepest base's; whole chunks have depth 0)."""

    codec: Codec
    raw_size: int
    data: Bytes
    bases: tuple[bytes, ...] = ()
    depth: int = 0


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


def encode_delta(
    data: Bytes, compressor: zstandard.ZstdCompressor, bases: tuple[bytes, ...], depth: int
) -> StoredChunk:
    """``data`` as a ``DELTA`` chunk: compressed by ``compressor`` (made with ``delta_compressor`` from the raw
    bytes of ``bases``)."""
    return StoredChunk(Codec.DELTA, memoryview(data).nbytes, compressor.compress(data), bases, depth)


def delta_compressor(dictionary: Bytes, level: int = STREAM_LEVEL) -> zstandard.ZstdCompressor:
    """A compressor for deltas against ``dictionary`` (the raw bytes of the base chunks, concatenated)."""
    prepared = zstandard.ZstdCompressionDict(bytes(dictionary), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    prepared.precompute_compress(level=level)
    return zstandard.ZstdCompressor(dict_data=prepared, write_dict_id=False, write_checksum=False)


def delta_decompressor(dictionary: Bytes) -> zstandard.ZstdDecompressor:
    """A decompressor for deltas against ``dictionary`` (the raw bytes of the base chunks, concatenated)."""
    prepared = zstandard.ZstdCompressionDict(bytes(dictionary), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=prepared)


def decode(chunk: StoredChunk, bases: zstandard.ZstdDecompressor | None = None) -> Bytes:
    """The raw bytes of a stored chunk (a ``DELTA`` one needs ``bases``, a ``delta_decompressor`` of its bases);
    ``ValueError`` when they cannot be recovered. The raw size it declares is checked against ``MAX_CHUNK`` and
    against the zstd frame before anything is allocated."""
    if not 0 <= chunk.raw_size <= MAX_CHUNK:
        raise ValueError(f"it declares {chunk.raw_size} raw bytes, more than a chunk may hold ({MAX_CHUNK})")
    if chunk.codec == Codec.RAW:
        data = chunk.data
    elif chunk.codec == Codec.ZSTD:
        data = _unzstd(chunk, zstandard.ZstdDecompressor())
    elif chunk.codec == Codec.DELTA:
        if bases is None:
            raise ValueError("it is a delta, which cannot be read without its base")
        data = _unzstd(chunk, bases)
    else:
        raise ValueError(f"unknown codec {chunk.codec}")
    if memoryview(data).nbytes != chunk.raw_size:
        raise ValueError(f"{memoryview(data).nbytes} bytes where {chunk.raw_size} were recorded")
    return data


def _unzstd(chunk: StoredChunk, decompressor: zstandard.ZstdDecompressor) -> bytes:
    try:
        declared = zstandard.frame_content_size(chunk.data)
        if declared != chunk.raw_size:
            raise ValueError(f"its zstd frame declares {declared} bytes where {chunk.raw_size} were recorded")
        return decompressor.decompress(chunk.data, max_output_size=chunk.raw_size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd cannot decompress it ({exc})") from None


def sample_level(pieces: Sequence[Bytes], level: int = BUFFER_LEVEL) -> int:
    """``level`` if compressing a few of ``pieces`` (first, middle, last) pays, else 0 (store raw)."""
    if not pieces:
        return 0
    picks = {0, len(pieces) // 2, len(pieces) - 1}
    sample = [pieces[index] for index in sorted(picks)][:_SAMPLES]
    raw = sum(memoryview(piece).nbytes for piece in sample)
    packed = sum(len(_compressor(level).compress(piece)) for piece in sample)
    return level if packed * MIN_RATIO <= raw else 0
