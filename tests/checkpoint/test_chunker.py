"""Chunking: cuts cover the data, respect their bounds, and move only near a change."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from migrated.checkpoint import HashMemo, chunk_snapshot, serialise
from migrated.checkpoint._chunker import BUFFER_CHUNK, MAX, MIN, content_cuts, fixed_cuts
from migrated.checkpoint._chunks import chunk_hash, split


def new_fraction(old: bytes, new: bytes) -> float:
    """Share of ``new``'s bytes in chunks that ``old`` does not have."""
    known = {chunk_hash(piece) for piece in split(old, content_cuts(old))}
    pieces = split(new, content_cuts(new))
    return sum(piece.nbytes for piece in pieces if chunk_hash(piece) not in known) / len(new)


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=3 * MAX)
    | st.builds(lambda n, seed: random.Random(seed).randbytes(n), st.integers(0, 400_000), st.integers())
)
def test_content_cuts_cover_the_data_within_bounds(data: bytes) -> None:
    cuts = content_cuts(data)
    assert cuts == sorted(set(cuts))
    assert (cuts[-1] if cuts else 0) == len(data)
    sizes = np.diff([0, *cuts])
    assert all(sizes[:-1] >= MIN) and all(sizes <= MAX)
    assert b"".join(split(data, cuts)) == data
    assert content_cuts(bytes(data)) == cuts


@given(st.integers(0, 10 * BUFFER_CHUNK), st.integers(1, 3 * BUFFER_CHUNK))
def test_fixed_cuts(size: int, chunk: int) -> None:
    cuts = fixed_cuts(size, chunk)
    assert (cuts[-1] if cuts else 0) == size
    sizes = np.diff([0, *cuts])
    assert all(sizes[:-1] == chunk) and all((sizes > 0) & (sizes <= chunk))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 5000), st.integers(0, 1 << 20))
def test_an_insertion_moves_only_nearby_cuts(seed: int, inserted: int, where: int) -> None:
    old = random.Random(seed).randbytes(1 << 20)
    new = old[:where] + bytes(inserted) + old[where:]
    assert new_fraction(old, new) * len(new) < inserted + 4 * MAX


def test_a_one_percent_change_in_a_dict_pickle_rewrites_a_few_percent() -> None:
    state = {f"key{i}": (i, i * 0.5, f"value{i}") for i in range(100_000)}
    old = bytes(serialise(state).stream_bytes())
    for i in range(50_000, 51_000):  # 1 % of the entries, in one run, changing size
        state[f"key{i}"] = (i + 10**9, i * 0.7, f"changed value {i}")
    new = bytes(serialise(state).stream_bytes())
    assert new_fraction(old, new) < 0.03


def test_an_insertion_into_a_dict_pickle_rewrites_little() -> None:
    items = [(f"key{i}", (i, f"v{i}")) for i in range(100_000)]
    old = bytes(serialise(dict(items)).stream_bytes())
    items[30_000:30_000] = [(f"new{i}", (i, "n")) for i in range(1000)]  # 1 %, low-entropy: larger chunks
    new = bytes(serialise(dict(items)).stream_bytes())
    assert new_fraction(old, new) < 0.05


def test_array_chunks_are_fixed_and_only_changed_ones_are_new() -> None:
    array = np.random.default_rng(0).standard_normal(4 << 20 >> 3)
    before = chunk_snapshot(serialise(array))
    array[1000:2000] = 0
    after = chunk_snapshot(serialise(array))
    sizes = [size for _, size in after.buffers[0].chunks]
    assert sizes[:-1] == [BUFFER_CHUNK] * (array.nbytes // BUFFER_CHUNK) and sum(sizes) == array.nbytes
    changed = {h for h, _ in after.buffers[0].chunks} - {h for h, _ in before.buffers[0].chunks}
    assert len(changed) == 1


def test_a_hash_memo_gives_the_addresses_a_fresh_hash_gives() -> None:
    """The runner's memo reuses the previous capture's addresses for unchanged chunks: every address stays what
    BLAKE3 of the bytes gives, the changed chunks' included."""
    memo = HashMemo()
    array = np.random.default_rng(1).standard_normal(1 << 18)
    state = {"array": array, "small": b"x" * 100}
    for step in range(3):
        array[step * 5000 : step * 5000 + 100] = step  # one chunk changes each time
        remembered = chunk_snapshot(serialise(state), memo)
        fresh = chunk_snapshot(serialise(state))
        assert remembered.stream == fresh.stream and remembered.buffers == fresh.buffers
        assert all(chunk_hash(piece.data) == digest for digest, piece in remembered.pieces.items())
