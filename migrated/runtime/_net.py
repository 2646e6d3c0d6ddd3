"""The app's side of home networking: the connections and listeners it holds, and the delivery of their events.

The sockets live in the daemon of the app's home host and never move; the app holds ``Conn`` and ``Listener``
objects that name them by id. This module keeps the registry of those objects, so that a checkpoint restored in
this process hands back the very objects events are delivered with, and a thaw elsewhere rebuilds them here.
Calls go through the runner's line to its home (``_home``): ``net.listen``, ``net.unlisten`` and
``net.connect`` are calls; ``net.send`` and ``net.close`` are numbered output the home acknowledges.

The home ends every connection it announced with one ``close`` event, whoever ended it; the app's
``on_close`` runs only when the app had not closed it itself.
"""

from __future__ import annotations

import errno as _errno

from migrated.runtime import _home

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from typing import Any, Protocol

    class _Handlers(Protocol):
        """The app's network handlers (``App`` has them; this module needs no more of it)."""

        def on_accept(self, conn: Conn) -> None: ...
        def on_data(self, conn: Conn, data: bytes) -> None: ...
        def on_close(self, conn: Conn) -> None: ...


__all__ = [
    "Conn",
    "Listener",
    "connect",
    "dispatch",
    "held",
    "listen",
    "rebuild_conn",
    "rebuild_listener",
    "resume_state",
    "resumed",
]

# The objects the app may still get events for: open ones, and closed conns until their close event arrives.
_conns: dict[str, Conn] = {}
_listeners: dict[str, Listener] = {}


class Conn:
    """A TCP connection whose socket stays on the app's home host; it survives moves of the app."""

    __slots__ = ("_closed", "id", "peer")

    def __init__(self, id: str, peer: str, closed: bool = False) -> None:
        self.id = id  # the home's name for the socket
        self.peer = peer  # the other end, "ip:port"
        self._closed = closed

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (closed by the app, by the peer, or lost)."""
        return self._closed

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes to the peer, in order; raises ``BrokenPipeError`` once the connection is closed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, not {type(data).__name__}; encode text first")
        if self._closed:
            raise BrokenPipeError(_errno.EPIPE, f"cannot send to {self.peer or self.id}: the connection is closed")
        if data:
            _home.current().send_out("net.send", {"conn": self.id}, bytes(data))

    def close(self) -> None:
        """Close the connection once the bytes sent so far have gone out; closing twice does nothing."""
        if not self._closed:
            self._closed = True
            _home.current().send_out("net.close", {"conn": self.id})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Conn) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("conn", self.id))

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Conn {self.id} peer={self.peer}{state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_conn, (self.id, self.peer, self._closed))


class Listener:
    """A listening TCP port on the app's home host; each connection to it reaches the app as ``on_accept``."""

    __slots__ = ("_closed", "host", "id", "port")

    def __init__(self, id: str, port: int, host: str, closed: bool = False) -> None:
        self.id = id  # the home's name for the socket
        self.port = port  # the port it listens on (the one picked, when 0 was asked for)
        self.host = host  # the address it listens on; "" for every address
        self._closed = closed

    @property
    def closed(self) -> bool:
        """Whether the listener was closed (by the app, or because its port could not be reopened)."""
        return self._closed

    def close(self) -> None:
        """Stop listening; connections accepted already stay open. Closing twice does nothing."""
        if not self._closed:
            self._closed = True
            _listeners.pop(self.id, None)
            _home.current().call("net.unlisten", {"listener": self.id})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Listener) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("listener", self.id))

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Listener {self.id} {self.host or '*'}:{self.port}{state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_listener, (self.id, self.port, self.host, self._closed))


def listen(port: int, host: str = "") -> Listener:
    """Listen on ``port`` of the home host (0 picks a free port; ``Listener.port`` says which)."""
    port = _port(port)
    header, _ = _home.current().call("net.listen", {"port": port, "host": str(host)})
    return rebuild_listener(str(header["listener"]), int(header["port"]), str(header.get("host", host)))


def connect(host: str, port: int, timeout: float = 10.0) -> Conn:
    """Open a connection to ``host:port`` from the home host; its bytes arrive as ``on_data``."""
    port = _port(port)
    header, _ = _home.current().call("net.connect", {"host": str(host), "port": port, "timeout": float(timeout)})
    return rebuild_conn(str(header["conn"]), str(header.get("peer", "")))


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"a port is a number from 0 to 65535, not {port!r}")
    return port


# -- rebuilding: a checkpoint names these functions, so they keep their module and names


def rebuild_conn(id: str, peer: str, closed: bool = False) -> Conn:
    """The one ``Conn`` of this process for ``id`` (unpickling, events and ``connect`` all come here)."""
    conn = _conns.get(id)
    if conn is None:
        conn = _conns[id] = Conn(id, peer, closed)
    return conn


def rebuild_listener(id: str, port: int, host: str, closed: bool = False) -> Listener:
    """The one ``Listener`` of this process for ``id``."""
    listener = _listeners.get(id)
    if listener is None:
        listener = Listener(id, port, host, closed)
        if not closed:
            _listeners[id] = listener
    return listener


# -- what the runner calls


def dispatch(app: _Handlers, header: dict[str, Any], data: bytes) -> None:
    """Deliver one network event ("accept", "data" or "close") to the app's handler."""
    kind, conn_id = header.get("type"), str(header.get("conn", ""))
    if kind == "accept":
        app.on_accept(rebuild_conn(conn_id, str(header.get("peer", ""))))
    elif kind == "data":
        conn = rebuild_conn(conn_id, str(header.get("peer", "")))
        if not conn.closed:  # bytes that were on their way when the app closed it
            app.on_data(conn, data)
    elif kind == "close":
        closed = _conns.pop(conn_id, None)  # the last event of a conn
        if closed is not None and not closed.closed:
            closed._closed = True
            app.on_close(closed)


def resume_state() -> dict[str, Any]:
    """What the app holds, for ``home.resume`` after a start or a thaw: its open listeners and conns."""
    listeners = [listener for listener in _listeners.values() if not listener.closed]
    return {
        "listeners": [{"id": item.id, "port": item.port, "host": item.host} for item in listeners],
        "conns": [conn.id for conn in _conns.values() if not conn.closed],
    }


def held() -> list[Conn | Listener]:
    """Every object the app may still get events for, whether the app keeps it or not: a checkpoint saves
    them with the app (in the same pickle stream, so the app's own references stay the same objects)."""
    return [*_listeners.values(), *_conns.values()]


def resumed(answer: dict[str, Any]) -> list[str]:
    """Take the home's answer to a resume: close the listeners it could not reopen; one sentence for each."""
    messages = []
    for failure in answer.get("failed", []):
        listener = _listeners.pop(str(failure.get("listener", "")), None)
        if listener is not None:
            listener._closed = True
        messages.append(str(failure.get("error", f"port {failure.get('port')} could not be reopened")))
    return messages


def _forget() -> None:
    """Drop every registered object (tests: a fresh process)."""
    _conns.clear()
    _listeners.clear()
