"""Delta chunks: what a scattered change costs, round trips through chains, GC keeping bases, damage in a base,
and what leaves the store (never a delta)."""

from __future__ import annotations

import contextlib
import io
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrated.checkpoint import Codec, Store, StoredChunk, _delta, chunk_hashes, deserialise, make_draft, serialise
from migrated.errors import CheckpointDamagedError, CheckpointError

from .test_store import flip_bit_on_disk, load, put


def table(n: int, tag: str = "entry") -> dict[int, tuple[int, str]]:
    return {i: (i, f"{tag} {i}") for i in range(n)}


def scatter(state: dict[int, tuple[int, str]], rng: random.Random, count: int, round_: int) -> None:
    for key in rng.sample(sorted(state), count):
        state[key] = (key, f"changed {round_} {key}")


def query(path: Path, sql: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def codecs(path: Path) -> dict[int, int]:
    return dict(query(path, "SELECT codec, COUNT(*) FROM chunks GROUP BY codec"))


def max_depth(path: Path) -> int:
    return int(query(path, "SELECT MAX(depth) FROM chunks")[0][0])


# Pure planning


def test_bases_are_the_parent_chunks_around_the_same_region() -> None:
    parent = [(bytes([i]), 10 * 1024) for i in range(30)]  # chunks of 10 KiB: 0-10 KiB, 10-20 KiB, ...
    starts = [i * 10 * 1024 for i in range(30)]
    bases = _delta.bases_for(parent, starts, 70 * 1024)  # region 64-128 KiB, widened by 16 KiB: 48-144 KiB
    assert bases == tuple(bytes([i]) for i in range(4, 15))
    assert _delta.bases_for(parent, starts, 0)[0] == b"\x00"
    assert _delta.bases_for([], [], 0) == ()


def test_only_new_chunks_become_jobs_once_each() -> None:
    stream = [(b"a", 100), (b"b", 100), (b"a", 100)]
    found = _delta.jobs(stream, {b"a": b"x" * 100}, [(b"p", 300)])
    assert [(job.digest, job.bases) for job in found] == [(b"a", (b"p",))]


def test_too_deep_bases_are_left_out() -> None:
    depths = {b"shallow": 3, b"deep": _delta.MAX_DEPTH}
    assert _delta.usable_bases((b"deep", b"shallow", b"unknown"), lambda h: (depths.get(h, 99), ())) == (b"shallow",)


# Through the store


def test_a_scattered_change_costs_a_small_part_of_a_full_version(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    rng = random.Random(1)
    state = table(20_000)
    with Store(path) as store:
        first = put(store, "a", state)
        added = []
        for round_ in range(3):
            scatter(state, rng, 200, round_)
            added.append(put(store, "a", state).bytes_added)
        assert max(added) < first.bytes_added / 10
        assert load(store, "a") == state and load(store, "a", 2) != state
        assert store.verify().ok
    assert codecs(path).get(int(Codec.DELTA), 0) > 0


def test_new_content_is_stored_whole(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    with Store(path) as store:
        put(store, "a", table(20_000))
        put(store, "a", {i: (i, f"other {i * 7}") for i in range(20_000)})
    assert codecs(path).get(int(Codec.DELTA), 0) <= _delta.PROBE


def test_chains_stay_within_the_depth_bound(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    rng = random.Random(2)
    state = table(5_000)
    with Store(path) as store:
        put(store, "a", state)
        for round_ in range(_delta.MAX_DEPTH + 3):
            scatter(state, rng, 50, round_)
            put(store, "a", state)
        assert load(store, "a") == state
        assert store.verify().ok
    assert max_depth(path) == _delta.MAX_DEPTH


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(0, 6_000),
    changes=st.lists(
        st.tuples(st.integers(0, 200), st.integers(-300, 300), st.text(max_size=30)), min_size=1, max_size=5
    ),
)
def test_every_version_of_a_chain_round_trips(tmp_path: Path, size: int, changes: list[tuple[int, int, str]]) -> None:
    path = tmp_path / f"h{size}-{len(changes)}-{abs(hash(str(changes))) % 10**8}.db"
    rng = random.Random(size)
    state: dict[int, Any] = table(size)
    saved: list[dict[int, Any]] = []
    with Store(path) as store:
        for count, grow, text in [(0, 0, ""), *changes]:
            for key in rng.sample(sorted(state), min(count, len(state))):
                state[key] = (key, text)
            for key in range(len(state), len(state) + grow):  # entries added (or, below, removed) move offsets
                state[key] = (key, text * 2)
            for key in list(state)[len(state) + grow :] if grow < 0 else []:
                del state[key]
            put(store, "a", state)
            saved.append(dict(state))
        for version, expected in enumerate(saved, start=1):
            assert load(store, "a", version) == expected
        assert store.verify().ok


def test_gc_keeps_the_bases_of_kept_deltas_with_forks(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    rng = random.Random(3)
    state = table(20_000)
    with Store(path) as store:
        put(store, "a", state)
        saved = {}
        for round_ in range(4):
            scatter(state, rng, 200, round_)
            saved[put(store, "a", state).version] = dict(state)
        store.fork("a", "b", 3)
        store.delete_versions("a", [1, 2, 3])
        report = store.gc()
        assert report.chunks == 0  # versions 4 and 5 and the fork are deltas down to version 1's chunks
        store.remove_app("a")
        assert store.gc().chunks > 0
        assert load(store, "b") == saved[3]
        assert store.verify().ok
        store.remove_app("b")
        store.gc()
    assert query(path, "SELECT COUNT(*) FROM chunks") == [(0,)]
    assert query(path, "SELECT COUNT(*) FROM chunk_bases") == [(0,)]


def test_a_flipped_bit_in_a_base_is_found_by_verify_and_load_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    rng = random.Random(4)
    state = table(20_000)
    with Store(path) as store:
        put(store, "a", state)
        first_stream = [ref.hash for ref in store.manifest("a", 1).stream]
        scatter(state, rng, 200, 0)
        put(store, "a", state)
        scatter(state, rng, 200, 1)
        put(store, "a", state)
        store.fork("a", "whole", 1)
        store.delete_versions("a", [1])  # version 1's chunks stay: bases of version 2's deltas
        base = next(chunk for digest, chunk in store.read_chunks(first_stream) if chunk.codec == Codec.ZSTD)
    flip_bit_on_disk(path, bytes(base.data)[8:72])
    with Store(path) as store:
        report = store.verify()
        damaged = {(d.app, d.version) for d in report.damaged}
        assert {("a", 2), ("a", 3)} <= damaged and ("whole", 1) in damaged
        with pytest.raises(CheckpointDamagedError, match="version 3 of 'a' is damaged"):
            store.load("a")
        with pytest.raises(CheckpointDamagedError, match="every version of 'a' is damaged"):
            store.load_last_good("a")


def test_the_newest_whole_version_is_loaded_when_a_chain_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    rng = random.Random(5)
    state = table(20_000)
    with Store(path) as store:
        put(store, "a", state)
        older = dict(state)
        put(store, "a", {"other": "state"})
        scatter(state, rng, 200, 0)
        put(store, "a", state)  # its parent is version 2: whole again
        newest_stream = [ref.hash for ref in store.manifest("a").stream]
        scatter(state, rng, 200, 1)
        put(store, "a", state)  # version 4: deltas against version 3
        assert codecs(path).get(int(Codec.DELTA), 0) > 0
        base = next(chunk for _, chunk in store.read_chunks(newest_stream) if chunk.codec == Codec.ZSTD)
    flip_bit_on_disk(path, bytes(base.data)[8:72])
    with Store(path) as store:
        loaded, skipped = store.load_last_good("a")
        assert loaded.info.version == 2 and [e.version for e in skipped] == [4, 3]
        assert deserialise(loaded.snapshot) == {"other": "state"}
        assert load(store, "a", 1) == older


def test_what_leaves_the_store_is_never_a_delta(tmp_path: Path) -> None:
    rng = random.Random(6)
    state = table(20_000)
    with Store(tmp_path / "checkpoints.db") as store:
        put(store, "a", state)
        scatter(state, rng, 200, 0)
        put(store, "a", state)
        manifest = store.manifest("a")
        sent = dict(store.read_chunks(chunk_hashes(manifest)))
        assert sent and all(chunk.codec in (Codec.RAW, Codec.ZSTD) for chunk in sent.values())
        out = io.BytesIO()
        store.export("a", out)
    with Store(tmp_path / "other.db") as other:
        other.put_version(manifest, sent)  # a peer that has none of it: every chunk comes whole
        assert load(other, "a") == state
        out.seek(0)
        other.import_(out, "copy")
        assert load(other, "copy") == state


def test_a_delta_from_outside_is_refused(store: Store) -> None:
    draft = make_draft("a", serialise({"n": 1}), kind="manual")
    chunks = {
        digest: StoredChunk(Codec.DELTA, len(piece.data), bytes(piece.data)) for digest, piece in draft.pieces.items()
    }
    with pytest.raises(CheckpointError, match=r"refusing a chunk that fails its check: .* without its base"):
        store.put_version(draft.manifest, chunks)
