"""Home I/O: the home side of each app (its ordered events, its sockets, its files) and the home link that
carries the I/O of an app running on another host.

An app's home owns its input and its network connections: events (a line of input, bytes from a socket) get
numbers from the home's ``EventQueue`` and stay there until the app says it handled them, so whichever copy
runs next takes up from the cursor its checkpoint holds. Network output carries the app's own numbers; the
home applies each once. For an app running here the runner's frames come straight from its socket; for one
running elsewhere its host relays them over ``HomeLink``, a gRPC stream opened at the app's epoch, which the
home refuses once a newer epoch has been seen (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc.aio

from migrated.daemon._apps import AppRecord, State
from migrated.daemon._home_files import HomeFiles
from migrated.daemon._home_net import NetHome
from migrated.discovery._paired import PairedPeer
from migrated.errors import MigError, StaleCopyError
from migrated.runtime import _wire
from migrated.transport._errors import error_name
from migrated.transport.v1 import peer_pb2 as pb

if TYPE_CHECKING:
    from migrated.daemon._peers import Peers
    from migrated.daemon._runner import Runner

__all__ = ["AppHome", "EventQueue", "HomeIO", "Link"]

log = logging.getLogger("migrated.home")

MAX_QUEUED = 16 * 1024 * 1024  # bytes of unhandled events before the home stops reading the app's sockets
UNPAUSE_BELOW = 4 * 1024 * 1024
MAX_UNSENT = 4 * 1024 * 1024  # bytes of the app's output waiting for slow peers before its sends wait
REPLY_CACHE = 256  # answers kept for calls a reconnecting link may send again
LINK_BATCH = 1 << 20
RECONNECT_DELAY = 1.0

Push = Callable[[_wire.Kind, bytes], None]


@dataclass(frozen=True, slots=True)
class Event:
    """One event in a home's queue: its number and its payload (header and bytes) as the runner gets it."""

    seq: int
    payload: bytes


class EventQueue:
    """An app's events in order, numbered within ``session``; kept until the app has handled them."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.next_seq = 1
        self._events: deque[Event] = deque()
        self.bytes = 0

    def add(self, kind: str, header: dict[str, Any], data: bytes) -> Event:
        """Number a new event."""
        event = Event(
            self.next_seq,
            _wire.io_payload({**header, "session": self.session, "seq": self.next_seq, "type": kind}, data),
        )
        self.next_seq += 1
        self._events.append(event)
        self.bytes += len(event.payload)
        return event

    def ack(self, session: str, seq: int) -> None:
        """The app handled every event up to ``seq``: forget them."""
        if session != self.session:
            return
        while self._events and self._events[0].seq <= seq:
            self.bytes -= len(self._events.popleft().payload)

    def after(self, session: str, seq: int) -> list[Event]:
        """The events a copy whose cursor is (``session``, ``seq``) has not handled (all of them when the cursor
        is from another session: a home restarted, or the app came from another home)."""
        start = seq if session == self.session else 0
        return [event for event in self._events if event.seq > start]

    def clear(self) -> None:
        """Drop every event (the app ended)."""
        self._events.clear()
        self.bytes = 0


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
        if self._draining is not None:
            self._draining.cancel()
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
                self._draining = asyncio.ensure_future(self._drain())
        elif kind == _wire.Kind.IO:
            call = int(header.get("id", 0))
            if call in self._answers:
                push(_wire.Kind.IO_REPLY, self._answers[call])
                return
            previous = self._tail
            if call in self._pending:  # sent again while the first is still being carried out: answer both
                self._tail = asyncio.ensure_future(self._repeat_after(previous, call, push))
                return
            self._pending.add(call)
            self._tail = asyncio.ensure_future(self._call_after(previous, call, header, data, push))
        else:
            raise _wire.FrameError(f"a {frame.kind.name} frame does not go to an app's home")

    async def _drain(self) -> None:
        """Acknowledge the app's output once slow peers have taken most of what waits for them."""
        try:
            await self.net.wait_buffered(MAX_UNSENT // 2)
        finally:
            self._draining = None
        if self._ack_to is not None:
            self._ack_to(_wire.Kind.OUT_ACK, _wire.io_payload({"out": self.out_applied}))

    async def _call_after(
        self, previous: Awaitable[None] | None, call: int, header: dict[str, Any], data: bytes, push: Push
    ) -> None:
        """Answer one call, after the calls before it (a write the app posted lands before its next read)."""
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        answer = await self._answer(call, header, data)
        self._pending.discard(call)
        self._answers[call] = answer
        while len(self._answers) > REPLY_CACHE:
            self._answers.popitem(last=False)
        push(_wire.Kind.IO_REPLY, answer)

    async def _repeat_after(self, previous: Awaitable[None] | None, call: int, push: Push) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        answer = self._answers.get(call)
        if answer is not None:
            push(_wire.Kind.IO_REPLY, answer)

    async def _answer(self, call: int, header: dict[str, Any], data: bytes) -> bytes:
        op = str(header.get("op", ""))
        if op.startswith(("file.", "os.")) and self.relay is not None:
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
        if op.startswith(("file.", "os.")):
            return await asyncio.to_thread(self.files().handle, op, header, data)
        raise OSError(errno.ENOSYS, f"the home does not know the call {op!r}")

    async def _resume(self, header: dict[str, Any]) -> dict[str, Any]:
        listeners = header.get("listeners", [])
        conns = header.get("conns", [])
        session, seq = str(header.get("session", "")), int(header.get("seq", 0))
        pending = [_accepted(event) for event in self.queue.after(session, seq)]  # conns the copy will meet
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


class Link:
    """One end of a home link: relays an app's frames to the host that serves them (its home, or the host that
    keeps its files), reconnects, keeps what was not answered yet, and fails calls left unanswered too long."""

    def __init__(
        self,
        io: HomeIO,
        app: str,
        epoch: int,
        target: tuple[str, str],
        push: Push,
        on_stale: Callable[[str], Awaitable[None]],
    ) -> None:
        self.io = io
        self.app = app
        self.epoch = epoch
        self.target, self.target_name = target  # device id and name of the host at the other end
        self.push = push  # frames back to the app (its runner, or a relay)
        self.on_stale = on_stale
        self._up: asyncio.Queue[pb.IoFrame | None] = asyncio.Queue()  # None ends a session's request stream
        self._unanswered: dict[int, tuple[float, bytes]] = {}
        self._unacked: dict[int, bytes] = {}
        self._cursor: tuple[str, int] | None = None
        self._connected = False
        self.task: asyncio.Task[None] | None = None

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

    async def run(self) -> None:
        """Keep the link open until cancelled."""
        expiry = asyncio.ensure_future(self._expire())
        try:
            while True:
                try:
                    await self._session()
                except grpc.aio.AioRpcError as exc:
                    if error_name(exc) == StaleCopyError.__name__:
                        await self.on_stale(exc.details() or "")
                        return
                    log.info("home link of %s: %s; reconnecting", self.app, exc.code().name)
                except MigError as exc:
                    log.info("home link of %s: %s; reconnecting", self.app, exc.message)
                self._connected = False
                await asyncio.sleep(RECONNECT_DELAY)
        finally:
            expiry.cancel()

    async def _session(self) -> None:
        peer, address = self.io.peers.paired_target(self.target)
        resumed, (session, seq) = self._cursor is not None, self._cursor or ("", 0)
        again = [payload for _, (_, payload) in sorted(self._unanswered.items())]
        again_out = [payload for _, payload in sorted(self._unacked.items())]
        stale = self._up
        up = self._up = asyncio.Queue()
        while not stale.empty():  # frames queued while away: the ones that matter are sent again below
            frame = stale.get_nowait()
            if frame is not None and frame.kind == _wire.Kind.ACK:
                up.put_nowait(frame)
        first = pb.LinkUp(
            app=self.app,
            epoch=self.epoch,
            resumed=resumed,
            cursor_session=session,
            cursor_seq=seq,
            frames=[pb.IoFrame(kind=_wire.Kind.IO, payload=p) for p in again]
            + [pb.IoFrame(kind=_wire.Kind.OUT, payload=p) for p in again_out],
        )

        async def requests() -> AsyncIterator[pb.LinkUp]:
            yield first
            while (frame := await up.get()) is not None:
                batch, size = [frame], len(frame.payload)
                while not up.empty() and size < LINK_BATCH and (frame := up.get_nowait()) is not None:
                    batch.append(frame)
                    size += len(frame.payload)
                yield pb.LinkUp(frames=batch)
                if frame is None:
                    return

        call = self.io.peers.stub(peer, address).HomeLink(requests())
        self._connected = True
        try:
            async for down in call:
                for frame in down.frames:
                    self._down(frame)
        finally:
            up.put_nowait(None)  # the stream's sender ends too, instead of waiting on this queue for ever

    def _down(self, frame: pb.IoFrame) -> None:
        kind = _wire.Kind(frame.kind)
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
            limit = time.monotonic() - self.io.timeout
            for call, (sent, _) in list(self._unanswered.items()):
                if sent < limit:
                    del self._unanswered[call]
                    error = (
                        f"{self.target_name}, which serves {self.app}'s home I/O, has not answered for "
                        f"{self.io.timeout:g} s; its files and sockets are unavailable until it is back"
                    )
                    answer = _wire.io_payload({"id": call, "errno": errno.EHOSTUNREACH, "error": error})
                    self.push(_wire.Kind.IO_REPLY, answer)


class HomeIO:
    """Home I/O of every app on this host: the home side of those whose home is here, the links of visitors."""

    def __init__(
        self, peers: Peers, host: str, tasks: asyncio.TaskGroup, state_dir: Path, timeout: float = 30.0
    ) -> None:
        self.peers = peers
        self.timeout = timeout  # seconds a call waits for an unreachable home
        self.host = host
        self._grants_file = state_dir / "file-grants.json"
        self._grants: dict[str, dict[str, str]] = _load_grants(self._grants_file)
        self._granted: dict[str, AppHome] = {}
        self._relays: dict[str, tuple[Link, dict[int, asyncio.Future[bytes]]]] = {}
        self._tasks = tasks
        self._homes: dict[str, AppHome] = {}
        self._links: dict[str, Link] = {}
        self.on_stale: Callable[[AppRecord, str], Awaitable[None]] | None = None
        self.on_visitor: Callable[[AppRecord], None] | None = None
        self.fence: Callable[[str, int, PairedPeer], AppRecord] | None = None

    def home(self, record: AppRecord) -> AppHome:
        """The home side of an app whose home is here."""
        home = self._homes.get(record.name)
        if home is None:
            cwd = record.spec.home_cwd or record.spec.cwd
            home = self._homes[record.name] = AppHome(record.name, cwd, _new_session())
        home.relay = self._relay(record) if record.files_home else None
        return home

    def _relay(self, record: AppRecord) -> Callable[[dict[str, Any], bytes], Awaitable[bytes]]:
        """File calls of an app whose files another host serves: over a link to that host."""

        async def relay(header: dict[str, Any], data: bytes) -> bytes:
            link, waiting = self._relays.get(record.name) or self._start_relay(record)
            answer = asyncio.get_running_loop().create_future()
            waiting[int(header.get("id", 0))] = answer
            link.receive(_wire.Frame(_wire.Kind.IO, _wire.io_payload(header, data)))
            return bytes(await answer)

        return relay

    def _start_relay(self, record: AppRecord) -> tuple[Link, dict[int, asyncio.Future[bytes]]]:
        waiting: dict[int, asyncio.Future[bytes]] = {}

        def push(kind: _wire.Kind, payload: bytes) -> None:
            header, _ = _wire.Frame(kind, payload).io()
            answer = waiting.pop(int(header.get("id", 0)), None)
            if answer is not None and not answer.done():
                answer.set_result(payload)

        async def refused(why: str) -> None:
            log.warning("%s no longer serves the files of %s: %s", record.files_home_name, record.name, why)

        link = Link(self, record.name, 0, (record.files_home, record.files_home_name), push, refused)
        link.task = self._tasks.create_task(link.run(), name=f"files link {record.name}")
        self._relays[record.name] = (link, waiting)
        return link, waiting

    # -- files this host serves for an app whose home moved on

    def grant_files(self, app: str, device: str, cwd: str) -> None:
        """Serve ``app``'s files (in ``cwd``) to ``device``, its new home, from now on."""
        self._grants[app] = {"device": device, "cwd": cwd}
        _save_grants(self._grants_file, self._grants)

    def revoke_files(self, app: str) -> None:
        """``app`` came back: its files are served here as its own again."""
        if self._grants.pop(app, None) is not None:
            _save_grants(self._grants_file, self._grants)
        home = self._granted.pop(app, None)
        if home is not None:
            home.close_files()

    # -- the runners on this host

    def attach(self, record: AppRecord, runner: Runner) -> Callable[[_wire.Frame], None]:
        """A runner starts for ``record``: where its frames go."""

        def push(kind: _wire.Kind, payload: bytes) -> None:
            runner.push(_wire.encode(kind, payload))

        if record.home_device:
            self._stop_link(record.name)

            async def refused(why: str) -> None:
                await self.stale(record, why)

            target = (record.home_device, record.home)
            link = self._links[record.name] = Link(self, record.name, record.epoch, target, push, refused)
            link.task = self._tasks.create_task(link.run(), name=f"home link {record.name}")
            if self.on_visitor is not None:  # its console goes home too, however it came to run here
                self.on_visitor(record)
            return link.receive
        home = self.home(record)
        home.close_files()
        home.attach(push)
        runner.on_end(lambda: home.detach(push))
        return lambda frame: home.receive(frame.kind, frame.payload, push)

    async def ended(self, record: AppRecord) -> None:
        """A runner of ``record`` ended: its link goes; its sockets stay only while it moves or may come back."""
        if record.name in self._links:
            self._stop_link(record.name)
        if record.state in (State.CLOSED, State.EXITED) and not record.moving:
            await self.closed(record.name)

    async def closed(self, name: str) -> None:
        """The app will not run until opened again: close its sockets and files, drop its events."""
        home = self._homes.pop(name, None)
        if home is not None:
            await home.close()
        relay = self._relays.pop(name, None)
        if relay is not None and relay[0].task is not None:
            relay[0].task.cancel()

    def unhandled_input(self, name: str) -> list[bytes]:
        """Lines typed here that the app has not handled yet (its home moves: they go along)."""
        home = self._homes.get(name)
        if home is None:
            return []
        lines = []
        for event in home.queue.after("", 0):
            header, data = _wire.Frame(_wire.Kind.EVENT, event.payload).io()
            if header.get("type") == "input":
                lines.append(data)
        return lines

    def input(self, record: AppRecord, text: str) -> None:
        """Lines typed at home, for the app wherever it runs."""
        home = self.home(record)
        for line in text.splitlines() or [""]:
            home.input(line)

    def close(self) -> None:
        """Stop every link (the daemon stops)."""
        for name in list(self._links):
            self._stop_link(name)
        for link, _ in self._relays.values():
            if link.task is not None:
                link.task.cancel()
        self._relays.clear()

    def _stop_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is not None and link.task is not None:
            link.task.cancel()

    async def stale(self, record: AppRecord, why: str) -> None:
        """The home refused this copy: a newer one runs elsewhere."""
        if self.on_stale is not None and not record.moving:
            await self.on_stale(record, why)

    # -- the home's end of a link

    async def serve_link(self, requests: AsyncIterator[pb.LinkUp], caller: PairedPeer) -> AsyncIterator[pb.LinkDown]:
        """Carry the I/O of an app that runs on ``caller`` while its epoch is current."""
        first = await anext(aiter(requests))
        grant = self._grants.get(first.app)
        if grant is not None and grant["device"] == caller.device_id:
            home = self._granted.get(first.app) or AppHome(first.app, grant["cwd"], _new_session())
            self._granted[first.app] = home

            def current() -> bool:
                return self._granted.get(first.app) is home

        else:
            assert self.fence is not None
            record = self.fence(first.app, first.epoch, caller)
            home = self.home(record)

            def current() -> bool:
                return record.epoch == first.epoch and self._homes.get(record.name) is home

        down: asyncio.Queue[pb.IoFrame | None] = asyncio.Queue()
        superseded = False

        def push(kind: _wire.Kind, payload: bytes) -> None:
            down.put_nowait(pb.IoFrame(kind=kind, payload=payload))

        def close() -> None:
            nonlocal superseded
            superseded = True
            down.put_nowait(None)

        home.close_files()  # files a copy before this one opened: this one reopens its own
        home.attach(push, (first.cursor_session, first.cursor_seq) if first.resumed else None, close)

        async def read() -> None:
            try:
                message = first
                while True:
                    if not current():
                        break
                    for frame in message.frames:
                        home.receive(frame.kind, frame.payload, push)
                    message = await anext(requests)
            except (StopAsyncIteration, _wire.FrameError, ValueError) as exc:
                if isinstance(exc, _wire.FrameError | ValueError):
                    log.warning("home link of %s from %s: %s", record.name, caller.name, exc)
            finally:
                down.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await down.get()) is not None:
                batch, size = [item], len(item.payload)
                while not down.empty() and size < LINK_BATCH:
                    following = down.get_nowait()
                    if following is None:
                        down.put_nowait(None)
                        break
                    batch.append(following)
                    size += len(following.payload)
                yield pb.LinkDown(frames=batch)
        finally:
            reader.cancel()
            home.detach(push)
        if superseded or not current():
            raise StaleCopyError(f"epoch {first.epoch} of {first.app!r} is stale (a newer copy runs); stop it")


def _new_session() -> str:
    """A numbering of events of its own: for each home side of an app (a daemon restart or a close starts anew,
    and a copy's cursor from the old numbering must not skip the new events)."""
    return uuid.uuid4().hex[:16]


def _accepted(event: Event) -> str:
    """The connection an accept event introduces ("" for any other event)."""
    header, _ = _wire.Frame(_wire.Kind.EVENT, event.payload).io()
    return str(header.get("conn", "")) if header.get("type") == "accept" else ""


def _load_grants(path: Path) -> dict[str, dict[str, str]]:
    try:
        grants = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return {str(app): {"device": str(g["device"]), "cwd": str(g["cwd"])} for app, g in dict(grants).items()}


def _save_grants(path: Path, grants: dict[str, dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write(json.dumps(grants).encode())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
