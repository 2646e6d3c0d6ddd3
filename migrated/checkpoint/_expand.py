"""Raw bytes of stored chunks, deltas expanded through their bases, every chunk checked against its hash.

A delta's bases may be deltas too (at most ``_delta.MAX_DEPTH`` deep), and neighbouring deltas share bases,
so the raw bytes of bases are kept in a ``RawCache`` bounded in bytes: the store keeps one, so the next
checkpoint finds the parent's chunks there, and a restore walks each chain once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from zstandard import ZstdDecompressor

from migrated.checkpoint import _delta, _rows
from migrated.checkpoint._assemble import Damage, check_chunk
from migrated.checkpoint._codec import Codec, StoredChunk, delta_decompressor
from migrated.checkpoint._snapshot import Bytes

__all__ = ["CACHE_BYTES", "LOAD_CACHE_BYTES", "Expander", "RawCache"]

CACHE_BYTES = 16 * 1024 * 1024
"""What the store keeps between checkpoints: the parent's stream chunks, for the next one's deltas."""
LOAD_CACHE_BYTES = 64 * 1024 * 1024
"""What one load or verify keeps while it walks chains (freed when it ends): at ``MAX_DEPTH`` 16 a chain's
windows widen by 16 KiB a generation, and a 16 MiB cache made a restore of a 100k-entry dict 2x slower."""
_DECOMPRESSORS = 32


class RawCache:
    """Checked raw bytes of chunks by hash, least recently used dropped first beyond ``limit`` bytes."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            found = self._items.get(digest)
            if found is not None:
                self._items.move_to_end(digest)
            return found

    def put(self, digest: bytes, raw: Bytes) -> None:
        size = memoryview(raw).nbytes
        if size > self.limit:
            return
        with self._lock:
            if digest in self._items:
                self._items.move_to_end(digest)
                return
            self._items[digest] = bytes(raw)
            self._size += size
            while self._size > self.limit:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


class Expander:
    """Expands chunks read on ``conn`` (in a read transaction, or the writer's)."""

    def __init__(self, conn: sqlite3.Connection, cache: RawCache | None = None) -> None:
        self._conn = conn
        self._cache = cache if cache is not None else RawCache(LOAD_CACHE_BYTES)
        self._decompressors: OrderedDict[tuple[bytes, ...], ZstdDecompressor] = OrderedDict()
        self._stored: dict[bytes, StoredChunk] = {}  # prefetched bases, as stored (deltas are small)

    def prefetch(self, bases: Iterable[bytes]) -> None:
        """Read ``bases`` and their own bases, down their chains, a generation per query: a restore of a
        version 16 deltas deep made ~5,000 queries of one chunk each, half of its time."""
        wanted = [digest for digest in dict.fromkeys(bases) if self._cache.get(digest) is None]
        for _ in range(_delta.MAX_DEPTH + 1):
            if not wanted:
                return
            found = _rows.chunk_map(self._conn, wanted)
            self._stored.update(found)
            below = (base for stored in found.values() for base in stored.bases)
            wanted = [b for b in dict.fromkeys(below) if b not in self._stored and self._cache.get(b) is None]

    def raw(self, digest: bytes, stored: StoredChunk, depth: int = 0) -> memoryview:
        """The raw bytes of ``stored``, checked against ``digest``; ``Damage`` when they cannot be had (a base
        missing or damaged, a chain too deep)."""
        if stored.codec != Codec.DELTA:
            return check_chunk(digest, stored)
        if depth > _delta.MAX_DEPTH or not stored.bases:
            raise Damage(digest, "is a delta whose chain of bases is broken or too long")
        raw = check_chunk(digest, stored, self._decompressor(stored.bases, depth))
        self._cache.put(digest, raw)
        return raw

    def _decompressor(self, bases: tuple[bytes, ...], depth: int) -> ZstdDecompressor:
        """One for each set of bases (neighbouring deltas share theirs), the last few kept."""
        found = self._decompressors.get(bases)
        if found is None:
            found = delta_decompressor(b"".join(self.base(base, depth + 1) for base in bases))
            self._decompressors[bases] = found
            if len(self._decompressors) > _DECOMPRESSORS:
                self._decompressors.popitem(last=False)
        else:
            self._decompressors.move_to_end(bases)
        return found

    def base(self, digest: bytes, depth: int = 0) -> bytes:
        """The raw bytes of the stored chunk ``digest``, checked; ``Damage`` names the chunk that failed."""
        found = self._cache.get(digest)
        if found is not None:
            return found
        stored = self._stored.get(digest)
        if stored is None:
            rows = list(_rows.read_chunks(self._conn, [digest]))
            if not rows:
                raise Damage(digest, "is a delta's base that is missing from the store")
            stored = rows[0][1]
        raw = bytes(self.raw(digest, stored, depth))
        self._cache.put(digest, raw)
        return raw

    def whole(self, chunks: Iterable[tuple[bytes, StoredChunk]]) -> Iterator[tuple[bytes, StoredChunk]]:
        """``chunks`` with every delta expanded to a ``RAW`` chunk (checked); others as they are."""
        for digest, stored in chunks:
            if stored.codec == Codec.DELTA:
                yield digest, StoredChunk(Codec.RAW, stored.raw_size, self.raw(digest, stored))
            else:
                yield digest, stored
