"""A serialised state: one pickle stream, in segments, and its out-of-band buffers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["Bytes", "OutOfBand", "Segment", "Snapshot"]

Bytes: TypeAlias = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of the pickle stream; ``aligned`` marks a large payload (a big bytes or str) written in one piece."""

    data: Bytes
    aligned: bool = False


@dataclass(frozen=True, slots=True)
class OutOfBand:
    """One out-of-band buffer (pickle protocol 5): the memory of an array, a bytearray, a memoryview."""

    data: Bytes
    readonly: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state as pickle left it. Buffers may still be the app's live memory until ``detach``."""

    stream: tuple[Segment, ...]
    buffers: tuple[OutOfBand, ...]
    serializer: str = "pickle"

    @property
    def stream_size(self) -> int:
        """Bytes in the pickle stream."""
        return sum(_size(segment.data) for segment in self.stream)

    @property
    def size(self) -> int:
        """Bytes in the stream and the buffers."""
        return self.stream_size + sum(_size(buffer.data) for buffer in self.buffers)

    def stream_bytes(self) -> Bytes:
        """The whole pickle stream as one buffer (a copy when it is in several segments)."""
        if len(self.stream) == 1:
            return self.stream[0].data
        return b"".join(self.stream_pieces())

    def stream_pieces(self) -> list[Bytes]:
        """The stream's segments' data, in order."""
        return [segment.data for segment in self.stream]

    def detach(self) -> Snapshot:
        """A copy that no longer shares memory the app can change, so the app may run on."""
        stream = tuple(Segment(_frozen(s.data), s.aligned) for s in self.stream)
        buffers = tuple(OutOfBand(bytes(b.data), b.readonly) for b in self.buffers)
        return Snapshot(stream, buffers, self.serializer)


def _size(data: Bytes) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _frozen(data: Bytes) -> Bytes:
    owner = data.obj if isinstance(data, memoryview) else data
    return data if isinstance(owner, bytes | io.BytesIO) else bytes(data)  # a BytesIO: the stream's own buffer
