"""The pickle stream without frames: valid, smaller by the frame headers, large payloads kept apart."""

from __future__ import annotations

import pickle
import pickletools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrated.checkpoint._stream import LARGE, FrameStripper, FramingMismatch


def strip(value: Any) -> tuple[bytes, list[tuple[int, bool]]]:
    sink = FrameStripper()
    pickle.Pickler(sink, protocol=5).dump(value)
    segments = sink.finish()
    return b"".join(bytes(s.data) for s in segments), [(len(s.data), s.aligned) for s in segments]


def opcodes(stream: bytes) -> set[str]:
    return {op.name for op, _, _ in pickletools.genops(stream)}


_payloads = st.builds(lambda n, b: bytes([b]) * n, st.integers(LARGE - 2, LARGE + 2), st.integers(0, 255)) | st.builds(
    lambda n: "é" * n, st.integers(LARGE // 2 - 1, LARGE // 2 + 1)
)
_values = st.recursive(
    st.integers()
    | st.text(max_size=30)
    | st.binary(max_size=60)
    | _payloads
    | st.builds(bytearray, _payloads.filter(lambda p: isinstance(p, bytes))),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=6),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None)
@given(_values)
def test_stripped_streams_load_and_have_no_frames(value: Any) -> None:
    stream, _ = strip(value)
    assert pickle.loads(stream) == value
    assert "FRAME" not in opcodes(stream)
    framed = pickle.dumps(value, protocol=5)
    assert len(framed) - len(stream) == 9 * sum(1 for op, _, _ in pickletools.genops(framed) if op.name == "FRAME")


def test_large_payloads_are_aligned_segments_of_their_own() -> None:
    big, text, array = b"b" * 100_000, "t" * 70_000, bytearray(b"a" * 80_000)
    _, layout = strip([big, text, array, big])
    assert [size for size, aligned in layout if aligned] == [100_000, 70_000, 80_000]


def test_a_many_frame_stream_without_payloads_is_one_inline_segment() -> None:
    value = list(range(100_000))
    stream, layout = strip(value)
    assert layout == [(len(stream), False)]
    assert pickle.loads(stream) == value


@pytest.mark.parametrize(
    "writes",
    [
        [b"not a pickle"],
        [b"\x80\x05\x95\xff\x00\x00\x00\x00\x00\x00\x00N."],  # a frame longer than its write
        [b"\x80\x05B\x00\x00\x01\x00", b"short"],  # a payload shorter than announced
        [b"\x80\x05B\x10\x00\x00\x00"],  # a payload header for a small value
    ],
)
def test_anything_unexpected_is_a_mismatch(writes: list[bytes]) -> None:
    sink = FrameStripper()
    with pytest.raises(FramingMismatch):
        for data in writes:
            sink.write(data)
        sink.finish()
