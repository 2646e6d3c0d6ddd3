"""Put a version back together from its stored chunks, checking every chunk against its hash."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from zstandard import ZstdDecompressor

from migrated.checkpoint._chunks import chunk_hash
from migrated.checkpoint._codec import StoredChunk, decode
from migrated.checkpoint._snapshot import OutOfBand, Segment, Snapshot
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = ["Assembled", "Damage", "assemble", "check_chunk", "code_bundle"]

_SERIALIZERS = {pb.SERIALIZER_DILL: "dill"}


class Damage(Exception):
    """A chunk is missing, or its bytes do not match its hash."""

    def __init__(self, digest: bytes, reason: str) -> None:
        super().__init__(f"chunk {digest.hex()[:16]} {reason}")
        self.digest = digest
        self.reason = reason


def check_chunk(digest: bytes, stored: StoredChunk, bases: ZstdDecompressor | None = None) -> memoryview:
    """The raw bytes of ``stored``, once they match ``digest``; ``Damage`` otherwise. A delta needs ``bases``, a
    ``delta_decompressor`` of its bases."""
    try:
        raw = memoryview(decode(stored, bases))
    except ValueError as exc:
        raise Damage(digest, f"cannot be read back: {exc}") from None
    if chunk_hash(raw) != digest:
        raise Damage(digest, "does not match its hash")
    return raw


class Assembled:
    """The targets a version's chunks are copied into: the stream, each buffer and each code file.

    Given ``ahead`` (another version of the same app, assembled earlier: a move's pre-copy), each buffer of the
    same place and size is taken over with its bytes, and a chunk found there at the same offset is not needed
    again: only the rest is read (``needed``). ``ahead`` is used up."""

    def __init__(self, manifest: pb.CheckpointManifest, ahead: Assembled | None = None) -> None:
        self.manifest = manifest
        self.stream = bytearray(sum(ref.size for ref in manifest.stream))
        self.buffers = [_take_over(ahead, index, buffer.size) for index, buffer in enumerate(manifest.buffers)]
        self.code = {file.path: bytearray(file.size) for file in manifest.code}
        self._places: dict[bytes, list[tuple[bytearray, int, int]]] = {}
        self._place(self.stream, manifest.stream)
        for index, (target, buffer) in enumerate(zip(self.buffers, manifest.buffers, strict=True)):
            there = set()
            if ahead is not None and index < len(ahead.buffers) and ahead.buffers[index] is target:
                there = _at(ahead.manifest.buffers[index].chunks)
            self._place(target, buffer.chunks, there)
        for file in manifest.code:
            self._places.setdefault(file.hash, []).append((self.code[file.path], 0, file.size))
        if ahead is not None:
            ahead.buffers = []

    @property
    def needed(self) -> list[bytes]:
        """The hashes of the chunks still to put."""
        return list(self._places)

    def _place(
        self, target: bytearray, refs: Iterable[pb.ChunkRef], there: AbstractSet[tuple[bytes, int]] = frozenset()
    ) -> None:
        """Where each chunk of ``refs`` goes in ``target``, but for those ``there`` already (hash, offset)."""
        offset = 0
        for ref in refs:
            if (ref.hash, offset) not in there:
                self._places.setdefault(ref.hash, []).append((target, offset, ref.size))
            offset += ref.size

    def put(self, digest: bytes, stored: StoredChunk) -> None:
        """Check one chunk and copy it everywhere the version uses it."""
        places = self._places.pop(digest, None)
        if places is None:
            return
        raw = check_chunk(digest, stored)
        for target, offset, size in places:
            if raw.nbytes != size:
                raise Damage(digest, f"holds {raw.nbytes} bytes where the manifest says {size}")
            target[offset : offset + size] = raw

    def snapshot(self) -> Snapshot:
        """The state, once every chunk is in."""
        if self._places:
            raise Damage(next(iter(self._places)), "is missing from the store")
        buffers = tuple(
            OutOfBand(data, buffer.readonly) for data, buffer in zip(self.buffers, self.manifest.buffers, strict=True)
        )
        serializer = _SERIALIZERS.get(self.manifest.serializer, "pickle")
        return Snapshot((Segment(self.stream),), buffers, serializer)

    def code_files(self) -> dict[str, bytes]:
        """The code bundle, path to content."""
        return {path: bytes(data) for path, data in self.code.items()}


def _take_over(ahead: Assembled | None, index: int, size: int) -> bytearray:
    """Buffer ``index`` of ``ahead`` when it has that size, else a new one."""
    if ahead is not None and index < len(ahead.buffers) and len(ahead.buffers[index]) == size:
        return ahead.buffers[index]
    return bytearray(size)


def _at(refs: Iterable[pb.ChunkRef]) -> set[tuple[bytes, int]]:
    """Each chunk of ``refs`` as (hash, offset)."""
    found, offset = set(), 0
    for ref in refs:
        found.add((ref.hash, offset))
        offset += ref.size
    return found


def assemble(manifest: pb.CheckpointManifest, chunks: Iterable[tuple[bytes, StoredChunk]]) -> Assembled:
    """Copy ``chunks`` into place for ``manifest``; ``Damage`` names the first bad or missing chunk."""
    assembled = Assembled(manifest)
    for digest, stored in chunks:
        assembled.put(digest, stored)
    assembled.snapshot()
    return assembled


def code_bundle(manifest: pb.CheckpointManifest, chunks: Mapping[bytes, StoredChunk]) -> dict[str, bytes]:
    """A version's code files, path to content, each checked against its hash; ``Damage`` names the first bad or
    missing chunk. The state is not touched."""
    code: dict[str, bytes] = {}
    for file in manifest.code:
        stored = chunks.get(file.hash)
        if stored is None:
            raise Damage(file.hash, "is missing from the store")
        raw = check_chunk(file.hash, stored)
        if raw.nbytes != file.size:
            raise Damage(file.hash, f"holds {raw.nbytes} bytes where the manifest says {file.size}")
        code[file.path] = bytes(raw)
    return code
