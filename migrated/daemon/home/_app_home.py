"""The home side of one app: its events, its sockets, its files, and the calls its copy makes, wherever it runs.

An app's home owns its input and its network connections: events (a line of input, bytes from a socket) get
numbers from the ``EventQueue`` and stay there until the app says it handled them, so whichever copy runs next
takes up from the cursor its checkpoint holds. Network output carries the app's own numbers; the home applies
each once. Calls are answered in order, and a call sent again (a link that reconnected) is answered once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from migrated.daemon._tasks import owned
from migrated.daemon.home._files import HomeFiles
from migrated.daemon.home._net import NetHome
from migrated.daemon.home._queue import EventQueue, accepted
from migrated.errors import MigError
from migrated.runtime import _wire
from migrated.runtime._fileops import CALLS

__all__ = ["MAX_QUEUED", "MAX_UNSENT", "AppHome", "Push"]

log = logging.getLogger("migrated.home")

MAX_QUEUED = 16 * 1024 * 1024  # bytes of unhandled events before the home stops reading the app's sockets
UNPAUSE_BELOW = 4 * 1024 * 1024
MAX_UNSENT = 4 * 1024 * 1024  # bytes of the app's output waiting for slow peers before its sends wait
REPLY_CACHE = 256  # answers kept for calls a reconnecting link may send again

Push = Callable[[_wire.Kind, bytes], None]


class AppHome:
    """The home side of one app: where its I/O goes now, its events, its sockets and its files."""

    def __init__(
        self,
        name: str,
        cwd: str,
        session: str,
        relay: Callable[[dict[str, Any], bytes], Awaitable[bytes]] | None = None,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.relay = relay  # where file calls go when another host serves the app's files
        self.queue = EventQueue(session)
        self.net = NetHome(self._emit)
        self._files: HomeFiles | None = None
        self.out_applied = 0
        self._push: Push | None = None
        self._close_link: Callable[[], None] | None = None
        self._delivering = False
        self._paused = False
        self._tail: asyncio.Future[None] | None = None
        self._answers: OrderedDict[int, bytes] = OrderedDict()
        self._pending: set[int] = set()  # calls being carried out
        self._ack_to: Push | None = None  # where the acknowledgement of output held back for slow peers goes
        self._draining: asyncio.Future[None] | None = None
        self._running: set[asyncio.Task[None]] = set()  # calls and drains under way, cancelled on close

    # -- where the app runs

    def attach(
        self, push: Push, cursor: tuple[str, int] | None = None, close: Callable[[], None] | None = None
    ) -> None:
        """Send the app's I/O to ``push`` from now on. Events flow once the copy says where it is (``resume``),
        or at once from ``cursor`` (a link that reconnects). ``close`` ends the previous link, if any."""
        if self._close_link is not None and self._close_link is not close:
            self._close_link()
        self._push, self._close_link, self._delivering = push, close, False
        if cursor is not None:
            self._deliver_from(*cursor)

    def detach(self, push: Push) -> None:
        """``push`` no longer reaches the app; hold its events until another copy attaches."""
        if self._push is push:
            self._push, self._close_link, self._delivering = None, None, False

    async def close(self) -> None:
        """The app ended: close its sockets and files, forget its events."""
        for task in list(self._running):
            task.cancel()
        self._push = self._close_link = self._ack_to = None
        self._delivering = False
        self.queue.clear()
        await self.net.close_all()
        self.close_files()

    def close_files(self) -> None:
        """Close the files the app has open here (it moved on: the next copy reopens them)."""
        if self._files is not None:
            self._files.close_all()

    # -- events

    def input(self, line: str) -> None:
        """A line typed at home, for the app's ``on_input``."""
        self._emit("input", {}, line.encode())

    def _emit(self, kind: str, header: dict[str, Any], data: bytes) -> None:
        event = self.queue.add(kind, header, data)
        if self._delivering and self._push is not None:
            self._push(_wire.Kind.EVENT, event.payload)
        if self.queue.bytes > MAX_QUEUED and not self._paused:
            self._paused = True
            self.net.pause()

    def _deliver_from(self, session: str, seq: int) -> None:
        self._delivering = True
        if self._push is not None:
            for event in self.queue.after(session, seq):
                self._push(_wire.Kind.EVENT, event.payload)

    # -- frames from the app

    def receive(self, kind: int, payload: bytes, push: Push) -> None:
        """A frame from the app (``push`` answers it)."""
        frame = _wire.Frame(_wire.Kind(kind), payload)
        header, data = frame.io() if kind != _wire.Kind.ACK else (frame.json(), b"")
        if kind == _wire.Kind.ACK:
            self.queue.ack(str(header.get("session", "")), int(header.get("seq", 0)))
            if self._paused and self.queue.bytes < UNPAUSE_BELOW:
                self._paused = False
                self.net.unpause()
        elif kind == _wire.Kind.OUT:
            out = int(header.get("out", 0))
            if out > self.out_applied:
                self.net.apply(str(header.get("op", "")), header, data)
                self.out_applied = out
            self._ack_to = push
            if self.net.buffered() <= MAX_UNSENT:
                push(_wire.Kind.OUT_ACK, _wire.io_payload({"out": self.out_applied}))
            elif self._draining is None:  # a peer reads slowly: the app's sends wait, not this daemon's memory
                self._draining = self._start(self._drain())
        elif kind == _wire.Kind.IO:
            call = int(header.get("id", 0))
            if call in self._answers:
                push(_wire.Kind.IO_REPLY, self._answers[call])
                return
            previous = self._tail
            if call in self._pending:  # sent again while the first is still being carried out: answer both
                self._tail = self._start(self._repeat_after(previous, call, push))
                return
            self._pending.add(call)
            self._tail = self._start(self._call_after(previous, call, header, data, push))
        else:
            raise _wire.FrameError(f"a {frame.kind.name} frame does not go to an app's home")

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A call or a drain, run in order with the others; each handles its own failures (``_answer``)."""
        task = owned(work, f"home call of {self.name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _drain(self) -> None:
        """Acknowledge the app's output once slow peers have taken most of what waits for them."""
        try:
            await self.net.wait_buffered(MAX_UNSENT // 2)
        finally:
            self._draining = None
        if self._ack_to is not None:
            self._ack_to(_wire.Kind.OUT_ACK, _wire.io_payload({"out": self.out_applied}))

    async def _call_after(
        self, previous: asyncio.Future[None] | None, call: int, header: dict[str, Any], data: bytes, push: Push
    ) -> None:
        """Answer one call, after the calls before it (a write the app posted lands before its next read)."""
        await _after(previous)
        answer = await self._answer(call, header, data)
        self._pending.discard(call)
        self._answers[call] = answer
        while len(self._answers) > REPLY_CACHE:
            self._answers.popitem(last=False)
        push(_wire.Kind.IO_REPLY, answer)

    async def _repeat_after(self, previous: asyncio.Future[None] | None, call: int, push: Push) -> None:
        await _after(previous)
        answer = self._answers.get(call)
        if answer is not None:
            push(_wire.Kind.IO_REPLY, answer)

    async def _answer(self, call: int, header: dict[str, Any], data: bytes) -> bytes:
        op = str(header.get("op", ""))
        if op in CALLS and self.relay is not None:
            return await self.relay(header, data)
        try:
            result, out = await self._dispatch(op, header, data)
        except OSError as exc:
            failure: dict[str, Any] = {"errno": exc.errno or errno.EIO, "error": exc.strerror or str(exc)}
            if isinstance(exc.filename, str):
                failure["filename"] = exc.filename
            return _wire.io_payload({"id": call, **failure})
        except MigError as exc:
            return _wire.io_payload({"id": call, "errno": errno.EINVAL, "error": exc.message})
        except Exception as exc:  # a bug here must not leave the app waiting for ever
            log.exception("home call %s of %s failed", op, self.name)
            return _wire.io_payload({"id": call, "errno": errno.EIO, "error": f"the home failed: {exc}"})
        return _wire.io_payload({**result, "id": call}, out)

    async def _dispatch(self, op: str, header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        if op == "home.resume":
            return await self._resume(header), b""
        if op.startswith("net."):
            return await self.net.handle(op, header, data)
        if op in CALLS:
            return await asyncio.to_thread(self.files().handle, op, header, data)
        raise OSError(errno.ENOSYS, f"the home does not know the call {op!r}")

    async def _resume(self, header: dict[str, Any]) -> dict[str, Any]:
        listeners = header.get("listeners", [])
        conns = header.get("conns", [])
        session, seq = str(header.get("session", "")), int(header.get("seq", 0))
        pending = [accepted(event) for event in self.queue.after(session, seq)]  # conns the copy will meet
        net = await self.net.resume(
            list(listeners) if isinstance(listeners, list) else [], list(conns or []), [c for c in pending if c]
        )
        self._deliver_from(session, seq)
        return {**net, "out": self.out_applied}

    def files(self) -> HomeFiles:
        """The files the app has open here."""
        if self._files is None:
            self._files = HomeFiles(self.cwd)
        return self._files


async def _after(previous: asyncio.Future[None] | None) -> None:
    """Wait until the call before has ended, however it ended; a cancel of the one that waits passes through."""
    if previous is not None:
        await asyncio.wait([previous])
