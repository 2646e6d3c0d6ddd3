"""The store's write tasks. Each runs on the writer thread, in one transaction: a version becomes visible
with all its chunks, or not at all."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from migrated.checkpoint import _retention
from migrated.checkpoint._codec import StoredChunk
from migrated.checkpoint._manifest import Kind, chunk_hashes, kind_of, proto_kind
from migrated.checkpoint._rows import VersionInfo, chunk_ids, find_version, manifest_hash, version_infos
from migrated.checkpoint._schema import WAL_LIMIT, trim_wal
from migrated.checkpoint._writer import immediate
from migrated.errors import AppExistsError, CheckpointError
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = [
    "GcReport",
    "adopt_version",
    "copy_version",
    "delete_versions",
    "gc",
    "put_chunks",
    "put_version",
    "remove_app",
    "retain",
]

Encode = Callable[[bytes], StoredChunk]


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a garbage collection removed."""

    chunks: int
    bytes: int


def put_version(
    conn: sqlite3.Connection,
    manifest: pb.CheckpointManifest,
    encode: Encode,
    *,
    new_app: bool = False,
    whole: Encode | None = None,
    ahead: int = 0,
) -> VersionInfo:
    """Store the chunks the store lacks (``encode(hash)`` gives them), then the version that uses them.
    With ``new_app``, refuse an app that has versions already. A delta whose bases are gone by now (a ``gc``
    ran since it was made) is stored as ``whole(hash)`` gives it instead. ``ahead``: bytes of this version's
    chunks stored ahead of it (``put_chunks``), counted as added."""
    with immediate(conn):
        if new_app:
            _refuse_existing(conn, manifest.app)
        hashes = chunk_hashes(manifest)
        ids = chunk_ids(conn, hashes)
        added = ahead
        for digest in hashes:
            if digest not in ids:
                ids[digest], size = _insert_chunk(conn, digest, encode(digest), whole)
                added += size
        app_id, number, latest = _app_for_new_version(conn, manifest.app)
        final = _finish(manifest, number, manifest.parent or latest, added)
        info = _insert_version(conn, app_id, final, set(ids.values()))
    if added > WAL_LIMIT:
        trim_wal(conn)
    return info


def put_chunks(conn: sqlite3.Connection, chunks: Mapping[bytes, StoredChunk], whole: Encode) -> int:
    """Store those of ``chunks`` the store lacks, ahead of the version that will use them; the bytes added."""
    with immediate(conn):
        known = chunk_ids(conn, list(chunks))
        added = sum(
            _insert_chunk(conn, digest, stored, whole)[1] for digest, stored in chunks.items() if digest not in known
        )
    if added > WAL_LIMIT:
        trim_wal(conn)
    return added


def copy_version(
    conn: sqlite3.Connection, app: str, version: int, new_app: str, kind: Kind, message: str
) -> VersionInfo:
    """A new version of ``new_app`` with the same state and code as ``app``'s ``version`` (restore, fork)."""
    with immediate(conn):
        source = find_version(conn, app, version)
        if new_app != app:
            _refuse_existing(conn, new_app)
        app_id, number, _ = _app_for_new_version(conn, new_app)
        manifest = pb.CheckpointManifest()
        manifest.CopyFrom(source.manifest)
        manifest.app, manifest.kind, manifest.message, manifest.created = new_app, proto_kind(kind), message, 0
        parent = version if new_app == app else 0
        if new_app != app:
            manifest.origin_app, manifest.origin_version = app, version
        final = _finish(manifest, number, parent, 0)
        ids = [row[0] for row in conn.execute("SELECT chunk_id FROM version_chunks WHERE version_id = ?", (source.id,))]
        return _insert_version(conn, app_id, final, set(ids))


def adopt_version(conn: sqlite3.Connection, staging: str, version: int, app: str, message: str) -> VersionInfo:
    """Make ``staging``'s ``version`` (a move's incoming state) the next version of ``app``, and drop ``staging``;
    both in one transaction, so a crash leaves either the staged version or the adopted one."""
    with immediate(conn):
        source = find_version(conn, staging, version)
        app_id, number, latest = _app_for_new_version(conn, app)
        manifest = pb.CheckpointManifest()
        manifest.CopyFrom(source.manifest)
        manifest.app, manifest.kind, manifest.message, manifest.created = app, proto_kind(Kind.MOVE), message, 0
        final = _finish(manifest, number, latest, source.manifest.bytes_added)
        ids = [row[0] for row in conn.execute("SELECT chunk_id FROM version_chunks WHERE version_id = ?", (source.id,))]
        info = _insert_version(conn, app_id, final, set(ids))
        conn.execute("DELETE FROM apps WHERE name = ?", (staging,))
        return info


def _refuse_existing(conn: sqlite3.Connection, app: str) -> None:
    if conn.execute("SELECT 1 FROM versions v JOIN apps a ON a.id = v.app_id WHERE a.name = ?", (app,)).fetchone():
        raise AppExistsError(f"an app named {app!r} has checkpoints already; choose another name")


def delete_versions(conn: sqlite3.Connection, app: str, versions: Sequence[int]) -> list[int]:
    """Delete those ``versions`` of ``app`` that exist; their chunks stay until ``gc``."""
    with immediate(conn):
        return _delete(conn, app, versions)


def retain(conn: sqlite3.Connection, app: str, policy: _retention.RetentionPolicy) -> list[int]:
    """Apply a retention policy to ``app``; return the versions it deleted."""
    with immediate(conn):
        return _delete(conn, app, _retention.thin(version_infos(conn, app), policy))


def remove_app(conn: sqlite3.Connection, app: str) -> int:
    """Delete every version of ``app``; return how many there were."""
    with immediate(conn):
        count = conn.execute(
            "SELECT COUNT(*) FROM versions v JOIN apps a ON a.id = v.app_id WHERE a.name = ?", (app,)
        ).fetchone()[0]
        conn.execute("DELETE FROM apps WHERE name = ?", (app,))
        return int(count)


def gc(conn: sqlite3.Connection, pinned: frozenset[bytes] = frozenset()) -> GcReport:
    """Delete every chunk that no version references, no kept delta uses as a base and that is not ``pinned``
    (stored ahead of a version being written), then give the freed pages back to the file system. A chain is
    deleted from its top: each round frees the bases of the last."""
    unused = (
        "NOT EXISTS (SELECT 1 FROM version_chunks vc WHERE vc.chunk_id = chunks.id) "
        "AND NOT EXISTS (SELECT 1 FROM chunk_bases cb WHERE cb.base_id = chunks.id) "
        "AND NOT EXISTS (SELECT 1 FROM temp.pinned p WHERE p.hash = chunks.hash)"
    )
    count = size = 0
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS pinned (hash BLOB PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM temp.pinned")
    conn.executemany("INSERT INTO temp.pinned (hash) VALUES (?)", ((digest,) for digest in pinned))
    with immediate(conn):
        while True:
            found, found_size = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(stored_size), 0) FROM chunks WHERE {unused}"
            ).fetchone()
            if not found:
                break
            conn.execute(f"DELETE FROM chunks WHERE {unused}")
            count, size = count + found, size + found_size
    conn.execute("PRAGMA incremental_vacuum")
    trim_wal(conn)
    return GcReport(count, size)


def _delete(conn: sqlite3.Connection, app: str, versions: Sequence[int]) -> list[int]:
    deleted = []
    for version in versions:
        cursor = conn.execute(
            "DELETE FROM versions WHERE version = ? AND app_id = (SELECT id FROM apps WHERE name = ?)", (version, app)
        )
        if cursor.rowcount:
            deleted.append(version)
    return deleted


def _insert_chunk(
    conn: sqlite3.Connection, digest: bytes, stored: StoredChunk, whole: Encode | None
) -> tuple[int, int]:
    base_ids = chunk_ids(conn, stored.bases) if stored.bases else {}
    if len(base_ids) < len(stored.bases):
        if whole is None:
            raise CheckpointError(f"chunk {digest.hex()[:16]} is a delta whose base is not stored")
        stored, base_ids = whole(digest), {}
    size = memoryview(stored.data).nbytes
    cursor = conn.execute(
        "INSERT INTO chunks (hash, codec, raw_size, stored_size, data, depth) VALUES (?, ?, ?, ?, ?, ?)",
        (digest, int(stored.codec), stored.raw_size, size, stored.data, stored.depth if base_ids else 0),
    )
    chunk_id = _rowid(cursor)
    conn.executemany(
        "INSERT INTO chunk_bases (chunk_id, position, base_id) VALUES (?, ?, ?)",
        ((chunk_id, position, base_ids[base]) for position, base in enumerate(stored.bases) if base_ids),
    )
    return chunk_id, size


def _app_for_new_version(conn: sqlite3.Connection, app: str) -> tuple[int, int, int]:
    """The app's row id, its next version number and its latest version (0 for none); creates the app."""
    if not app:
        raise CheckpointError("a checkpoint needs an app name")
    conn.execute("INSERT OR IGNORE INTO apps (name, created) VALUES (?, ?)", (app, time.time()))
    app_id, number = conn.execute("SELECT id, next_version FROM apps WHERE name = ?", (app,)).fetchone()
    latest = conn.execute("SELECT MAX(version) FROM versions WHERE app_id = ?", (app_id,)).fetchone()[0]
    return app_id, number, latest or 0


def _finish(manifest: pb.CheckpointManifest, number: int, parent: int, added: int) -> pb.CheckpointManifest:
    final = pb.CheckpointManifest()
    final.CopyFrom(manifest)
    final.version, final.parent, final.bytes_added = number, parent, added
    final.created = final.created or time.time()
    return final


def _insert_version(
    conn: sqlite3.Connection, app_id: int, manifest: pb.CheckpointManifest, ids: set[int]
) -> VersionInfo:
    info = VersionInfo(
        manifest.app,
        manifest.version,
        manifest.parent,
        manifest.created,
        kind_of(manifest),
        manifest.message,
        manifest.bytes_added,
        manifest.total_bytes,
    )
    data = manifest.SerializeToString()
    cursor = conn.execute(
        "INSERT INTO versions (app_id, version, parent, created, kind, message, bytes_added, total_bytes, manifest, "
        "manifest_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            app_id,
            info.version,
            info.parent or None,
            info.created,
            info.kind.value,
            info.message,
            info.bytes_added,
            info.total_bytes,
            data,
            manifest_hash(data),
        ),
    )
    version_id = _rowid(cursor)
    # In chunk order, the foreign key checks read the chunks table in order and the chunk index grows in order.
    rows = ((version_id, chunk_id) for chunk_id in sorted(ids))
    conn.executemany("INSERT INTO version_chunks (version_id, chunk_id) VALUES (?, ?)", rows)
    conn.execute("UPDATE apps SET next_version = ? WHERE id = ?", (info.version + 1, app_id))
    return info


def _rowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None
    return cursor.lastrowid
