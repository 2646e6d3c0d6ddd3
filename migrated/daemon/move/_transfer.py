"""Getting a version to the destination: ask which chunks it lacks, send those in batches with the manifest
(``send``); there, store them under a staging name, checked, loading nothing (``receive``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

from migrated import _heap
from migrated.checkpoint import WIRE_CODECS, Codec, Store, StoredChunk, chunk_hashes
from migrated.daemon._faults import fault_point
from migrated.daemon._peers import Peers
from migrated.discovery._paired import PairedPeer
from migrated.errors import CheckpointError, MigError, StorageError
from migrated.transport.v1 import checkpoint_pb2
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["BATCH_BYTES", "MoveProgress", "Report", "receive", "send", "staging"]

log = logging.getLogger("migrated.moves")
T = TypeVar("T")

BATCH_BYTES = 1 << 20  # chunk bytes per Stage message
READ_BYTES = 4 << 20  # chunk bytes the source reads from its store at a time
READ_AHEAD = 2  # reads the source keeps ready ahead of the stream
STORE_BYTES = 8 << 20  # chunk bytes the destination stores per transaction while the stream goes on
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
    present: set[bytes] | None = None,
) -> pb.StageReply:
    """Stage ``manifest`` at ``peer``, sending only the chunks it lacks: those not in ``present`` when the caller
    knows what the peer has (what it staged earlier in the same move), else those it says it lacks. Reading
    them from the store runs ahead of the stream by ``READ_AHEAD`` reads of about ``READ_BYTES`` each, so
    reading and sending overlap in bounded memory. ``present`` then holds the manifest's chunks too."""
    started = time.perf_counter()
    hashes = list(dict.fromkeys(chunk_hashes(manifest)))
    if present is None:
        missing = list((await peers.call(peer, "Missing", pb.MissingRequest(hashes=hashes), 60)).missing)
    else:
        missing = [digest for digest in hashes if digest not in present]
    sizes = await asyncio.to_thread(store.stored_sizes, missing)
    asked = time.perf_counter()
    progress = MoveProgress(phase, 0, sum(sizes.values()), 0, len(hashes) - len(missing))
    report(replace(progress))
    reads: asyncio.Queue[list[tuple[bytes, StoredChunk]] | None] = asyncio.Queue(READ_AHEAD)
    failed: list[MigError] = []

    async def read() -> None:
        try:
            for wanted in _reads(missing, sizes):
                await reads.put(await asyncio.to_thread(_read, store, wanted))
        except MigError as exc:  # the stream ends short; this is the error the move fails with
            failed.append(exc)
        await reads.put(None)

    async def requests() -> AsyncIterator[pb.StageRequest]:
        yield pb.StageRequest(migration=ref, manifest=manifest)
        while (chunks := await reads.get()) is not None:
            for batch in _batches(chunks):
                yield pb.StageRequest(chunks=batch)
                progress.bytes_sent += sum(len(chunk.data) for chunk in batch)
                progress.chunks_sent += len(batch)
                report(replace(progress))

    reader = asyncio.ensure_future(read())
    try:
        reply: pb.StageReply = await peers.stage(peer, requests())
    except MigError:
        if failed:
            raise failed[0] from None
        raise
    finally:
        reader.cancel()
        await asyncio.wait([reader])
    if failed:
        raise failed[0]
    if present is not None:
        present.update(hashes)
    log.info(
        "%s: %s of %d chunks (%d skipped), %.1f MiB: asked %.0f ms, read, sent and stored %.0f ms",
        ref.app, phase, len(hashes), len(hashes) - len(missing), progress.bytes_total / 2**20,
        (asked - started) * 1000, (time.perf_counter() - asked) * 1000,
    )  # fmt: skip
    return reply


def _reads(missing: list[bytes], sizes: dict[bytes, int]) -> Iterator[list[bytes]]:
    """``missing`` in runs of about ``READ_BYTES`` stored bytes."""
    run: list[bytes] = []
    size = 0
    for digest in missing:
        run.append(digest)
        size += sizes.get(digest, 0)
        if size >= READ_BYTES:
            yield run
            run, size = [], 0
    if run:
        yield run


def _read(store: Store, wanted: list[bytes]) -> list[tuple[bytes, StoredChunk]]:
    chunks = list(store.read_chunks(wanted))
    if len(chunks) < len(wanted):
        lost = next(iter(set(wanted) - {digest for digest, _ in chunks}))
        raise CheckpointError(f"chunk {lost.hex()[:16]} is no longer in this host's store; try the move again")
    return chunks


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
) -> tuple[pb.MigrationRef, checkpoint_pb2.CheckpointManifest, pb.StageReply]:
    """Store an incoming version under its staging name; ``admit`` checks the migration its first message names.
    Nothing is loaded: each chunk is checked against its hash as it is stored, ``STORE_BYTES`` at a time while
    the stream goes on (one part stored while the next arrives), the version once all of it is in. Only chunks
    the manifest lists are taken."""
    first = await anext(aiter(requests))
    ref, manifest = admit(first.migration), first.manifest
    listed = set(chunk_hashes(manifest))
    chunks: dict[bytes, StoredChunk] = {}
    storing: asyncio.Future[int] | None = None
    received = 0

    def take(message: pb.StageRequest) -> int:
        for chunk in message.chunks:
            if chunk.codec not in _CODECS:
                raise CheckpointError(f"a chunk of {ref.app!r} came with an unknown codec ({chunk.codec})")
            if chunk.hash not in listed:
                raise CheckpointError(f"a chunk of {ref.app!r} came that its manifest does not list")
            chunks[chunk.hash] = StoredChunk(Codec(chunk.codec), chunk.raw_size, chunk.data)
        return sum(len(chunk.data) for chunk in message.chunks)

    started = time.perf_counter()
    try:
        pending = received = take(first)
        async for message in requests:
            size = take(message)
            received, pending = received + size, pending + size
            if pending >= STORE_BYTES:
                if storing is not None:
                    await _stored(storing, ref, host)
                    await fault_point("destination-storing")
                storing = asyncio.ensure_future(asyncio.to_thread(store.put_chunks, chunks))
                chunks, pending = {}, 0
        if storing is not None:
            await _stored(storing, ref, host)
    finally:
        if storing is not None and not storing.done():
            await asyncio.wait([storing])  # a thread cannot be stopped: the stream ended under it
    staged = type(manifest)()
    staged.CopyFrom(manifest)
    staged.app, staged.parent = staging(ref.id), 0
    await fault_point("destination-staging")
    try:
        info = await _stored(asyncio.ensure_future(asyncio.to_thread(store.put_version, staged, chunks)), ref, host)
    finally:
        chunks.clear()
        if received >= _heap.LARGE:
            await asyncio.to_thread(_heap.trim)
    log.info("staged %s for %s: %.1f MiB received and stored in %.0f ms", ref.app, ref.id[:8], received / 2**20,
             (time.perf_counter() - started) * 1000)  # fmt: skip
    return ref, staged, pb.StageReply(version=info.version, bytes_stored=received)


async def _stored(storing: asyncio.Future[T], ref: pb.MigrationRef, host: str) -> T:
    try:
        return await storing
    except StorageError as exc:
        raise StorageError(f"{host} cannot store {ref.app!r}: {exc.message}") from None
