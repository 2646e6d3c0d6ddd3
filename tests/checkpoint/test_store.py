"""The SQLite store: immutable versions, dedup, incremental cost, restore, fork, retention, GC, verify, damage."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from migrated.checkpoint import (
    Assembled,
    RetentionPolicy,
    Store,
    VersionInfo,
    chunk_hashes,
    deserialise,
    make_draft,
    serialise,
)
from migrated.errors import AppExistsError, CheckpointDamagedError, CheckpointError, StateDirError, VersionNotFoundError

MIB = 1 << 20


def put(store: Store, app: str, state: Any, kind: str = "autosave", **extra: Any) -> VersionInfo:
    return store.put_draft(make_draft(app, serialise(state), kind=kind, **extra))


def load(store: Store, app: str, version: int | None = None) -> Any:
    return deserialise(store.load(app, version).snapshot)


def random_array(mib: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(mib * MIB // 8)


def test_versions_are_numbered_per_app_with_their_parent(store: Store) -> None:
    first = put(store, "a", {"n": 1}, kind="manual", message="first")
    second = put(store, "a", {"n": 2})
    other = put(store, "b", {"n": 3})
    assert (first.version, first.parent, first.kind, first.message) == (1, 0, "manual", "first")
    assert (second.version, second.parent, other.version) == (2, 1, 1)
    assert [v.version for v in store.list_versions("a")] == [1, 2]
    assert store.latest("a") == second and store.get_version("a", 1) == first
    assert load(store, "a") == {"n": 2} and load(store, "a", 1) == {"n": 1}
    assert store.apps() == ["a", "b"] and store.list_versions("nobody") == [] and store.latest("nobody") is None


def test_missing_versions_are_named(store: Store) -> None:
    put(store, "a", 1)
    with pytest.raises(VersionNotFoundError, match="'a' has no version 7; mig history a lists its versions"):
        store.load("a", 7)
    with pytest.raises(VersionNotFoundError, match="'b' has no checkpoint yet"):
        store.load("b")


def test_versions_and_chunks_are_immutable(store: Store) -> None:
    put(store, "a", 1)
    with sqlite3.connect(store.path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="checkpoint versions are immutable"):
            conn.execute("UPDATE versions SET message = 'rewritten'")
        with pytest.raises(sqlite3.IntegrityError, match="chunks are immutable"):
            conn.execute("UPDATE chunks SET data = x'00'")


def test_a_chunk_that_a_version_uses_cannot_be_deleted(store: Store) -> None:
    put(store, "a", 1)
    refused = pytest.raises(sqlite3.IntegrityError, match="a chunk that a version uses cannot be deleted")
    with sqlite3.connect(store.path) as conn, refused:
        conn.execute("DELETE FROM chunks")
    store.delete_versions("a", [1])
    store.gc()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone() == (0,)


def test_the_store_uses_wal_large_pages_and_foreign_keys(store: Store) -> None:
    put(store, "a", 1)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA page_size").fetchone() == (65536,)
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    store.delete_versions("a", [1])
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM version_chunks").fetchone() == (0,)  # cascaded


def test_a_large_state_takes_little_more_on_disk_than_it_holds(store: Store) -> None:
    put(store, "a", {"array": random_array(32)})
    store.gc()  # checkpoints the WAL into the file
    with sqlite3.connect(store.path) as conn:
        held = conn.execute("SELECT SUM(stored_size) FROM chunks").fetchone()[0]
    assert store.path.stat().st_size <= 1.02 * held + 2 * MIB  # pages of indexes and tables besides


def test_the_wal_does_not_keep_the_size_of_a_large_checkpoint(store: Store) -> None:
    put(store, "a", {"array": random_array(40)})
    wal = store.path.with_name(store.path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size <= 16 * MIB


def test_a_second_identical_checkpoint_adds_nothing(store: Store) -> None:
    state = {"array": random_array(8), "table": {i: str(i) for i in range(10_000)}}
    first = put(store, "a", state)
    second = put(store, "a", state)
    assert first.bytes_added > 8 * MIB and second.bytes_added == 0
    assert second.total_bytes == first.total_bytes


def test_a_one_percent_change_adds_about_one_percent(store: Store) -> None:
    array = random_array(16)
    put(store, "a", {"array": array})
    array[len(array) // 3 : len(array) // 3 + len(array) // 100] = 0.5
    changed = put(store, "a", {"array": array})
    assert changed.bytes_added < 0.02 * changed.total_bytes
    assert np.array_equal(load(store, "a")["array"], array)


def test_restore_makes_a_new_version_from_an_old_one(store: Store) -> None:
    put(store, "a", "old", message="keep me")
    put(store, "a", "new")
    restored = store.restore("a", 1)
    assert (restored.version, restored.parent, restored.kind, restored.bytes_added) == (3, 1, "restore", 0)
    assert load(store, "a") == "old" and load(store, "a", 2) == "new"


def test_fork_shares_every_chunk_and_outlives_the_original(store: Store) -> None:
    put(store, "a", random_array(4))
    put(store, "a", {"second": True})
    fork = store.fork("a", "b", version=1)
    assert (fork.app, fork.version, fork.kind, fork.bytes_added) == ("b", 1, "fork", 0)
    assert store.manifest("b").origin_app == "a" and store.manifest("b").origin_version == 1
    with pytest.raises(AppExistsError):
        store.fork("a", "b")
    store.remove_app("a")
    assert store.gc().chunks > 0  # the second version's chunks
    assert np.array_equal(load(store, "b"), random_array(4))


def test_retention_thins_autosaves_only(store: Store) -> None:
    put(store, "a", 0, kind="manual")
    for n in range(1, 8):
        put(store, "a", n)
    put(store, "a", 8, kind="close")
    deleted = store.apply_retention("a", RetentionPolicy(last=2))
    assert deleted == [2, 3, 4, 5, 6]
    assert [v.version for v in store.list_versions("a")] == [1, 7, 8, 9]


def test_gc_removes_only_unreferenced_chunks(store: Store) -> None:
    keep = random_array(2, seed=1)
    put(store, "a", {"keep": keep, "drop": random_array(2, seed=2)})
    put(store, "a", {"keep": keep})
    assert store.gc().chunks == 0
    store.delete_versions("a", [1])
    report = store.gc()
    # the dropped array; the first stream stays, as the base of the second one (a delta against it)
    assert report.chunks == 33 and report.bytes >= 2 * MIB  # 2 MiB in chunks of 65,400 bytes
    assert np.array_equal(load(store, "a")["keep"], keep)
    assert store.verify().ok


def test_concurrent_writers_are_serialised(store: Store) -> None:
    errors: list[BaseException] = []

    def work(app: str) -> None:
        try:
            for n in range(5):
                put(store, app, {"n": n, "data": bytes(100_000)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(app,)) for app in ("a", "a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [v.version for v in store.list_versions("a")] == list(range(1, 11))
    assert store.verify().ok


def test_a_read_only_store_loads_but_never_writes(store: Store) -> None:
    put(store, "a", {"x": 1})
    with Store(store.path, readonly=True) as reader:
        assert deserialise(reader.load("a").snapshot) == {"x": 1}
        with pytest.raises(CheckpointError, match="read-only"):
            reader.gc()


def test_a_store_whose_chunk_rows_had_a_foreign_key_keeps_every_version(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    with Store(path) as store:
        put(store, "a", {"x": 1})
        put(store, "a", {"x": 2})
    with sqlite3.connect(path) as conn:  # version_chunks as migrated made it before m004
        conn.execute("DROP TRIGGER chunks_in_use")
        conn.execute("ALTER TABLE version_chunks RENAME TO version_chunks_now")
        conn.execute(
            "CREATE TABLE version_chunks (version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE, "
            "chunk_id INTEGER NOT NULL REFERENCES chunks (id), PRIMARY KEY (version_id, chunk_id)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO version_chunks SELECT * FROM version_chunks_now")
        conn.execute("DROP TABLE version_chunks_now")
        conn.execute("CREATE INDEX version_chunks_by_chunk ON version_chunks (chunk_id)")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm004_chunk_use_by_trigger'")
    with Store(path) as store:
        assert [load(store, "a", v) for v in (1, 2)] == [{"x": 1}, {"x": 2}]
        assert store.verify().ok
        store.delete_versions("a", [1])
        store.gc()
        assert load(store, "a", 2) == {"x": 2}
    refused = pytest.raises(sqlite3.IntegrityError, match="a chunk that a version uses cannot be deleted")
    with sqlite3.connect(path) as conn, refused:
        conn.execute("DELETE FROM chunks")


def test_a_store_from_a_newer_migrated_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, '')",
            ("migrated.checkpoint", "m999_from_the_future"),
        )
    with pytest.raises(StateDirError, match="newer migrated"):
        Store(path)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(StateDirError, match=r"the checkpoint store .* \(file is not a database\).*move the file aside"):
        Store(path)


def test_a_clean_close_leaves_no_unclean_marker(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    with Store(path) as store:
        assert not store.unclean
        assert path.with_name("checkpoints.db.open").exists()
    assert not path.with_name("checkpoints.db.open").exists()
    with Store(path) as store:
        assert not store.unclean


# Damage: a flipped bit on disk, found by verify and by load


def flip_bit_on_disk(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_verify_and_load_catch_a_flipped_bit(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    array = random_array(2)
    with Store(path) as store:
        put(store, "a", {"array": array})
        array[-1000:] = np.random.default_rng(5).standard_normal(1000)  # changes the last chunk only
        put(store, "a", {"array": array})
        put(store, "b", {"array": array})
    flip_bit_on_disk(path, array[-600:].tobytes()[:64])
    with Store(path) as store:
        report = store.verify()
        assert not report.ok
        assert sorted((d.app, d.version) for d in report.damaged) == [("a", 2), ("b", 1)]
        with pytest.raises(CheckpointDamagedError) as caught:
            store.load("a")
        assert (caught.value.app, caught.value.version) == ("a", 2)
        with pytest.raises(CheckpointDamagedError, match="version 2 of 'a' is damaged"):
            store.load("a", 2, store.read_ahead("a", 1))  # a move's destination reads the changed chunk too
        assert str(caught.value).startswith("version 2 of 'a' is damaged (chunk ")
        assert str(caught.value).endswith("does not match its hash); restore an earlier version (mig history a)")
        loaded, skipped = store.load_last_good("a")
        assert loaded.info.version == 1 and [e.version for e in skipped] == [2]
        assert not np.array_equal(load(store, "a", 1)["array"], array)


def test_a_damaged_compressed_chunk_is_caught_too(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    with Store(path) as store:
        put(store, "a", {f"key{i}": i for i in range(50_000)})
        stored = [chunk for _, chunk in store.read_chunks(chunk_hashes(store.manifest("a")))]
        compressed = next(c for c in stored if c.codec == 1)
    flip_bit_on_disk(path, bytes(compressed.data)[8:72])
    with Store(path) as store:
        assert not store.verify().ok
        with pytest.raises(CheckpointDamagedError, match="version 1 of 'a' is damaged"):
            store.load("a")
        with pytest.raises(CheckpointDamagedError, match="every version of 'a' is damaged"):
            store.load_last_good("a")


def test_a_detached_draft_copies_only_what_the_store_lacks(store: Store) -> None:
    array = random_array(4)
    put(store, "a", {"array": array})
    array[:1000] = 1.0
    expected = array.copy()
    draft = make_draft("a", serialise({"array": array}), kind="autosave")
    detached = draft.detach(store.missing(draft.pieces))
    assert len(detached.pieces) == 1  # the changed array chunk: the stream is the same
    array[:] = 0.0  # the app runs on
    store.put_draft(detached)
    assert np.array_equal(load(store, "a")["array"], expected)


def test_a_load_from_a_version_read_ahead_reads_only_what_differs(tmp_path: Path) -> None:
    """A move's destination reads the pre-copied version ahead; the final one then reads only its changed
    chunks, and comes out exactly as a whole load does, also when buffers changed size or came and went."""
    path = tmp_path / "checkpoints.db"
    kept, grown = random_array(4, seed=1), random_array(1, seed=2)
    with Store(path) as store:
        put(store, "a", {"kept": kept, "grown": grown, "n": 1})
        kept[1000:1100] = 0.25  # one chunk of it changes
        changed: dict[str, Any] = {
            "kept": kept,
            "grown": np.concatenate([grown, grown]),
            "new": random_array(1, seed=3),
            "n": 2,
        }
        put(store, "a", changed)
        ahead = store.read_ahead("a", 1)
        whole = load(store, "a", 2)
        loaded = store.load("a", 2, ahead)
        assert not ahead.buffers  # taken over, not copied
        state = deserialise(loaded.snapshot)
        assert state["n"] == 2 and state.keys() == whole.keys() == changed.keys()
        for name in ("kept", "grown", "new"):
            assert np.array_equal(state[name], changed[name]) and np.array_equal(whole[name], changed[name])
        first, second = store.manifest("a", 1), store.manifest("a", 2)
        needed = set(Assembled(second, store.read_ahead("a", 1)).needed)
        old, new = ([ref.hash for ref in manifest.buffers[0].chunks] for manifest in (first, second))  # "kept"
        assert len(old) == len(new) > 60 and needed & set(new) == {
            h for h, was in zip(new, old, strict=True) if h != was
        }
        assert len(needed & set(new)) == 1  # of the chunks of the 4 MiB that stayed, the one that changed


def test_opening_a_migrated_store_loads_neither_sqlite_utils_nor_numpy(tmp_path: Path) -> None:
    """The daemon's idle memory: sqlite-utils only when a migration is pending, and never NumPy through it."""
    code = (
        "import sys; from migrated.checkpoint import Store; Store(sys.argv[1]).close(); "
        "print('sqlite_utils' in sys.modules, 'numpy' in sys.modules)"
    )
    path = str(tmp_path / "checkpoints.db")
    runs = [
        subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True) for _ in "ab"
    ]
    assert [run.stdout.split() for run in runs] == [["True", "False"], ["False", "False"]]


def test_chunks_stored_ahead_of_their_version_survive_gc_and_count_as_added(store: Store) -> None:
    array = random_array(4)
    draft = make_draft("a", serialise({"array": array}), kind="manual")
    ahead = dict(list(draft.pieces.items())[: len(draft.pieces) // 2])
    with store.pending() as pending:
        pending.put(draft.manifest, ahead)
        assert store.gc().chunks == 0  # no version uses them yet, but one is being written
        rest = {digest: piece for digest, piece in draft.pieces.items() if digest not in ahead}
        info = store.put_version(draft.manifest, rest, pending)
    assert info.bytes_added >= array.nbytes
    assert np.array_equal(load(store, "a")["array"], array)
    assert store.gc().chunks == 0


def test_chunks_stored_ahead_of_a_version_never_written_are_collected(store: Store) -> None:
    draft = make_draft("a", serialise({"array": random_array(2)}), kind="manual")
    with store.pending() as pending:
        pending.put(draft.manifest, draft.pieces)
    assert store.gc().chunks == len(draft.pieces)
