"""The runner protocol's frames: encoding, incremental decoding, and what the decoder refuses."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrated.runtime._wire import MAX_FRAME, Frame, FrameDecoder, FrameError, Kind, encode, encode_json

HEADER = struct.Struct("!IB")
KNOWN_KINDS = {int(kind) for kind in Kind}

frames = st.lists(st.tuples(st.sampled_from(list(Kind)), st.binary(max_size=200)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (taken modulo its length + 1)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)]


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(frames, st.lists(st.integers(min_value=0), max_size=30))
def test_frames_survive_any_split_of_the_stream(sent: list[tuple[Kind, bytes]], cuts: list[int]) -> None:
    stream = b"".join(encode(kind, payload) for kind, payload in sent)
    decoder = FrameDecoder()
    received: list[Frame] = []
    for piece in split(stream, cuts):
        received += decoder.feed(piece)
    assert [(frame.kind, frame.payload) for frame in received] == sent
    assert decoder.pending == 0


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(frames)
def test_frames_survive_a_stream_fed_byte_by_byte(sent: list[tuple[Kind, bytes]]) -> None:
    stream = b"".join(encode(kind, payload) for kind, payload in sent)
    decoder = FrameDecoder()
    received = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i : i + 1])]
    assert [(frame.kind, frame.payload) for frame in received] == sent


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_json_frames_round_trip(value: dict[str, Any]) -> None:
    (frame,) = FrameDecoder().feed(encode_json(Kind.LOAD, value))
    assert frame.kind is Kind.LOAD
    assert frame.json() == value


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(st.text())
def test_input_frames_carry_text(line: str) -> None:
    (frame,) = FrameDecoder().feed(encode(Kind.INPUT, line.encode()))
    assert frame.text() == line


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = encode(Kind.INPUT, b"hello")
    decoder = FrameDecoder()
    assert decoder.feed(data[:3]) == []
    assert decoder.feed(data[3:-1]) == []
    assert decoder.pending == len(data) - 1
    assert decoder.feed(data[-1:]) == [Frame(Kind.INPUT, b"hello")]


@pytest.mark.parametrize("kind", [0, max(KNOWN_KINDS) + 1, 255])
def test_an_unknown_kind_is_refused(kind: int) -> None:
    with pytest.raises(FrameError, match=str(kind)):
        FrameDecoder().feed(HEADER.pack(0, kind))


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    with pytest.raises(FrameError, match=str(MAX_FRAME)):
        FrameDecoder().feed(HEADER.pack(MAX_FRAME + 1, Kind.INPUT))


def test_a_frame_of_the_largest_size_is_awaited() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(HEADER.pack(MAX_FRAME, Kind.INPUT) + b"x") == []
    assert decoder.pending == HEADER.size + 1


def test_encoding_an_oversized_payload_is_refused() -> None:
    with pytest.raises(FrameError):
        encode(Kind.INPUT, bytes(MAX_FRAME + 1))


@settings(deadline=None)  # timing depends on the load of a shared machine
@given(st.binary(max_size=64))
def test_garbage_is_refused_or_decoded_never_misread(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        received = decoder.feed(data)
    except FrameError:
        return
    consumed = b"".join(encode(frame.kind, frame.payload) for frame in received)
    assert data.startswith(consumed)
    assert decoder.pending == len(data) - len(consumed)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"not json", b"\xff\xfe", b""])
def test_a_control_frame_that_is_not_a_json_object_is_refused(payload: bytes) -> None:
    (frame,) = FrameDecoder().feed(encode(Kind.EXITED, payload))
    with pytest.raises(FrameError):
        frame.json()


def test_encode_json_is_compact() -> None:
    data = encode_json(Kind.EXITED, {"code": 3, "reason": "done"})
    length, kind = HEADER.unpack_from(data)
    assert kind == Kind.EXITED
    assert data[HEADER.size :] == b'{"code":3,"reason":"done"}'
    assert length == len(data) - HEADER.size
    assert json.loads(data[HEADER.size :]) == {"code": 3, "reason": "done"}
