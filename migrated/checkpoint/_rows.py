"""SQL the store's reads and writes share: version rows, chunk lookups."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from blake3 import blake3
from google.protobuf.message import DecodeError

from migrated.checkpoint._codec import Codec, StoredChunk
from migrated.checkpoint._manifest import Kind
from migrated.errors import CheckpointDamagedError, VersionNotFoundError
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = [
    "ChunkInfo",
    "VersionInfo",
    "VersionRow",
    "all_chunks",
    "chunk_ids",
    "chunk_map",
    "find_version",
    "manifest_hash",
    "parse_manifest",
    "read_chunks",
    "read_version_chunks",
    "version_bases",
    "version_infos",
]

_BATCH = 500  # host parameters per IN (...) query

_VERSION_COLUMNS = "v.id, a.name, v.version, v.parent, v.created, v.kind, v.message, v.bytes_added, v.total_bytes"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of an app, as ``mig history`` shows it."""

    app: str
    version: int
    parent: int  # 0 for none
    created: float  # Unix time
    kind: Kind
    message: str
    bytes_added: int  # stored bytes this version added to the store
    total_bytes: int  # raw bytes of state and code it references


@dataclass(frozen=True, slots=True)
class VersionRow:
    """A version's row id, what ``mig history`` shows of it, and its manifest."""

    id: int
    info: VersionInfo
    manifest: pb.CheckpointManifest


def _info(row: Any) -> VersionInfo:
    _, app, version, parent, created, kind, message, added, total = row[:9]
    return VersionInfo(app, version, parent or 0, created, Kind(kind), message, added, total)


def version_infos(conn: sqlite3.Connection, app: str) -> list[VersionInfo]:
    """Every version of ``app``, oldest first."""
    query = (
        f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN apps a ON a.id = v.app_id WHERE a.name = ? ORDER BY v.version"
    )
    return [_info(row) for row in conn.execute(query, (app,))]


def manifest_hash(data: bytes) -> bytes:
    """What a version row keeps to find a damaged manifest: the BLAKE3 of its bytes."""
    return blake3(data).digest()


def find_version(conn: sqlite3.Connection, app: str, version: int | None) -> VersionRow:
    """A version of ``app`` (its latest when ``version`` is None); ``VersionNotFoundError`` when there is none,
    ``CheckpointDamagedError`` when its manifest does not match its hash."""
    query = (
        f"SELECT {_VERSION_COLUMNS}, v.manifest, v.manifest_hash FROM versions v JOIN apps a ON a.id = v.app_id "
        "WHERE a.name = ?"
    )
    if version is None:
        row = conn.execute(query + " ORDER BY v.version DESC LIMIT 1", (app,)).fetchone()
    else:
        row = conn.execute(query + " AND v.version = ?", (app, version)).fetchone()
    if row is None:
        raise _not_found(app, version)
    info = _info(row)
    return VersionRow(row[0], info, parse_manifest(row[9], row[10], info))


def parse_manifest(data: bytes, digest: bytes | None, info: VersionInfo) -> pb.CheckpointManifest:
    """A stored manifest, once it matches its hash; ``CheckpointDamagedError`` otherwise."""
    manifest = None
    if digest is None or manifest_hash(data) == digest:
        with contextlib.suppress(DecodeError):
            manifest = pb.CheckpointManifest.FromString(data)
    if manifest is None:
        raise CheckpointDamagedError(
            f"version {info.version} of {info.app!r} is damaged (its manifest does not match its hash); restore "
            f"an earlier version (mig history {info.app})",
            app=info.app,
            version=info.version,
        )
    return manifest


def _not_found(app: str, version: int | None) -> VersionNotFoundError:
    if version is None:
        return VersionNotFoundError(f"{app!r} has no checkpoint yet; take one with mig checkpoint {app}")
    return VersionNotFoundError(f"{app!r} has no version {version}; mig history {app} lists its versions")


def chunk_ids(conn: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, int]:
    """The row ids of those of ``hashes`` that are stored."""
    return _by_hash(conn, "id", hashes)


def stored_sizes(conn: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, int]:
    """The stored size of those of ``hashes`` that are stored."""
    return _by_hash(conn, "stored_size", hashes)


def _by_hash(conn: sqlite3.Connection, column: str, hashes: Sequence[bytes]) -> dict[bytes, int]:
    found: dict[bytes, int] = {}
    for start in range(0, len(hashes), _BATCH):
        batch = hashes[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        found.update(conn.execute(f"SELECT hash, {column} FROM chunks WHERE hash IN ({marks})", batch))
    return found


def read_version_chunks(conn: sqlite3.Connection, version_id: int) -> Iterator[tuple[bytes, StoredChunk]]:
    """Every chunk a version references, as stored (a delta with its bases), in the order they were stored."""
    bases: dict[int, list[bytes]] = {}
    query = (
        "SELECT cb.chunk_id, b.hash FROM version_chunks vc JOIN chunk_bases cb ON cb.chunk_id = vc.chunk_id "
        "JOIN chunks b ON b.id = cb.base_id WHERE vc.version_id = ? ORDER BY cb.chunk_id, cb.position"
    )
    for chunk_id, base in conn.execute(query, (version_id,)):
        bases.setdefault(chunk_id, []).append(base)
    query = (
        "SELECT c.id, c.hash, c.codec, c.raw_size, c.data, c.depth FROM version_chunks vc "
        "JOIN chunks c ON c.id = vc.chunk_id WHERE vc.version_id = ? ORDER BY vc.chunk_id"  # the key's order: no sort
    )
    for row in conn.execute(query, (version_id,)):
        yield row[1], _stored(conn, row, bases.get(row[0]))


def version_bases(conn: sqlite3.Connection, version_id: int) -> list[bytes]:
    """The bases of a version's delta chunks, each once."""
    query = (
        "SELECT DISTINCT b.hash FROM version_chunks vc JOIN chunk_bases cb ON cb.chunk_id = vc.chunk_id "
        "JOIN chunks b ON b.id = cb.base_id WHERE vc.version_id = ?"
    )
    return [row[0] for row in conn.execute(query, (version_id,))]


def chunk_map(conn: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, StoredChunk]:
    """Those of ``hashes`` that are stored, as stored (a delta with its bases), in a few queries."""
    rows: list[Any] = []
    for start in range(0, len(hashes), _BATCH):
        batch = hashes[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        rows += conn.execute(
            f"SELECT id, hash, codec, raw_size, data, depth FROM chunks WHERE hash IN ({marks})", batch
        ).fetchall()
    deltas = [row[0] for row in rows if row[2] == Codec.DELTA]
    bases: dict[int, list[bytes]] = {}
    for start in range(0, len(deltas), _BATCH):
        batch = deltas[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        query = (
            f"SELECT cb.chunk_id, b.hash FROM chunk_bases cb JOIN chunks b ON b.id = cb.base_id "
            f"WHERE cb.chunk_id IN ({marks}) ORDER BY cb.chunk_id, cb.position"
        )
        for chunk_id, base in conn.execute(query, batch):
            bases.setdefault(chunk_id, []).append(base)
    return {row[1]: _stored(conn, row, bases.get(row[0])) for row in rows}


def read_chunks(conn: sqlite3.Connection, hashes: Iterable[bytes]) -> Iterator[tuple[bytes, StoredChunk]]:
    """The stored form of those of ``hashes`` that are stored (a delta with its bases)."""
    wanted = list(hashes)
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        query = f"SELECT id, hash, codec, raw_size, data, depth FROM chunks WHERE hash IN ({marks})"
        for row in conn.execute(query, batch):
            yield row[1], _stored(conn, row)


def all_chunks(conn: sqlite3.Connection) -> Iterator[tuple[int, bytes, StoredChunk | None]]:
    """Every stored chunk, oldest first (bases before their deltas): row id, hash, and the chunk (``None`` when
    its codec is unknown)."""
    for row in conn.execute("SELECT id, hash, codec, raw_size, data, depth FROM chunks ORDER BY id"):
        if row[2] not in _CODECS:
            yield row[0], row[1], None
        else:
            yield row[0], row[1], _stored(conn, row)


class ChunkInfo:
    """A stored chunk's delta depth (0 for a whole one) and bases, looked up once each: ``_delta.Info``.
    A chunk not stored counts as too deep to use."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._known: dict[bytes, tuple[int, tuple[bytes, ...]]] = {}

    def __call__(self, digest: bytes) -> tuple[int, tuple[bytes, ...]]:
        found = self._known.get(digest)
        if found is None:
            row = self._conn.execute("SELECT id, depth FROM chunks WHERE hash = ?", (digest,)).fetchone()
            found = (_MAX_DEPTH, ()) if row is None else (row[1], _bases(self._conn, row[0]) if row[1] else ())
            self._known[digest] = found
        return found


_MAX_DEPTH = 1 << 30


_CODECS = frozenset(int(codec) for codec in Codec)


def _stored(conn: sqlite3.Connection, row: Any, bases: list[bytes] | None = None) -> StoredChunk:
    chunk_id, _, codec, raw_size, data, depth = row
    if codec != Codec.DELTA:
        return StoredChunk(Codec(codec), raw_size, data)
    found = tuple(bases) if bases is not None else _bases(conn, chunk_id)
    return StoredChunk(Codec.DELTA, raw_size, data, found, depth)


def _bases(conn: sqlite3.Connection, chunk_id: int) -> tuple[bytes, ...]:
    query = (
        "SELECT c.hash FROM chunk_bases cb JOIN chunks c ON c.id = cb.base_id WHERE cb.chunk_id = ? "
        "ORDER BY cb.position"
    )
    return tuple(base for (base,) in conn.execute(query, (chunk_id,)))
