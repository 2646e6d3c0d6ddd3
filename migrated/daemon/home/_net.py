"""The home side of an app's network: the real listening and connected sockets, which never move.

Wherever the app runs, its ``migrated.net`` calls end here, in the daemon of its home host. Every socket event
becomes an event of the app's ordered queue through ``emit``: ``accept`` {"conn", "peer", "listener"},
``data`` {"conn"} with the bytes, ``close`` {"conn", "reason"}. Each connection the app was told of ends with
exactly one ``close`` event, whoever ended it (the peer, a loss, the app itself, a resume that finds it gone).

Connections and listeners are named by ids with a random prefix per ``NetHome``, so an id in an old checkpoint
never names a socket of a later daemon.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import secrets
import socket
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["NetHome"]

log = logging.getLogger("migrated.home")

Emit = Callable[[str, dict[str, Any], bytes], None]

ACCEPT_BATCH = 64  # connections taken per wake-up of a listener
ACCEPT_RETRY = 1.0  # seconds a listener rests after the host ran out of file descriptors
CLOSE_GRACE = 2.0  # seconds close_all lets connections flush what the app sent before cutting them
BACKLOG = 128

_ADDRESS_ERRORS = {
    errno.EADDRINUSE: "port {port} is already in use on the home host",
    errno.EACCES: "permission denied for port {port} on the home host (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "the home host has no address {host}",
}


class NetHome:
    """The sockets of one app on its home host, and the events they produce."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._prefix = secrets.token_hex(6)
        self._counter = 0
        self._listeners: dict[str, _Listener] = {}
        self._streams: dict[str, _Stream] = {}
        self._starting: set[asyncio.Task[Any]] = set()
        self._paused = False
        self._drained = asyncio.Event()  # set whenever a slow peer took what waited for it, or went away

    # -- calls from the app

    async def handle(self, op: str, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        """Carry out a call: ``net.listen``, ``net.unlisten``, ``net.connect``; an ``OSError`` says why not."""
        if op == "net.listen":
            listener = self._listen(_port(args.get("port")), str(args.get("host", "")))
            return {"listener": listener.id, "port": listener.port, "host": listener.host}, b""
        if op == "net.unlisten":
            self._unlisten(str(args.get("listener", "")))
            return {}, b""
        if op == "net.connect":
            stream = await self._connect(str(args.get("host", "")), _port(args.get("port")), _timeout(args))
            return {"conn": stream.id, "peer": stream.peer}, b""
        raise OSError(errno.ENOSYS, f"the home does not know the network call {op!r}")

    def apply(self, op: str, args: dict[str, Any], data: bytes) -> None:
        """Carry out output, in the order it comes: ``net.send`` or ``net.close`` of a connection. A connection
        that has ended already is skipped: its ``close`` event was emitted."""
        stream = self._streams.get(str(args.get("conn", "")))
        if op == "net.send":
            if stream is not None:
                stream.write(data)
        elif op == "net.close":
            if stream is not None:
                self._end(stream, "closed by the app")
        else:
            raise ValueError(f"unknown network output {op!r}")

    # -- the app's copy changed

    async def resume(
        self, listeners: list[dict[str, Any]], conns: list[str], pending: Collection[str] = ()
    ) -> dict[str, Any]:
        """Take up what a copy of the app holds after a start or a thaw. Listeners not open here are opened
        again on their port; held conns unknown here get a ``close`` event (their socket is gone); conns open
        here that the copy does not hold are closed, except those named in ``pending`` (events still queued
        for the copy name them: it will learn of them).

        Returns {"reopened": [ids], "failed": [{"listener", "port", "host", "error"}], "closed": [conn ids]}.
        """
        wanted = {str(item.get("id", "")): item for item in listeners if isinstance(item, dict)}
        for listener_id in [known for known in self._listeners if known not in wanted]:
            self._unlisten(listener_id)
        reopened, failed = [], []
        for listener_id, item in wanted.items():
            if listener_id in self._listeners:
                continue
            port, host = item.get("port"), str(item.get("host", ""))
            try:
                self._listen(_port(port), host, listener_id)
            except OSError as exc:
                failed.append({"listener": listener_id, "port": port, "host": host, "error": exc.strerror})
            else:
                reopened.append(listener_id)
        held = {str(conn) for conn in conns}
        closed = []
        for conn_id in sorted(held - self._streams.keys()):
            self._emit("close", {"conn": conn_id, "reason": "the connection is gone from the home host"}, b"")
            closed.append(conn_id)
        for stream in [s for s in self._streams.values() if s.id not in held and s.id not in pending]:
            self._end(stream, "the app no longer holds the connection")
            closed.append(stream.id)
        return {"reopened": reopened, "failed": failed, "closed": closed}

    def pause(self) -> None:
        """Stop reading every socket (too many events wait for the app): bytes and connections wait in the
        kernel."""
        if self._paused:
            return
        self._paused = True
        for listener in self._listeners.values():
            listener.stop_watching()
        for stream in self._streams.values():
            stream.pause()

    def unpause(self) -> None:
        """Read every socket again."""
        if not self._paused:
            return
        self._paused = False
        for listener in self._listeners.values():
            listener.watch()
        for stream in self._streams.values():
            stream.unpause()

    @property
    def paused(self) -> bool:
        """Whether reading is stopped."""
        return self._paused

    def buffered(self) -> int:
        """Bytes the app sent that wait in this daemon for slow peers."""
        return sum(stream.buffered() for stream in self._streams.values())

    async def wait_buffered(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes of the app's output wait here for slow peers."""
        while self.buffered() > limit:
            self._drained.clear()
            await self._drained.wait()

    async def close_all(self) -> None:
        """The app ended: close every listener and connection (output already sent is flushed for a while)."""
        for listener_id in list(self._listeners):
            self._unlisten(listener_id)
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.close()
        if self._starting:
            await asyncio.wait(self._starting, timeout=CLOSE_GRACE)
        lost = [stream.lost for stream in streams if not stream.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=CLOSE_GRACE)
        for stream in streams:
            stream.abort()

    # -- listeners

    def _new_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}{self._prefix}-{self._counter}"

    def _listen(self, port: int, host: str, listener_id: str = "") -> _Listener:
        sock = _bind(host, port)
        listener = _Listener(listener_id or self._new_id("l"), sock, host, self._accept)
        self._listeners[listener.id] = listener
        if not self._paused:
            listener.watch()
        return listener

    def _unlisten(self, listener_id: str) -> None:
        listener = self._listeners.pop(listener_id, None)
        if listener is not None:
            listener.close()

    def _accept(self, listener: _Listener) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, most likely: let the backlog wait
                log.warning("accepting on port %d failed: %s", listener.port, exc)
                listener.rest(ACCEPT_RETRY, lambda: not self._paused)
                return
            sock.setblocking(False)
            stream = self._add_stream(_peer(address))
            self._emit("accept", {"conn": stream.id, "peer": stream.peer, "listener": listener.id}, b"")
            task = loop.create_task(loop.connect_accepted_socket(functools.partial(_same, stream), sock))
            self._starting.add(task)
            task.add_done_callback(functools.partial(self._started, stream, sock))

    def _started(self, stream: _Stream, sock: socket.socket, task: asyncio.Task[Any]) -> None:
        self._starting.discard(task)
        failure = None if task.cancelled() else task.exception()
        if task.cancelled() or failure is not None:
            sock.close()
            stream.connection_lost(failure if isinstance(failure, Exception) else None)

    # -- connections

    def _add_stream(self, peer: str) -> _Stream:
        stream = _Stream(self._new_id("c"), peer, self._lost, self._emit, self._drained.set)
        if self._paused:
            stream.pause()
        self._streams[stream.id] = stream
        return stream

    async def _connect(self, host: str, port: int, within: float) -> _Stream:
        loop = asyncio.get_running_loop()
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        try:
            async with asyncio.timeout(within):
                addresses = await _resolve(host, port)
                sock, address = await _dial(addresses, where)
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"connecting to {where} timed out after {within:g} s") from None
        stream = self._add_stream(_peer(address))
        try:
            await loop.connect_accepted_socket(lambda: stream, sock)
        except BaseException:
            self._streams.pop(stream.id, None)
            sock.close()
            raise
        return stream

    def _end(self, stream: _Stream, reason: str) -> None:
        """The app closed ``stream`` (or no longer holds it): its last event, then flush and close."""
        if self._streams.pop(stream.id, None) is not None:
            self._emit("close", {"conn": stream.id, "reason": reason}, b"")
        stream.close()

    def _lost(self, stream: _Stream, reason: str) -> None:
        """The peer ended ``stream``, or it failed."""
        if self._streams.pop(stream.id, None) is not None:
            self._emit("close", {"conn": stream.id, "reason": reason}, b"")


class _Listener:
    """One listening socket, read by the event loop while it is watched."""

    def __init__(self, listener_id: str, sock: socket.socket, host: str, accept: Callable[[_Listener], None]) -> None:
        self.id = listener_id
        self.sock = sock
        self.host = host
        self.port: int = sock.getsockname()[1]
        self._accept = accept
        self._watching = False
        self._rest: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        if not self._watching and self.sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.sock, self._accept, self)
            self._watching = True

    def stop_watching(self) -> None:
        if self._watching:
            asyncio.get_running_loop().remove_reader(self.sock)
            self._watching = False
        if self._rest is not None:
            self._rest.cancel()
            self._rest = None

    def rest(self, delay: float, still_wanted: Callable[[], bool]) -> None:
        """Stop accepting for ``delay`` seconds."""
        self.stop_watching()

        def again() -> None:
            self._rest = None
            if still_wanted():
                self.watch()

        self._rest = asyncio.get_running_loop().call_later(delay, again)

    def close(self) -> None:
        self.stop_watching()
        self.sock.close()


class _Stream(asyncio.Protocol):
    """One connection: its bytes become ``data`` events; the app's output is written in order."""

    def __init__(
        self,
        conn_id: str,
        peer: str,
        lost: Callable[[_Stream, str], None],
        emit: Emit,
        drained: Callable[[], None] = lambda: None,
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self._lost = lost
        self._emit = emit
        self._drained = drained
        self.transport: asyncio.Transport | None = None
        self._early: list[bytes] = []  # output that came before the transport
        self._closing = False
        self._paused = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._paused:
            transport.pause_reading()
        for data in self._early:
            transport.write(data)
        self._early.clear()
        if self._closing:
            transport.close()
        self._drained()  # what waited here is the transport's now: it may all be gone, with no resume_writing

    def data_received(self, data: bytes) -> None:
        if not self._closing:
            self._emit("data", {"conn": self.id}, data)

    def eof_received(self) -> bool:
        return False  # half-closed connections are not part of the app's model: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "closed by the peer" if exc is None else f"the connection was lost: {exc}"
        self._lost(self, reason)
        if not self.lost.done():
            self.lost.set_result(None)
        self._drained()

    def resume_writing(self) -> None:
        self._drained()

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if self.transport is None:
            self._early.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def pause(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def unpause(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def buffered(self) -> int:
        if self.transport is None:
            return sum(len(data) for data in self._early)
        return self.transport.get_write_buffer_size()

    def close(self) -> None:
        """Close once what was written has gone out."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()


# -- sockets


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise OSError(errno.EINVAL, f"a port is a number from 0 to 65535, not {value!r}")
    return value


def _timeout(args: dict[str, Any]) -> float:
    try:
        timeout = float(args.get("timeout", 10.0))
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise OSError(errno.EINVAL, f"a connect timeout is a positive number of seconds, not {args.get('timeout')!r}")
    return timeout


@functools.cache
def _dual_stack() -> bool:
    return socket.has_dualstack_ipv6()


def _bind(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host:port``; "" is every address, IPv4 and IPv6 when the host has
    both."""
    try:
        if host in ("", "::") and _dual_stack():
            sock = socket.create_server(("::", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host or "0.0.0.0", port), family=family, backlog=BACKLOG)
    except OSError as exc:
        template = _ADDRESS_ERRORS.get(exc.errno or 0, "cannot listen on {where}: {error}")
        where = f"{host or '*'}:{port}"
        message = template.format(port=port, host=host, where=where, error=exc.strerror or exc)
        raise OSError(exc.errno or errno.EIO, message) from None
    sock.setblocking(False)
    return sock


async def _resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """The addresses of ``host``, each with its family."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(errno.EHOSTUNREACH, f"cannot find the host {host!r}: {exc.strerror}") from None
    return [(family, address) for family, _, _, _, address in infos]


async def _dial(addresses: list[tuple[int, Any]], where: str) -> tuple[socket.socket, Any]:
    """A connected non-blocking socket to the first address that answers; the first failure otherwise."""
    loop = asyncio.get_running_loop()
    first: OSError | None = None
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            first = first or exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock, address
    if first is None:
        raise OSError(errno.EHOSTUNREACH, f"cannot connect to {where}: the host has no address")
    if first.errno == errno.ECONNREFUSED:
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection to {where} was refused") from None
    raise OSError(first.errno or errno.EIO, f"cannot connect to {where}: {first.strerror or first}") from None


def _same(stream: _Stream) -> _Stream:
    return stream


def _peer(address: Any) -> str:
    """'ip:port' (IPv6: '[ip]:port'; IPv4 seen through a dual-stack socket as plain IPv4)."""
    host, port = str(address[0]), int(address[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
