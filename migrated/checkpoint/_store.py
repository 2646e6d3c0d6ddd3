"""The checkpoint store: immutable, numbered versions of apps and the content-addressed chunks they share, in
one SQLite file.

Threading rule: every method blocks, so call it from a worker thread (``asyncio.to_thread``), never from an
event loop. Any number of threads may call at once. Writes run one at a time, in order, on the store's own
writer thread, which alone holds the write connection; reads run on the calling thread, on a connection of
that thread's own, and see the last committed state (WAL), never a half-written version. CPU work that needs
no lock (compressing and checking chunks) runs in the calling thread, before the write task is queued.

A store opened with ``readonly=True`` (a runner that restores an app) has no writer and never writes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeVar

from migrated._storage import disk_problem, fix, storage_error
from migrated.checkpoint import _archive, _delta, _retention, _rows, _schema, _writes
from migrated.checkpoint._assemble import Assembled, Damage, assemble, check_chunk, code_bundle
from migrated.checkpoint._chunks import Piece
from migrated.checkpoint._codec import STREAM_LEVEL, Codec, StoredChunk, encode
from migrated.checkpoint._expand import Expander, RawCache
from migrated.checkpoint._manifest import Draft, Kind, check_manifest, chunk_hashes, proto_kind
from migrated.checkpoint._rows import VersionInfo
from migrated.checkpoint._snapshot import Snapshot
from migrated.checkpoint._writer import Writer
from migrated.errors import CheckpointDamagedError, CheckpointError, MigError, StateDirError
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = ["Damaged", "Loaded", "Pending", "Store", "VerifyReport"]

ChunkSource = Mapping[bytes, Piece | StoredChunk]
Code = dict[str, bytes]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A version brought back: what ``mig history`` shows, its manifest, its state and its code."""

    info: VersionInfo
    manifest: pb.CheckpointManifest
    snapshot: Snapshot
    code: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Damaged:
    """A chunk that fails its check, and a version that uses it (app "" when no version does)."""

    app: str
    version: int
    chunk: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` re-hashed, and what it found damaged."""

    chunks: int
    bytes: int
    damaged: list[Damaged] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No damage found."""
        return not self.damaged


class Store:
    """The checkpoint store in ``path`` (created when missing, unless ``readonly``)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._marker = self.path.with_name(self.path.name + ".open")
        self.unclean = False
        self.problems: list[str] = []
        self._writer: Writer | None = None
        self._raws = RawCache()  # raw stream chunks of recent versions: the bases of the next one's deltas
        self._pins: collections.Counter[bytes] = collections.Counter()  # chunks of versions being written
        if not readonly:
            self.unclean = self._marker.exists()
            self._writer = Writer(self._open_writer, f"checkpoint-store-writer {self.path.name}")
            try:
                self._marker.touch()
            except OSError as exc:
                self.close()
                problem = disk_problem(exc, self.path.parent) or str(exc)
                raise StateDirError(f"cannot use {self.path.parent}: {problem}; {fix(problem)}") from None

    def _open_writer(self) -> sqlite3.Connection:
        conn = _schema.connect(self.path, create=True)
        try:
            _schema.migrate(conn, self.path)
            if self.unclean:
                rows = [row[0] for row in conn.execute("PRAGMA quick_check")]
                self.problems = [] if rows == ["ok"] else rows
        except sqlite3.DatabaseError as exc:
            conn.close()
            problem = disk_problem(exc, self.path.parent)
            if problem:
                raise StateDirError(
                    f"cannot open the checkpoint store {self.path}: {problem}; {fix(problem)}"
                ) from None
            raise StateDirError(
                f"the checkpoint store {self.path} cannot be used ({exc}); move it aside to start an empty one"
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Finish queued writes and close every connection; a clean close leaves no unclean-shutdown marker."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._marker.unlink(missing_ok=True)
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # Reads

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection, in one read transaction (a consistent snapshot)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _schema.connect(self.path)
            with self._lock:
                self._readers.append(conn)
        if conn.in_transaction:  # a read inside a read: same snapshot
            yield conn
            return
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failure(exc, "the checkpoint store could not be read") from None

    def apps(self) -> list[str]:
        """Apps with at least one version."""
        with self._read() as conn:
            query = "SELECT name FROM apps WHERE EXISTS (SELECT 1 FROM versions WHERE app_id = apps.id) ORDER BY name"
            return [row[0] for row in conn.execute(query)]

    def list_versions(self, app: str) -> list[VersionInfo]:
        """The history of ``app``, oldest first (empty for an app with no versions)."""
        with self._read() as conn:
            return _rows.version_infos(conn, app)

    def latest(self, app: str) -> VersionInfo | None:
        """The newest version of ``app``, if any."""
        versions = self.list_versions(app)
        return versions[-1] if versions else None

    def get_version(self, app: str, version: int) -> VersionInfo:
        """One version of ``app``; ``VersionNotFoundError`` when there is no such version."""
        with self._read() as conn:
            return _rows.find_version(conn, app, version).info

    def manifest(self, app: str, version: int | None = None) -> pb.CheckpointManifest:
        """A version's manifest (the latest's when ``version`` is None)."""
        with self._read() as conn:
            return _rows.find_version(conn, app, version).manifest

    def missing(self, hashes: Iterable[bytes]) -> set[bytes]:
        """Those of ``hashes`` the store does not hold."""
        wanted = list(dict.fromkeys(hashes))
        with self._read() as conn:
            return set(wanted) - set(_rows.chunk_ids(conn, wanted))

    def stored_sizes(self, hashes: Iterable[bytes]) -> dict[bytes, int]:
        """The stored (compressed or raw) size of those of ``hashes`` that are stored."""
        with self._read() as conn:
            return _rows.stored_sizes(conn, list(hashes))

    def read_chunks(self, hashes: Iterable[bytes]) -> Iterator[tuple[bytes, StoredChunk]]:
        """Stored chunks as they travel (compressed or raw, never a delta: the peer may lack its base, so a delta
        is expanded and compressed whole): what a transfer sends."""
        with self._read() as conn:
            yield from _travelling(Expander(conn), _rows.read_chunks(conn, hashes))

    def load(self, app: str, version: int | None = None, ahead: Assembled | None = None) -> Loaded:
        """Bring a version back (the latest when ``version`` is None), checking every chunk against its hash.

        A damaged or missing chunk raises ``CheckpointDamagedError`` naming the app and version, so the caller
        can fall back to an earlier version (``load_last_good`` does). A version larger than the memory this host
        has available is refused before anything is allocated. With ``ahead`` (``read_ahead`` of an earlier
        version), only the chunks it lacks are read.
        """
        with self._read() as conn:
            row = _rows.find_version(conn, app, version)
            check_manifest(row.manifest, f"version {row.info.version} of {app!r}")
            _check_fits(row.manifest, row.info)
            assembled = Assembled(row.manifest, ahead)
            expander = Expander(conn)
            expander.prefetch(_rows.version_bases(conn, row.id))
            chunks = (
                _rows.read_version_chunks(conn, row.id) if ahead is None else _rows.read_chunks(conn, assembled.needed)
            )
            try:
                for digest, stored in expander.whole(chunks):
                    assembled.put(digest, stored)
                snapshot = assembled.snapshot()
            except Damage as damage:
                raise _damaged(app, row.info.version, damage) from None
        return Loaded(row.info, row.manifest, snapshot, assembled.code_files())

    def read_ahead(self, app: str, version: int) -> Assembled:
        """A version's bytes, checked but not unpickled, for a ``load`` of a later version to start from."""
        with self._read() as conn:
            row = _rows.find_version(conn, app, version)
            check_manifest(row.manifest, f"version {row.info.version} of {app!r}")
            _check_fits(row.manifest, row.info)
            expander = Expander(conn)
            expander.prefetch(_rows.version_bases(conn, row.id))
            try:
                return assemble(row.manifest, expander.whole(_rows.read_version_chunks(conn, row.id)))
            except Damage as damage:
                raise _damaged(app, row.info.version, damage) from None

    def load_code(self, app: str, version: int | None = None) -> tuple[VersionInfo, pb.CheckpointManifest, Code]:
        """A version's manifest and code bundle, checked, without its state (what a daemon needs to run it)."""
        with self._read() as conn:
            row = _rows.find_version(conn, app, version)
            check_manifest(row.manifest, f"version {row.info.version} of {app!r}")
            try:
                hashes = list({file.hash for file in row.manifest.code})
                code = code_bundle(row.manifest, dict(Expander(conn).whole(_rows.read_chunks(conn, hashes))))
            except Damage as damage:
                raise _damaged(app, row.info.version, damage) from None
        return row.info, row.manifest, code

    def load_last_good(self, app: str) -> tuple[Loaded, list[CheckpointDamagedError]]:
        """The newest version of ``app`` that loads whole, and the damage of the newer ones it skipped."""
        skipped: list[CheckpointDamagedError] = []
        for info in reversed(self.list_versions(app)):
            try:
                return self.load(app, info.version), skipped
            except CheckpointDamagedError as exc:
                skipped.append(exc)
        if skipped:
            raise CheckpointDamagedError(
                f"every version of {app!r} is damaged (newest: {skipped[0]})", app=app, version=skipped[0].version
            )
        return self.load(app), skipped  # raises VersionNotFoundError

    def verify(self) -> VerifyReport:
        """Re-hash every stored chunk and manifest; report each damaged chunk with the versions that use it, and
        each version whose manifest is damaged (with an empty chunk hash)."""
        bad: dict[int, tuple[bytes, str]] = {}
        count = size = 0
        with self._read() as conn:
            expander = Expander(conn)  # its own cache: every base is read and checked again
            for chunk_id, digest, stored in _rows.all_chunks(conn):
                count += 1
                if stored is None:
                    bad[chunk_id] = (digest, "is stored with an unknown codec")
                    continue
                size += stored.raw_size
                try:
                    expander.raw(digest, stored)
                except Damage as damage:
                    bad[chunk_id] = (digest, damage.reason)
            damaged = _damaged_manifests(conn) + _damaged_versions(conn, bad)
        return VerifyReport(count, size, damaged)

    # Writes

    @contextlib.contextmanager
    def pending(self) -> Iterator[Pending]:
        """Store a version's chunks ahead of it, a batch at a time, so a large version is never held whole in
        memory: ``pending.put(manifest, chunks)``, then ``put_version(manifest, rest, pending)``. Until the block
        ends the chunks put are kept from ``gc``, though no version uses them yet."""
        pending = Pending(self)
        try:
            yield pending
        finally:
            with self._lock:
                self._pins.subtract(pending.pinned)
                self._pins += collections.Counter()  # drops the zeros

    def _pinned(self) -> frozenset[bytes]:
        with self._lock:
            return frozenset(self._pins)

    def put_version(
        self, manifest: pb.CheckpointManifest, chunks: ChunkSource, pending: Pending | None = None
    ) -> VersionInfo:
        """Store a new version of ``manifest.app`` from its manifest and its chunks; return what was stored.

        ``chunks`` must hold every chunk the store lacks (extra ones are ignored): raw ``Piece``s from
        ``make_draft``, or ``StoredChunk``s (from a peer or an export), which are checked against their hash.
        The store sets the version number, the parent (the latest version unless ``manifest.parent`` is set),
        the time (unless set) and the bytes added (with those ``pending`` stored ahead). The version is visible
        only once all of it is stored.
        """
        return self._put(manifest, chunks, new_app=False, ahead=pending.added if pending else 0)

    def _encode_new(
        self, manifest: pb.CheckpointManifest, chunks: ChunkSource, wanted: Iterable[bytes], *, deltas: bool
    ) -> dict[bytes, StoredChunk]:
        """The stored form of the ``wanted`` chunks the store lacks: compressed, or deltas where they pay."""
        missing = self.missing(wanted)
        ready = {digest: _encoded(digest, chunks) for digest in missing}
        if deltas:
            ready.update(self._deltas(manifest, ready, chunks))
        return ready

    def _put(
        self, manifest: pb.CheckpointManifest, chunks: ChunkSource, *, new_app: bool, ahead: int = 0
    ) -> VersionInfo:
        check_manifest(manifest, f"the checkpoint of {manifest.app!r}")
        ready = self._encode_new(manifest, chunks, chunk_hashes(manifest), deltas=not new_app)

        def source(digest: bytes) -> StoredChunk:  # a chunk another task removed since we looked
            return ready[digest] if digest in ready else _encoded(digest, chunks)

        def whole(digest: bytes) -> StoredChunk:
            return _encoded(digest, chunks)

        def task(conn: sqlite3.Connection) -> VersionInfo:
            return _writes.put_version(conn, manifest, source, new_app=new_app, whole=whole, ahead=ahead)

        info = self._write(task)
        self._remember(manifest, chunks)
        return info

    def _deltas(
        self, manifest: pb.CheckpointManifest, whole: Mapping[bytes, StoredChunk], chunks: ChunkSource
    ) -> dict[bytes, StoredChunk]:
        """The new stream chunks worth storing as deltas against the parent version (``_delta``)."""
        new = {ref.hash: piece.data for ref in manifest.stream if isinstance(piece := chunks.get(ref.hash), Piece)}
        new = {digest: data for digest, data in new.items() if digest in whole}
        if not new:
            return {}
        with self._read() as conn:
            try:
                parent = _rows.find_version(conn, manifest.app, manifest.parent or None).manifest
            except MigError:  # no parent (a first version), or a damaged one: no deltas
                return {}
            refs = [(ref.hash, ref.size) for ref in parent.stream]
            work = _delta.jobs([(ref.hash, ref.size) for ref in manifest.stream], new, refs)
            info = _rows.ChunkInfo(conn)
            expander = Expander(conn, self._raws)

            def raw(digest: bytes) -> bytes | None:
                try:
                    return expander.base(digest)
                except Damage:
                    return None

            return _delta.encode_deltas(work, whole, info, raw)

    def _remember(self, manifest: pb.CheckpointManifest, chunks: ChunkSource) -> None:
        """Keep the raw stream chunks of a version made here: the next version's deltas start from them."""
        for ref in manifest.stream:
            piece = chunks.get(ref.hash)
            if isinstance(piece, Piece):
                self._raws.put(ref.hash, piece.data)

    def put_chunks(self, chunks: Mapping[bytes, StoredChunk]) -> int:
        """Store chunks ahead of the version that uses them (a move's incoming stream, a part at a time), each
        checked against its hash; return the bytes added. Until a version uses them, ``gc`` may remove them."""
        missing = self.missing(chunks)
        ready = {digest: _encoded(digest, chunks) for digest in missing}
        return self._write(lambda conn: _writes.put_chunks(conn, ready, lambda digest: _encoded(digest, chunks)))

    def put_draft(self, draft: Draft) -> VersionInfo:
        """``put_version`` of a draft made in this process."""
        return self.put_version(draft.manifest, draft.pieces)

    def export(self, app: str, out: BinaryIO, version: int | None = None, sign: _archive.Sign | None = None) -> int:
        """Write one version (the latest by default), its chunks and code to ``out``, signed by ``sign`` if
        given; return the bytes written."""
        with self._read() as conn:
            row = _rows.find_version(conn, app, version)
            chunks = _travelling(Expander(conn), _rows.read_version_chunks(conn, row.id))
            return _archive.write_export(out, row.manifest, chunks, sign)

    def import_(self, src: BinaryIO, name: str = "", source: str = "the file") -> VersionInfo:
        """Check an export from ``src`` whole, then store it as the first version of a new app (``name``, or
        the name it was exported under). ``source`` names the file in error messages."""
        return self.add_import(_archive.read_export(src, source), name)

    def add_import(self, export: _archive.Export, name: str = "") -> VersionInfo:
        """Store a checked export as the first version of a new app (``name``, or the name it was exported
        under), in one transaction; ``AppExistsError`` if that app has versions already."""
        manifest = export.manifest
        imported = pb.CheckpointManifest()
        imported.CopyFrom(manifest)
        imported.app = name or manifest.app
        imported.origin_app, imported.origin_version = manifest.app, manifest.version
        imported.kind, imported.parent, imported.created = proto_kind(Kind.IMPORT), 0, 0
        imported.message = f"import of {manifest.app} version {manifest.version}"
        return self._put(imported, export.chunks, new_app=True)

    def restore(self, app: str, version: int, message: str = "", kind: Kind = Kind.RESTORE) -> VersionInfo:
        """Bring back ``version`` as a new version whose parent it is (history is never rewritten); ``kind`` is
        ``CRASH`` when the daemon brings an app back after a crash."""
        text = message or f"restore of version {version}"
        return self._write(lambda conn: _writes.copy_version(conn, app, version, app, kind, text))

    def fork(self, app: str, new_app: str, version: int | None = None, message: str = "") -> VersionInfo:
        """A new app whose first version is ``app``'s ``version`` (its latest by default), sharing every chunk."""
        number = version if version is not None else self._latest_number(app)
        text = message or f"fork of {app} version {number}"
        return self._write(lambda conn: _writes.copy_version(conn, app, number, new_app, Kind.FORK, text))

    def adopt(self, staging: str, version: int, app: str, message: str) -> VersionInfo:
        """Make a staged version the next version of ``app`` (kind ``move``) and drop the staging app."""
        return self._write(lambda conn: _writes.adopt_version(conn, staging, version, app, message))

    def delete_versions(self, app: str, versions: Sequence[int]) -> list[int]:
        """Delete versions of ``app``; return those that existed. Their chunks stay until ``gc``."""
        return self._write(lambda conn: _writes.delete_versions(conn, app, versions), "not deleted")

    def apply_retention(self, app: str, policy: _retention.RetentionPolicy) -> list[int]:
        """Thin ``app``'s automatic versions by ``policy``; return the versions deleted."""
        return self._write(lambda conn: _writes.retain(conn, app, policy), "not thinned")

    def remove_app(self, app: str) -> int:
        """Delete every version of ``app`` (``mig rm``); return how many. Chunks stay until ``gc``."""
        return self._write(lambda conn: _writes.remove_app(conn, app), "not removed")

    def gc(self) -> _writes.GcReport:
        """Delete every chunk that no version references."""
        return self._write(lambda conn: _writes.gc(conn, self._pinned()), "nothing collected")

    def write(self, task: Callable[[sqlite3.Connection], T], what: str = "not saved") -> T:
        """Run ``task`` on the writer thread, after the writes queued before it; ``task`` opens its own
        transaction (``immediate``). What the daemon keeps besides checkpoints goes through here too, so one
        writer holds the database and a change to a checkpoint and a daemon table can be one transaction."""
        return self._write(task, what)

    def read(self, task: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``task`` on this thread's read connection, in one read transaction (a consistent snapshot)."""
        with self._read() as conn:
            return task(conn)

    def _latest_number(self, app: str) -> int:
        with self._read() as conn:
            return _rows.find_version(conn, app, None).info.version

    def _write(self, task: Callable[[sqlite3.Connection], T], what: str = "not saved") -> T:
        if self._writer is None:
            raise CheckpointError(f"the checkpoint store {self.path} is open read-only or closed")
        try:
            return self._writer.run(task)
        except (sqlite3.Error, OSError) as exc:
            raise self._failure(exc, what) from None

    def _failure(self, exc: sqlite3.Error | OSError, what: str) -> MigError:
        """One sentence for a failure of SQLite or the disk under the store."""
        if disk_problem(exc, self.path.parent):
            return storage_error(exc, self.path.parent, what)
        return CheckpointError(f"{what}: the checkpoint store {self.path} failed ({exc}); run mig verify")


def _encoded(digest: bytes, chunks: ChunkSource) -> StoredChunk:
    """The stored form of a chunk the caller gave: raw pieces are compressed, stored ones are checked."""
    given = chunks.get(digest)
    if given is None:
        raise CheckpointError(f"chunk {digest.hex()[:16]} of the checkpoint was not given and is not stored")
    if isinstance(given, Piece):
        return encode(given.data, given.level)
    try:
        check_chunk(digest, given)
    except Damage as damage:
        raise CheckpointError(f"refusing a chunk that fails its check: {damage}") from None
    return given


class Pending:
    """Chunks of one version stored ahead of it (``Store.pending``)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.pinned: collections.Counter[bytes] = collections.Counter()
        self.added = 0  # bytes stored
        self.received = 0  # raw bytes given

    def put(self, manifest: pb.CheckpointManifest, chunks: Mapping[bytes, Piece]) -> None:
        """Store those of ``chunks`` (of the version ``manifest`` describes) that the store lacks, compressed
        or as deltas where they pay, in one transaction."""
        store = self._store
        with store._lock:
            store._pins.update(chunks.keys())
        self.pinned.update(chunks.keys())
        self.received += sum(memoryview(piece.data).nbytes for piece in chunks.values())
        check_manifest(manifest, f"the checkpoint of {manifest.app!r}")
        ready = store._encode_new(manifest, chunks, list(chunks), deltas=True)

        def task(conn: sqlite3.Connection) -> int:
            return _writes.put_chunks(conn, ready, lambda digest: _encoded(digest, chunks))

        self.added += store._write(task)
        store._remember(manifest, chunks)


def _travelling(expander: Expander, chunks: Iterable[tuple[bytes, StoredChunk]]) -> Iterator[tuple[bytes, StoredChunk]]:
    """``chunks`` as they leave the store: a delta expanded (checked) and compressed whole."""
    for digest, stored in chunks:
        if stored.codec != Codec.DELTA:
            yield digest, stored
            continue
        try:
            raw = expander.raw(digest, stored)
        except Damage as damage:
            raise CheckpointDamagedError(f"{damage}; run mig verify") from None
        yield digest, encode(raw, STREAM_LEVEL)


def _check_fits(manifest: pb.CheckpointManifest, info: VersionInfo) -> None:
    """Refuse to assemble a state larger than the memory available (a manifest may declare any size)."""
    size = sum(ref.size for ref in manifest.stream) + sum(buffer.size for buffer in manifest.buffers)
    available = _available_memory()
    if size > available:
        raise CheckpointError(
            f"version {info.version} of {info.app!r} holds {size / 2**30:.1f} GiB of state, more than the "
            f"{available / 2**30:.1f} GiB of memory this host has available; open it on a larger host"
        )


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo (all of RAM where it cannot be read)."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _damaged(app: str, version: int, damage: Damage) -> CheckpointDamagedError:
    return CheckpointDamagedError(
        f"version {version} of {app!r} is damaged ({damage}); restore an earlier version (mig history {app})",
        app=app,
        version=version,
    )


def _damaged_manifests(conn: sqlite3.Connection) -> list[Damaged]:
    found = []
    query = "SELECT a.name, v.version, v.manifest, v.manifest_hash FROM versions v JOIN apps a ON a.id = v.app_id"
    for app, version, data, digest in conn.execute(query + " ORDER BY a.name, v.version"):
        if digest is None or _rows.manifest_hash(data) != digest:
            found.append(Damaged(app, version, b"", "its manifest does not match its hash"))
    return found


def _damaged_versions(conn: sqlite3.Connection, bad: Mapping[int, tuple[bytes, str]]) -> list[Damaged]:
    found: list[Damaged] = []
    for chunk_id, (digest, reason) in bad.items():
        rows = conn.execute(
            "SELECT a.name, v.version FROM version_chunks vc JOIN versions v ON v.id = vc.version_id "
            "JOIN apps a ON a.id = v.app_id WHERE vc.chunk_id = ? ORDER BY a.name, v.version",
            (chunk_id,),
        ).fetchall()
        found += [Damaged(app, version, digest, reason) for app, version in rows] or [Damaged("", 0, digest, reason)]
    return found
