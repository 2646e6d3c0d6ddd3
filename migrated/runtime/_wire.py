"""The runner protocol: length-prefixed frames on a Unix socket between a daemon and its runner.

The runner must start in milliseconds, so it speaks this small protocol instead of gRPC (``import grpc``
alone costs more than a thaw). A frame is a 5-byte header (payload length, kind) and the payload; control
payloads are JSON objects, ``INPUT`` is UTF-8 text. This module is pure: no sockets.
"""

from __future__ import annotations

import enum
import json
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from typing import Any

__all__ = [
    "MAX_FRAME",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Kind",
    "encode",
    "encode_io",
    "encode_json",
    "io_payload",
]

_HEADER = struct.Struct("!IB")
_IO_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


class Kind(enum.IntEnum):
    """What a frame carries, and who sends it."""

    LOAD = 1  # daemon -> runner: {"file", "app_class", "name", "args", "kind"}
    LOADED = 2  # runner -> daemon: {"app_class"}
    FAILED = 3  # runner -> daemon: {"error", "message"}: the app could not be loaded
    INPUT = 4  # unused since input comes as an EVENT from the app's home (the number stays taken)
    STOP = 5  # daemon -> runner: call on_stop and end
    EXITED = 6  # runner -> daemon: {"code", "reason"}
    CRASHED = 7  # runner -> daemon: {"reason"}: a handler raised
    CHECKPOINT = 8  # daemon -> runner: {"kind", "message", "hold", "deadline", "urgent"}: capture the state between
    # two events ("urgent", a move's: ahead of queued ones); with "hold", stay frozen after CAPTURED until STOP (it
    # was stored) or RESUME; past "deadline"
    # (time.monotonic) the daemon gave up waiting: answer CAPTURE_FAILED {"expired": true} without a capture
    MANIFEST = 9  # runner -> daemon: the checkpoint's manifest (protobuf); the app stays paused
    NEED = 10  # daemon -> runner: the 32-byte hashes of the chunks the store lacks, concatenated
    CHUNK = 11  # runner -> daemon: 32-byte hash, 1-byte zstd level, the chunk's raw bytes
    CAPTURED = 12  # runner -> daemon: {"pause", "capture"}: every needed chunk was sent; the app goes on
    CAPTURE_FAILED = 13  # runner -> daemon: {"error", "message"}: the state cannot be saved; the app goes on
    RESUME = 14  # daemon -> runner: a checkpoint that held the app frozen was not stored; go on
    # Home I/O. Payloads are ``encode_io``'s: a JSON header and raw bytes. Ops are named "file.*", "os.*" and
    # "net.*"; the home (this daemon for an app at home, the home's daemon over the home link for one away)
    # carries them out.
    IO = 15  # runner -> daemon: {"id", "op", ...args} + data: a call; the runner waits for (or collects) its reply
    IO_REPLY = 16  # daemon -> runner: {"id", ...result} or {"id", "errno", "error"} + data
    EVENT = 17  # daemon -> runner: {"session", "seq", "type", ...} + data: input or a network event, in order
    ACK = 18  # runner -> daemon: {"session", "seq"}: every event up to seq was handled
    OUT = 19  # runner -> daemon: {"out", "op", ...args} + data: a network send or close, no reply
    OUT_ACK = 20  # daemon -> runner: {"out"}: the home applied every OUT up to this number
    # Between daemons only, on the home link of an app that runs away from home (never to or from a runner):
    CONSOLE = 21  # app's host -> home: {"session", "first", "sizes", "state", "reason", "pid"} + the lines, joined:
    # console lines numbered from "first" in that daemon's "session", and how the app is doing there
    CONSOLE_ACK = 22  # home -> app's host: {"session", "applied"}: every console line up to "applied" is kept
    # daemon -> spare runner, before LOAD: {"modules", "store", "app", "version"}: import those modules and read
    # that version ahead, then answer AHEAD {}; a LOAD that thaws a later version then reads only what differs
    AHEAD = 23


class FrameError(ValueError):
    """The byte stream is not a valid sequence of frames."""


class Frame:
    """One decoded frame."""

    __slots__ = ("kind", "payload")

    def __init__(self, kind: Kind, payload: bytes) -> None:
        self.kind = kind
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (self.kind, self.payload) == (other.kind, other.payload)

    def __hash__(self) -> int:
        return hash((self.kind, self.payload))

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, {self.payload!r})"

    def json(self) -> dict[str, Any]:
        """Decode a JSON payload."""
        try:
            value = json.loads(self.payload)
        except ValueError:
            raise FrameError(f"{self.kind.name} frame does not hold JSON") from None
        if not isinstance(value, dict):
            raise FrameError(f"{self.kind.name} frame does not hold a JSON object")
        return value

    def io(self) -> tuple[dict[str, Any], bytes]:
        """Decode an ``encode_io`` payload: its JSON header and its bytes."""
        if len(self.payload) < _IO_HEADER.size:
            raise FrameError(f"{self.kind.name} frame is too short")
        (length,) = _IO_HEADER.unpack_from(self.payload)
        end = _IO_HEADER.size + length
        if end > len(self.payload):
            raise FrameError(f"{self.kind.name} frame's header runs past its end")
        try:
            header = json.loads(self.payload[_IO_HEADER.size : end])
        except ValueError:
            raise FrameError(f"{self.kind.name} frame's header is not JSON") from None
        if not isinstance(header, dict):
            raise FrameError(f"{self.kind.name} frame's header is not a JSON object")
        return header, self.payload[end:]

    def text(self) -> str:
        """Decode a UTF-8 payload."""
        return self.payload.decode("utf-8", errors="replace")


def encode(kind: Kind, payload: bytes = b"") -> bytes:
    """Encode one frame."""
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the limit of {MAX_FRAME}")
    return _HEADER.pack(len(payload), kind) + payload


def encode_json(kind: Kind, value: dict[str, Any]) -> bytes:
    """Encode one frame with a JSON object payload."""
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


def encode_io(kind: Kind, header: dict[str, Any], data: bytes = b"") -> bytes:
    """Encode one frame whose payload is a JSON header and raw bytes."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return encode(kind, _IO_HEADER.pack(len(head)) + head + data)


def io_payload(header: dict[str, Any], data: bytes = b"") -> bytes:
    """The payload ``encode_io`` would frame (the home link carries payloads without the frame header)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return _IO_HEADER.pack(len(head)) + head + data


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame now complete."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEADER.size:
            length, kind = _HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
            try:
                frame_kind = Kind(kind)
            except ValueError:
                raise FrameError(f"unknown frame kind {kind}") from None
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(frame_kind, bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)
