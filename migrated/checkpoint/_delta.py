"""Deltas: a new chunk of the pickle stream stored as a zstd frame against the parent version's stream at the
same place, when that is much smaller than the chunk compressed alone.

Why: a change scattered over a state (1 % of a dict's entries at random keys) touches every chunk of its
stream, so content addressing alone stores the whole stream again (108 % of a full version, measured). A
chunk compressed with a raw-content dictionary made of the parent's stream around the same offset stores
little more than what changed (~3 % on that workload at zstd level 3).

How: the stream is cut into regions of ``REGION`` bytes; the new chunks that start in one region share one
dictionary: the parent's chunks that overlap the region widened by ``WINDOW`` on each side (the *bases*, in
stream order; their raw bytes concatenated). Measured on a 100k-entry dict, 1 % changed at random keys: a
dictionary per region came to 2.8 % of the chunks compressed alone in 89 ms, one per chunk to 2.7 % in 245 ms
(most of the time goes into loading the dictionary).

Bounds: a delta's depth is 1 + its deepest base's (a whole chunk has depth 0); bases ``MAX_DEPTH`` deep are
left out (``usable_bases``), so a restore expands at most ``MAX_DEPTH`` generations, and when all of a
region's bases are that deep its chunks are stored whole: with every chunk changing each time, one version in
``MAX_DEPTH + 1`` is whole, and a few after it pay for chunks left unchanged (still deep) beside changed ones.
A delta is kept only when it is at most 1/``GAIN`` of the chunk compressed alone; when the first ``PROBE`` tries of a
version do not pay (new content), no more are tried, so a state that changed wholesale pays little for the
attempt. Pure: the store hands in the parent's raw chunks and depths.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import zstandard

from migrated.checkpoint._codec import StoredChunk, delta_compressor, encode_delta
from migrated.checkpoint._snapshot import Bytes

__all__ = [
    "GAIN",
    "MAX_DEPTH",
    "PROBE",
    "REGION",
    "WINDOW",
    "Info",
    "Job",
    "bases_for",
    "encode_deltas",
    "jobs",
    "usable_bases",
]

REGION = 64 * 1024
WINDOW = 16 * 1024
MAX_DEPTH = 16
GAIN = 2
PROBE = 4


@dataclass(frozen=True, slots=True)
class Job:
    """A new stream chunk to try as a delta: its hash, its raw bytes and its bases."""

    digest: bytes
    data: Bytes
    bases: tuple[bytes, ...]


def _starts(refs: Sequence[tuple[bytes, int]]) -> list[int]:
    starts, offset = [], 0
    for _, size in refs:
        starts.append(offset)
        offset += size
    return starts


def bases_for(parent: Sequence[tuple[bytes, int]], starts: Sequence[int], offset: int) -> tuple[bytes, ...]:
    """The parent's chunks (``starts``: their offsets) that overlap the region of ``offset``, widened by
    ``WINDOW`` on each side; each once, in stream order."""
    region = offset // REGION * REGION
    low, high = region - WINDOW, region + REGION + WINDOW
    index = max(0, bisect.bisect_right(starts, low) - 1)
    found: dict[bytes, None] = {}
    while index < len(parent) and starts[index] < high:
        digest, size = parent[index]
        if starts[index] + size > low:
            found[digest] = None
        index += 1
    return tuple(found)


def jobs(
    stream: Sequence[tuple[bytes, int]], new: Mapping[bytes, Bytes], parent: Sequence[tuple[bytes, int]]
) -> list[Job]:
    """The chunks of ``stream`` that are in ``new`` (hash to raw bytes), each once, with their bases in
    ``parent``; in stream order."""
    parent_starts = _starts(parent)
    found: list[Job] = []
    seen: set[bytes] = set()
    for (digest, _), offset in zip(stream, _starts(stream), strict=True):
        data = new.get(digest)
        if data is None or digest in seen:
            continue
        seen.add(digest)
        bases = bases_for(parent, parent_starts, offset)
        if bases:
            found.append(Job(digest, data, bases))
    return found


Info = Callable[[bytes], tuple[int, tuple[bytes, ...]]]
"""A stored chunk's depth and bases (``(MAX_DEPTH, ())`` for one that cannot be used)."""


def usable_bases(bases: tuple[bytes, ...], info: Info) -> tuple[bytes, ...]:
    """``bases`` without those ``MAX_DEPTH`` deep. Standing in for such a base with its own bases (nearly the
    same bytes, one version older) was tried: chains then reach ever further back, and on a 100k-entry dict
    with 1 % changed at random keys each version after the first bound cost 30-60 % instead of ~2.5 %."""
    return tuple(base for base in bases if info(base)[0] < MAX_DEPTH)


def encode_deltas(
    work: Iterable[Job],
    whole: Mapping[bytes, StoredChunk],
    info: Info,
    raw: Callable[[bytes], Bytes | None],
) -> dict[bytes, StoredChunk]:
    """The deltas that pay, by hash. ``whole``: each chunk as it would be stored alone; ``info(hash)``: a stored
    chunk's depth and bases; ``raw(hash)``: a base's raw bytes, checked (``None`` when it cannot be read: no
    delta then)."""
    out: dict[bytes, StoredChunk] = {}
    tried = won = 0
    current: tuple[tuple[bytes, ...], zstandard.ZstdCompressor] | None = None
    for job in work:
        if tried >= PROBE and won * 2 < tried:
            break
        bases = usable_bases(job.bases, info)
        if not bases:
            continue
        probing = len(bases) == len(job.bases)  # a delta without some of its bases tells little
        if current is None or current[0] != bases:
            pieces = [raw(base) for base in bases]
            if any(piece is None for piece in pieces):
                continue
            current = (bases, delta_compressor(b"".join(piece for piece in pieces if piece is not None)))
        delta = encode_delta(job.data, current[1], bases, 1 + max(info(base)[0] for base in bases))
        pays = len(delta.data) * GAIN <= memoryview(whole[job.digest].data).nbytes
        if pays:
            out[job.digest] = delta
        tried, won = tried + probing, won + (probing and pays)
    return out
