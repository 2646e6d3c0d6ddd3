"""The control socket's protocol: the ``Control`` service of ``control.proto`` in length-prefixed frames.

``mig`` must answer in a few tens of milliseconds, and ``import grpc`` alone costs more than that, so the Unix
control socket speaks this small protocol instead of HTTP/2. The API stays the one in ``control.proto``: the same
methods and messages. One call per connection: the caller sends ``CALL`` (the method's name, a newline, the
request in protobuf); the daemon answers ``REPLY`` once (a unary method) or once per message and then ``END`` (a
streaming one), or ``ERROR`` (``{"error": class name, "message": sentence}``). The caller cancels a call by
closing the connection.

A caller may ask for ``Method;plain`` instead: the replies come as JSON objects, each field under its proto name
with its value (enums by name, 64-bit integers as numbers). ``mig status`` and ``mig ps`` ask for that, so they
need not import protobuf (a third of their time). This module is pure (no sockets) and imports protobuf only
when a method's messages are needed.
"""

from __future__ import annotations

import enum
import json
import struct

from migrated.errors import DaemonError, MigError, error_class

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from google.protobuf.message import Message

__all__ = ["HEADER", "MAX_FRAME", "FrameKind", "Method", "call_frame", "error_frame", "frame", "method", "parse_call",
           "parse_error", "plain"]  # fmt: skip

HEADER = struct.Struct("!IB")  # payload length, kind
MAX_FRAME = 64 * 1024 * 1024
PLAIN = ";plain"


class FrameKind(enum.IntEnum):
    """What a frame on the control socket carries."""

    CALL = 1  # mig -> daemon: b"Method\n" (or b"Method;plain\n") + the request
    REPLY = 2  # daemon -> mig: one reply message (or its plain JSON)
    END = 3  # daemon -> mig: a streaming method sent its last message
    ERROR = 4  # daemon -> mig: {"error": class name, "message": sentence}


class Method:
    """One method of the ``Control`` service (a plain class: ``dataclasses`` costs ``mig`` milliseconds)."""

    __slots__ = ("name", "reply", "request", "streaming")

    def __init__(self, name: str, request: type[Message], reply: type[Message], streaming: bool) -> None:
        self.name = name
        self.request = request
        self.reply = reply
        self.streaming = streaming


_METHODS: dict[str, Method] = {}


def method(name: str) -> Method | None:
    """The method called ``name``, or None."""
    if not _METHODS:
        from google.protobuf.message_factory import GetMessageClass

        from migrated.transport.v1 import control_pb2

        for m in control_pb2.DESCRIPTOR.services_by_name["Control"].methods:
            request, reply = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
            _METHODS[m.name] = Method(m.name, request, reply, m.server_streaming)
    return _METHODS.get(name)


def frame(kind: FrameKind, payload: bytes = b"") -> bytes:
    """One frame."""
    return HEADER.pack(len(payload), kind) + payload


def call_frame(name: str, request: bytes = b"", as_plain: bool = False) -> bytes:
    """The frame that calls method ``name`` with the encoded ``request``; ``as_plain``: replies in plain JSON."""
    return frame(FrameKind.CALL, name.encode() + (PLAIN.encode() if as_plain else b"") + b"\n" + request)


def parse_call(payload: bytes) -> tuple[Method, Message, bool]:
    """The method, request and reply form (plain or not) of a ``CALL`` payload; ``DaemonError`` for a method this
    daemon does not serve."""
    head, _, body = payload.partition(b"\n")
    shown = head[:64].decode(errors="replace")
    name, as_plain = (shown.removesuffix(PLAIN), True) if shown.endswith(PLAIN) else (shown, False)
    found = method(name)
    if found is None:
        raise DaemonError(f"this daemon has no method {name!r}; mig and migrated are different versions")
    return found, found.request.FromString(body), as_plain


def plain(message: Message) -> dict[str, Any]:
    """A message as plain values: every field by its proto name, enums by name, nested messages as dicts."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None:
            value = [plain(item) for item in value] if field.is_repeated else plain(value)
        elif field.enum_type is not None:
            name = field.enum_type.values_by_number
            value = [name[item].name for item in value] if field.is_repeated else name[value].name
        elif field.type == field.TYPE_BYTES:
            value = [item.hex() for item in value] if field.is_repeated else value.hex()
        elif field.is_repeated:
            value = list(value)
        out[field.name] = value
    return out


def error_frame(error: MigError) -> bytes:
    """The frame that reports ``error``."""
    return frame(FrameKind.ERROR, json.dumps({"error": type(error).__name__, "message": error.message}).encode())


def parse_error(payload: bytes) -> MigError:
    """The error an ``ERROR`` payload stands for (the class the daemon raised)."""
    try:
        fields = json.loads(payload)
        return error_class(str(fields["error"]))(str(fields["message"]))
    except (ValueError, KeyError, TypeError):
        return DaemonError("the daemon sent an error that cannot be read; check mig status")
