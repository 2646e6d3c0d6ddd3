"""The runner's line to the app's home: calls (files, sockets), network output kept until the home has it, and
the cursor of the events (input, network) the app has handled.

Everything goes over the runner's socket to its daemon (``_wire`` frames ``IO``, ``OUT``, ``ACK``); the daemon
carries it out when the app runs at home, or relays it over the home link when the app runs elsewhere. The
cursor and the output not yet acknowledged travel inside every checkpoint (``state``), which is what makes a
move neither lose nor repeat an event or a send.
"""

from __future__ import annotations

import errno as _errno
import os

from migrated.runtime import _wire

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from typing import Any, Protocol

    class Link(Protocol):
        def send_raw(self, frame: bytes) -> None: ...

        def recv_reply(self, *kinds: _wire.Kind) -> _wire.Frame | None: ...


__all__ = ["Home", "current", "set_current"]

MAX_OUTBOX = 8 * 1024 * 1024  # bytes of network output the app may have ahead of its home before send() waits

_current: Home | None = None


def current() -> Home:
    """The running app's home line; a clear error outside an app run by migrated."""
    if _current is None:
        from migrated.errors import UsageError

        raise UsageError("home I/O works only inside an app run by migrated (mig run)")
    return _current


def set_current(home: Home | None) -> None:
    """Make ``home`` the line every call of this process uses (the runner sets it once)."""
    global _current
    _current = home


class Home:
    """Calls to the home, and the state of the line that a checkpoint keeps."""

    def __init__(self, link: Link, cwd: str, away: bool) -> None:
        self.link = link
        self.cwd = cwd  # the app's working directory at home
        self.away = away  # files are proxied only when it runs elsewhere
        self.session = ""  # the home's numbering of events
        self.seq = 0  # the last event handled
        self.out = 0  # the last network output numbered
        self.outbox: dict[int, tuple[dict[str, Any], bytes]] = {}
        self._outbox_bytes = 0
        self._next_id = int.from_bytes(os.urandom(4), "big") << 20  # unique across runner processes
        self._replies: dict[int, _wire.Frame] = {}

    # -- calls

    def call(self, op: str, args: dict[str, Any] | None = None, data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Ask the home to do ``op``; wait for its answer. An error answer raises the ``OSError`` it names."""
        return self.collect(self.post(op, args, data))

    def post(self, op: str, args: dict[str, Any] | None = None, data: bytes = b"") -> int:
        """Send a call without waiting (write-behind, read-ahead); ``collect`` its answer later."""
        self._next_id += 1
        header = {"id": self._next_id, "op": op, **(args or {})}
        self.link.send_raw(_wire.encode_io(_wire.Kind.IO, header, data))
        return self._next_id

    def collect(self, request: int) -> tuple[dict[str, Any], bytes]:
        """The answer to a posted call (other answers that arrive first are kept for their own collect)."""
        while request not in self._replies:
            frame = self.link.recv_reply(_wire.Kind.IO_REPLY, _wire.Kind.OUT_ACK)
            if frame is None:
                raise OSError(_errno.EIO, "the app's daemon went away")
            if frame.kind is _wire.Kind.OUT_ACK:
                self.acknowledged(int(frame.io()[0].get("out", 0)))
                continue
            header, _ = frame.io()
            self._replies[int(header.get("id", 0))] = frame
        header, data = self._replies.pop(request).io()
        if "errno" in header:
            raise OSError(int(header["errno"]), str(header.get("error", "")), *_filename(header))
        return header, data

    # -- network output: numbered, kept until the home acknowledges it

    def send_out(self, op: str, args: dict[str, Any], data: bytes = b"") -> None:
        """Hand the home a network send or close; waits only while too much output is unacknowledged."""
        while self._outbox_bytes > MAX_OUTBOX:
            frame = self.link.recv_reply(_wire.Kind.OUT_ACK)
            if frame is None:
                raise OSError(_errno.EIO, "the app's daemon went away")
            self.acknowledged(int(frame.io()[0].get("out", 0)))
        self.out += 1
        header = {"out": self.out, "op": op, **args}
        self.outbox[self.out] = (header, data)
        self._outbox_bytes += len(data)
        self.link.send_raw(_wire.encode_io(_wire.Kind.OUT, header, data))

    def acknowledged(self, out: int) -> None:
        """The home applied every output up to ``out``: forget it."""
        for number in [n for n in self.outbox if n <= out]:
            self._outbox_bytes -= len(self.outbox.pop(number)[1])

    # -- events

    def fresh(self, header: dict[str, Any]) -> bool:
        """Whether an event is new to the app (a move or a reconnection may deliver one twice)."""
        session, seq = str(header.get("session", "")), int(header.get("seq", 0))
        return session != self.session or seq > self.seq

    def handled(self, header: dict[str, Any]) -> None:
        """The app handled an event: advance the cursor and tell the home it may forget it."""
        self.session, self.seq = str(header.get("session", "")), int(header.get("seq", 0))
        self.link.send_raw(_wire.encode_json(_wire.Kind.ACK, {"session": self.session, "seq": self.seq}))

    def resume(self, net: dict[str, Any]) -> dict[str, Any]:
        """After a start or a thaw: tell the home what this copy has handled and holds (``net``: its listeners
        and connections); resend the output it has not acknowledged; events then flow from the cursor on."""
        reply, _ = self.call("home.resume", {"session": self.session, "seq": self.seq, "out": self.out, **net})
        applied = int(reply.get("out", 0))
        self.out = max(self.out, applied)  # a copy restored from an older version numbers on after the home
        self.acknowledged(applied)
        for _, (header, data) in sorted(self.outbox.items()):
            self.link.send_raw(_wire.encode_io(_wire.Kind.OUT, header, data))
        return reply

    # -- checkpoints

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the line."""
        return {"session": self.session, "seq": self.seq, "out": self.out, "outbox": sorted(self.outbox.items())}

    def restore(self, state: dict[str, Any]) -> None:
        """Take up the line where a checkpoint left it."""
        self.session, self.seq, self.out = str(state["session"]), int(state["seq"]), int(state["out"])
        self.outbox = {int(n): (dict(h), bytes(d)) for n, (h, d) in state["outbox"]}
        self._outbox_bytes = sum(len(d) for _, d in self.outbox.values())


def _filename(header: dict[str, Any]) -> tuple[str, ...]:
    name = header.get("filename")
    return (str(name),) if name else ()
