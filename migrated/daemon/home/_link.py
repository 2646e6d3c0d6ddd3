"""The away end of a home link: one gRPC stream, per runner, from the host that runs an app to the host that
serves its I/O (its home, or the host that keeps its files).

Upward it carries the runner's calls, output and acknowledgements and, for a visitor, its console lines (numbered
by this daemon's console, kept until the home says it has them); downward, answers, events and
acknowledgements. It reconnects after a loss, sends again what was not answered or acknowledged, fails calls left
unanswered past the home timeout, and stops the copy when the home refuses its epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from migrated.daemon._console import ConsoleRead
from migrated.daemon._records import AppRecord
from migrated.daemon._retry import RECONNECT
from migrated.daemon._tasks import owned
from migrated.errors import MigError, StaleCopyError
from migrated.runtime import _wire
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["Link", "LinkPeers"]

log = logging.getLogger("migrated.home")

LINK_BATCH = 1 << 20  # bytes of frames per message
CONSOLE_BATCH = 4096  # console lines per frame
Push = Callable[[_wire.Kind, bytes], None]


class LinkPeers(Protocol):
    """What a link needs of the peers: a call to open the link stream to a host (errors as ``MigError``)."""

    def home_link(self, device: str, requests: AsyncIterator[pb.LinkUp]) -> AsyncIterator[pb.LinkDown]:
        """Open the home link stream to the paired host ``device``."""
        ...


class Link:
    """The away end of one app's home link, for one runner (and the console, for a visitor)."""

    def __init__(
        self,
        peers: LinkPeers,
        record: AppRecord,
        target: tuple[str, str],
        push: Push,
        on_stale: Callable[[str], Awaitable[None]],
        timeout: float,
        console: tuple[float, int] | None = None,
    ) -> None:
        """``target`` is (device id, name) of the host at the other end; ``console`` is (this daemon's console
        session, the last line the home has) when the link carries the record's console home."""
        self.peers = peers
        self.record = record
        self.app, self.epoch = record.name, record.place.epoch
        self.target, self.target_name = target
        self.push = push  # frames back to the app (its runner, or a relay)
        self.on_stale = on_stale
        self.timeout = timeout
        self.carries_console = console is not None
        self.console_session, self.console_acked = console or (0.0, 0)
        self._acked_more = asyncio.Event()
        self._up: asyncio.Queue[pb.IoFrame | None] = asyncio.Queue()  # None ends a session's request stream
        self._unanswered: dict[int, tuple[float, bytes]] = {}
        self._unacked: dict[int, bytes] = {}
        self._cursor: tuple[str, int] | None = None
        self._connected = False

    def receive(self, frame: _wire.Frame) -> None:
        """A frame from the app, for the other end."""
        if frame.kind is _wire.Kind.IO:
            header, _ = frame.io()
            self._unanswered[int(header.get("id", 0))] = (time.monotonic(), frame.payload)
        elif frame.kind is _wire.Kind.OUT:
            header, _ = frame.io()
            self._unacked[int(header.get("out", 0))] = frame.payload
        elif frame.kind is _wire.Kind.ACK:
            body = frame.json()
            self._cursor = (str(body.get("session", "")), int(body.get("seq", 0)))
        self._up.put_nowait(pb.IoFrame(kind=frame.kind, payload=frame.payload))

    async def flushed(self, within: float) -> None:
        """Wait until the home has every console line written so far (or ``within`` seconds pass)."""
        if self.carries_console:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._acked_to(self.record.console.log.next_seq - 1)

    async def _acked_to(self, seq: int) -> None:
        """Wait until the home has the console up to line ``seq``."""
        while True:
            self._acked_more.clear()  # before the check: an acknowledgement after it sets it again
            if self.console_acked >= seq:
                return
            await self._acked_more.wait()

    async def run(self) -> None:
        """Keep the link open until cancelled (or refused as stale)."""
        expiry = owned(self._expire(), f"expiry {self.app}")
        pauses = RECONNECT.pauses()
        try:
            while True:
                try:
                    await self._session()
                except StaleCopyError as exc:
                    await self.on_stale(exc.message)
                    return
                except MigError as exc:
                    log.info("home link of %s: %s; reconnecting", self.app, exc.message)
                self._connected = False
                await asyncio.sleep(next(pauses))
        finally:
            expiry.cancel()

    async def _session(self) -> None:
        up = self._fresh_queue()
        console = owned(self._carry_console(up), f"console {self.app}") if self.carries_console else None
        try:
            self._connected = True
            async for down in self.peers.home_link(self.target, self._requests(up)):
                for frame in down.frames:
                    self._down(frame)
        finally:
            up.put_nowait(None)  # the stream's sender ends too, instead of waiting on this queue for ever
            if console is not None:
                console.cancel()

    def _fresh_queue(self) -> asyncio.Queue[pb.IoFrame | None]:
        """A queue for a new session: of what waited, only acknowledgements matter (the rest is sent again)."""
        stale, self._up = self._up, asyncio.Queue()
        while not stale.empty():
            frame = stale.get_nowait()
            if frame is not None and frame.kind == _wire.Kind.ACK:
                self._up.put_nowait(frame)
        return self._up

    async def _requests(self, up: asyncio.Queue[pb.IoFrame | None]) -> AsyncIterator[pb.LinkUp]:
        session, seq = self._cursor or ("", 0)
        again = [pb.IoFrame(kind=_wire.Kind.IO, payload=p) for _, (_, p) in sorted(self._unanswered.items())]
        again += [pb.IoFrame(kind=_wire.Kind.OUT, payload=p) for _, p in sorted(self._unacked.items())]
        yield pb.LinkUp(
            app=self.app,
            epoch=self.epoch,
            resumed=self._cursor is not None,
            cursor_session=session,
            cursor_seq=seq,
            frames=again,
        )
        while (frame := await up.get()) is not None:
            batch, size = [frame], len(frame.payload)
            while not up.empty() and size < LINK_BATCH and (frame := up.get_nowait()) is not None:
                batch.append(frame)
                size += len(frame.payload)
            yield pb.LinkUp(frames=batch)
            if frame is None:
                return

    async def _carry_console(self, up: asyncio.Queue[pb.IoFrame | None]) -> None:
        """Send the record's console from the first line the home lacks, as it grows, one batch at a time (the
        next once the home has the last: while it is away, lines wait in the console, within its bounds, not in
        this daemon's memory). The first frame goes out at once, lines or not: it tells the home how the app is
        doing here."""
        console, since, told = self.record.console, self.console_acked + 1, False
        while True:
            read = console.log.read(since, CONSOLE_BATCH)
            if read.lines or not told:
                up.put_nowait(pb.IoFrame(kind=_wire.Kind.CONSOLE, payload=self._console_payload(read, since)))
                since, told = read.next_seq, True
                await self._acked_to(since - 1)
                continue
            if console.closed:  # the run ended and all of it is on its way; a new run gets a new link
                return
            await console.wait_change(since, 0)

    def _console_payload(self, read: ConsoleRead, since: int) -> bytes:
        first = read.lines[0][0] if read.lines else since
        lines = [data for _, data in read.lines]
        if read.dropped and read.lines:  # the bound was hit: say so, under a lost line's number
            first -= 1
            lines.insert(0, _lost_marker(read.dropped))
        record = self.record
        header = {"session": self.console_session, "first": first, "sizes": [len(line) for line in lines]}
        header |= {"state": record.state.value, "reason": record.reason, "pid": record.pid}
        return _wire.io_payload(header, b"".join(lines))

    def _down(self, frame: pb.IoFrame) -> None:
        kind = _wire.Kind(frame.kind)
        if kind is _wire.Kind.CONSOLE_ACK:
            header = json.loads(frame.payload)
            if header.get("session") == self.console_session:
                self.console_acked = max(self.console_acked, int(header.get("applied", 0)))
                self._acked_more.set()
            return
        if kind is _wire.Kind.IO_REPLY:
            header, _ = _wire.Frame(kind, frame.payload).io()
            if self._unanswered.pop(int(header.get("id", 0)), None) is None:
                return  # answered twice (sent again after a reconnection), or failed here already
        elif kind is _wire.Kind.OUT_ACK:
            out = int(_wire.Frame(kind, frame.payload).io()[0].get("out", 0))
            for number in [n for n in self._unacked if n <= out]:
                del self._unacked[number]
        self.push(kind, frame.payload)

    async def _expire(self) -> None:
        """Fail the calls an unreachable host has left unanswered for the daemon's home timeout."""
        while True:
            await asyncio.sleep(1.0)
            if self._connected:
                continue
            limit = time.monotonic() - self.timeout
            for call, (sent, _) in list(self._unanswered.items()):
                if sent < limit:
                    del self._unanswered[call]
                    error = (
                        f"{self.target_name}, which serves {self.app}'s home I/O, has not answered for "
                        f"{self.timeout:g} s; its files and sockets are unavailable until it is back"
                    )
                    answer = _wire.io_payload({"id": call, "errno": errno.EHOSTUNREACH, "error": error})
                    self.push(_wire.Kind.IO_REPLY, answer)


def _lost_marker(dropped: int) -> bytes:
    return (
        f"[migrated] {dropped} console lines were lost: the home was unreachable and the host that runs the app "
        "keeps only the newest lines (raise the daemon's --console-lines or --console-bytes there)\n"
    ).encode()
