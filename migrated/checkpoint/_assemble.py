"""Put a version back together from its stored chunks, checking every chunk against its hash."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
    """The targets a version's chunks are copied into: the stream, each buffer and each code file."""

    def __init__(self, manifest: pb.CheckpointManifest) -> None:
        self.manifest = manifest
        self.stream = bytearray(sum(ref.size for ref in manifest.stream))
        self.buffers = [bytearray(buffer.size) for buffer in manifest.buffers]
        self.code = {file.path: bytearray(file.size) for file in manifest.code}
        self._places: dict[bytes, list[tuple[bytearray, int, int]]] = {}
        self._place(self.stream, manifest.stream)
        for target, buffer in zip(self.buffers, manifest.buffers, strict=True):
            self._place(target, buffer.chunks)
        for file in manifest.code:
            self._places.setdefault(file.hash, []).append((self.code[file.path], 0, file.size))

    def _place(self, target: bytearray, refs: Iterable[pb.ChunkRef]) -> None:
        offset = 0
        for ref in refs:
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
