"""Compression where it pays, raw where it does not; decoding refuses what does not add up."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrated.checkpoint._codec import BUFFER_LEVEL, Codec, StoredChunk, decode, encode, sample_level


@given(st.binary(max_size=20_000), st.integers(0, 3))
def test_encode_decode_round_trip(data: bytes, level: int) -> None:
    stored = encode(data, level)
    assert bytes(decode(stored)) == data
    assert stored.raw_size == len(data)


def test_compressible_data_is_compressed_and_random_data_is_stored_raw() -> None:
    assert encode(b"abc" * 10_000, 1).codec == Codec.ZSTD
    assert encode(os.urandom(65536), 1).codec == Codec.RAW
    assert encode(b"abc" * 10_000, 0).codec == Codec.RAW


def test_sampling_decides_per_buffer() -> None:
    assert sample_level([os.urandom(65536) for _ in range(8)]) == 0
    assert sample_level([bytes(65536) for _ in range(8)]) == BUFFER_LEVEL
    assert sample_level([]) == 0


@pytest.mark.parametrize(
    "stored",
    [
        StoredChunk(Codec.ZSTD, 10, b"garbage"),
        StoredChunk(Codec.RAW, 10, b"short"),
        StoredChunk(Codec.ZSTD, 5, encode(b"abc" * 1000, 3).data),
    ],
)
def test_decode_refuses_what_does_not_add_up(stored: StoredChunk) -> None:
    with pytest.raises(ValueError):
        decode(stored)
