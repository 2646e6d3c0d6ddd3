"""Getting a version to the destination: ask which chunks it lacks, send those in batches with the manifest
(``send``); there, store them under a staging name, checked, loading nothing (``receive``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace

from migrated import _heap
from migrated.checkpoint import WIRE_CODECS, Codec, Store, StoredChunk, chunk_hashes
from migrated.daemon._faults import fault_point
from migrated.daemon._peers import Peers
from migrated.discovery._paired import PairedPeer
from migrated.errors import CheckpointError, StorageError
from migrated.transport.v1 import checkpoint_pb2
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["BATCH_BYTES", "MoveProgress", "Report", "receive", "send", "staging"]

log = logging.getLogger("migrated.moves")

BATCH_BYTES = 1 << 20  # chunk bytes per Stage message
_CODECS = frozenset(int(codec) for codec in WIRE_CODECS)  # never a delta: its base might not be here


@dataclass(slots=True)
class MoveProgress:
    """How far a move is, for ``mig move``'s progress bar."""

    phase: str
    bytes_sent: int = 0
    bytes_total: int = 0
    chunks_sent: int = 0
    chunks_skipped: int = 0
    downtime: float = 0.0


Report = Callable[[MoveProgress], None]


def staging(migration: str) -> str:
    """The name a destination stores an incoming version under until the move commits."""
    return f"~move-{migration}"


async def send(
    peers: Peers,
    peer: PairedPeer,
    ref: pb.MigrationRef,
    manifest: checkpoint_pb2.CheckpointManifest,
    store: Store,
    phase: str,
    report: Report,
) -> pb.StageReply:
    """Stage ``manifest`` at ``peer``, sending only the chunks it lacks."""
    started = time.perf_counter()
    hashes = list(dict.fromkeys(chunk_hashes(manifest)))
    missing = list((await peers.call(peer, "Missing", pb.MissingRequest(hashes=hashes), 60)).missing)
    asked = time.perf_counter()
    chunks = await asyncio.to_thread(lambda: list(store.read_chunks(missing)))
    read = time.perf_counter()
    total = sum(len(chunk.data) for _, chunk in chunks)
    progress = MoveProgress(phase, 0, total, 0, len(hashes) - len(missing))
    report(replace(progress))

    async def requests() -> AsyncIterator[pb.StageRequest]:
        yield pb.StageRequest(migration=ref, manifest=manifest)
        for batch in _batches(chunks):
            yield pb.StageRequest(chunks=batch)
            progress.bytes_sent += sum(len(chunk.data) for chunk in batch)
            progress.chunks_sent += len(batch)
            report(replace(progress))

    reply: pb.StageReply = await peers.stage(peer, requests())
    log.info(
        "%s: %s of %d chunks (%d skipped), %.1f MiB: asked %.0f ms, read %.0f ms, sent and stored %.0f ms",
        ref.app, phase, len(hashes), len(hashes) - len(missing), total / 2**20, (asked - started) * 1000,
        (read - asked) * 1000, (time.perf_counter() - read) * 1000,
    )  # fmt: skip
    return reply


def _batches(chunks: list[tuple[bytes, StoredChunk]]) -> Iterator[list[pb.ChunkData]]:
    """The chunks as Stage messages of about ``BATCH_BYTES`` each."""
    batch: list[pb.ChunkData] = []
    size = 0
    for digest, chunk in chunks:
        batch.append(pb.ChunkData(hash=digest, codec=int(chunk.codec), raw_size=chunk.raw_size, data=bytes(chunk.data)))
        size += len(chunk.data)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def receive(
    requests: AsyncIterator[pb.StageRequest],
    store: Store,
    host: str,
    admit: Callable[[pb.MigrationRef], pb.MigrationRef],
) -> tuple[pb.MigrationRef, pb.StageReply]:
    """Store an incoming version under its staging name; ``admit`` checks the migration its first message names.
    Nothing is loaded: each chunk is checked against its hash as it is stored."""
    first = await anext(aiter(requests))
    ref, manifest = admit(first.migration), first.manifest
    chunks: dict[bytes, StoredChunk] = {}

    def take(message: pb.StageRequest) -> None:
        for chunk in message.chunks:
            if chunk.codec not in _CODECS:
                raise CheckpointError(f"a chunk of {ref.app!r} came with an unknown codec ({chunk.codec})")
            chunks[chunk.hash] = StoredChunk(Codec(chunk.codec), chunk.raw_size, chunk.data)

    take(first)
    async for message in requests:
        take(message)
    received = sum(len(chunk.data) for chunk in chunks.values())
    staged = type(manifest)()
    staged.CopyFrom(manifest)
    staged.app, staged.parent = staging(ref.id), 0
    await fault_point("destination-staging")
    started = time.perf_counter()
    try:
        info = await asyncio.to_thread(store.put_version, staged, chunks)
    except StorageError as exc:
        raise StorageError(f"{host} cannot store {ref.app!r}: {exc.message}") from None
    finally:
        chunks.clear()
        if received >= _heap.LARGE:
            await asyncio.to_thread(_heap.trim)
    log.info("staged %s for %s: %.1f MiB stored in %.0f ms", ref.app, ref.id[:8], received / 2**20,
             (time.perf_counter() - started) * 1000)  # fmt: skip
    return ref, pb.StageReply(version=info.version, bytes_stored=received)
