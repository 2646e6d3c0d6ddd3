"""The app's side of home networking (``migrated.net``), with a stand-in for the runner's line to its home:
calls and output go to it, events come back through ``dispatch``, and Conn and Listener objects survive a
checkpoint as the same objects."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import migrated
import migrated.net
from migrated import checkpoint
from migrated.runtime import _home, _net
from migrated.runtime._net import dispatch, resume_state, resumed


class FakeHome:
    """Answers calls like a home would and records the output the app hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.out: list[tuple[str, dict[str, Any], bytes]] = []
        self.refuse: OSError | None = None
        self.counter = 0

    def call(self, op: str, args: dict[str, Any] | None = None, data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        self.calls.append((op, dict(args or {})))
        if self.refuse is not None:
            raise self.refuse
        self.counter += 1
        if op == "net.listen":
            port = args["port"] if args and args["port"] else 40000 + self.counter
            return {"listener": f"lhome-{self.counter}", "port": port, "host": args["host"] if args else ""}, b""
        if op == "net.connect":
            assert args is not None
            return {"conn": f"chome-{self.counter}", "peer": f"{args['host']}:{args['port']}"}, b""
        return {}, b""

    def send_out(self, op: str, args: dict[str, Any], data: bytes = b"") -> None:
        self.out.append((op, dict(args), data))


class Chat(migrated.App):
    """Records the network events it gets."""

    def start(self) -> None:
        self.seen: list[tuple[str, Any, bytes]] = []
        self.conns: set[migrated.net.Conn] = set()

    def on_accept(self, conn: migrated.net.Conn) -> None:
        self.seen.append(("accept", conn, b""))
        self.conns.add(conn)

    def on_data(self, conn: migrated.net.Conn, data: bytes) -> None:
        self.seen.append(("data", conn, data))

    def on_close(self, conn: migrated.net.Conn) -> None:
        self.seen.append(("close", conn, b""))
        self.conns.discard(conn)


@pytest.fixture
def home() -> Iterator[FakeHome]:
    fake = FakeHome()
    _net._forget()
    _home.set_current(fake)  # type: ignore[arg-type]
    yield fake
    _home.set_current(None)
    _net._forget()


def chat() -> Chat:
    app = Chat()
    app.start()
    return app


def event(kind: str, conn: str, data: bytes = b"", **header: Any) -> tuple[dict[str, Any], bytes]:
    return {"session": "s", "seq": 1, "type": kind, "conn": conn, **header}, data


def accept(app: Chat, conn: str = "cx-1", peer: str = "10.0.0.5:5000") -> migrated.net.Conn:
    dispatch(app, *event("accept", conn, peer=peer, listener="lx-1"))
    return app.seen[-1][1]  # type: ignore[no-any-return]


def test_listen_opens_a_port_at_home(home: FakeHome) -> None:
    listener = migrated.net.listen(0)
    assert home.calls == [("net.listen", {"port": 0, "host": ""})]
    assert listener.port == 40001 and listener.host == "" and not listener.closed
    assert resume_state()["listeners"] == [{"id": listener.id, "port": 40001, "host": ""}]


def test_listen_refuses_a_port_out_of_range(home: FakeHome) -> None:
    with pytest.raises(ValueError, match="a port is a number from 0 to 65535, not 70000"):
        migrated.net.listen(70000)
    assert home.calls == []


def test_errors_of_the_home_reach_the_app_as_they_are(home: FakeHome) -> None:
    home.refuse = ConnectionRefusedError(111, "connection to 10.0.0.9:80 was refused")
    with pytest.raises(ConnectionRefusedError, match=re.escape("connection to 10.0.0.9:80 was refused")):
        migrated.net.connect("10.0.0.9", 80)


def test_closing_a_listener_stops_it_at_home_once(home: FakeHome) -> None:
    listener = migrated.net.listen(8080, "127.0.0.1")
    listener.close()
    listener.close()
    assert home.calls[1:] == [("net.unlisten", {"listener": listener.id})]
    assert listener.closed
    assert resume_state()["listeners"] == []


def test_connect_dials_from_home_and_gives_a_conn(home: FakeHome) -> None:
    conn = migrated.net.connect("example.org", 443, timeout=3)
    assert home.calls == [("net.connect", {"host": "example.org", "port": 443, "timeout": 3.0})]
    assert conn.peer == "example.org:443" and not conn.closed
    assert resume_state()["conns"] == [conn.id]


def test_send_and_close_are_output_for_the_home(home: FakeHome) -> None:
    conn = migrated.net.connect("example.org", 443)
    conn.send(b"GET /")
    conn.send(bytearray(b" HTTP/1.0"))
    conn.send(b"")  # nothing to send
    conn.close()
    conn.close()
    assert home.out == [
        ("net.send", {"conn": conn.id}, b"GET /"),
        ("net.send", {"conn": conn.id}, b" HTTP/1.0"),
        ("net.close", {"conn": conn.id}, b""),
    ]
    assert conn.closed
    assert resume_state()["conns"] == []


def test_sending_on_a_closed_conn_is_a_clear_oserror(home: FakeHome) -> None:
    conn = migrated.net.connect("example.org", 443)
    conn.close()
    with pytest.raises(BrokenPipeError, match=re.escape("cannot send to example.org:443: the connection is closed")):
        conn.send(b"late")


def test_sending_text_says_to_encode_it(home: FakeHome) -> None:
    conn = migrated.net.connect("example.org", 443)
    with pytest.raises(TypeError, match="send\\(\\) takes bytes, not str; encode text first"):
        conn.send("text")  # type: ignore[arg-type]


def test_events_reach_the_handlers_with_one_conn_object(home: FakeHome) -> None:
    app = chat()
    conn = accept(app)
    assert conn.peer == "10.0.0.5:5000" and conn.id == "cx-1"
    dispatch(app, *event("data", "cx-1", b"hello"))
    dispatch(app, *event("data", "cx-1", b" world"))
    dispatch(app, *event("close", "cx-1", reason="closed by the peer"))
    assert [(kind, data) for kind, _, data in app.seen] == [
        ("accept", b""),
        ("data", b"hello"),
        ("data", b" world"),
        ("close", b""),
    ]
    assert all(seen is conn for _, seen, _ in app.seen)
    assert conn.closed and app.conns == set()
    with pytest.raises(BrokenPipeError):
        conn.send(b"x")
    assert resume_state() == {"listeners": [], "conns": []}


def test_a_conn_the_app_closed_gets_no_more_data_and_no_on_close(home: FakeHome) -> None:
    app = chat()
    conn = accept(app)
    conn.close()
    dispatch(app, *event("data", "cx-1", b"on its way"))
    dispatch(app, *event("close", "cx-1", reason="closed by the app"))
    dispatch(app, *event("close", "cx-1", reason="the connection is gone from the home host"))
    assert [kind for kind, _, _ in app.seen] == ["accept"]
    assert "cx-1" not in _net._conns  # the close event was its last: forgotten


def test_conns_are_equal_by_id(home: FakeHome) -> None:
    one = _net.Conn("c-1", "1.2.3.4:5")
    assert one == _net.Conn("c-1", "")
    assert one != _net.Conn("c-2", "1.2.3.4:5")
    assert len({one, _net.Conn("c-1", "")}) == 1
    assert _net.Listener("l-1", 80, "") == _net.Listener("l-1", 80, "")


def test_pickled_conns_and_listeners_come_back_as_the_same_objects(home: FakeHome) -> None:
    app = chat()
    conn = accept(app)
    listener = migrated.net.listen(7000)
    conn_back, listener_back = pickle.loads(pickle.dumps((conn, listener)))
    assert conn_back is conn and listener_back is listener


def test_in_a_fresh_process_they_are_rebuilt_and_events_use_them(home: FakeHome) -> None:
    app = chat()
    conn = accept(app)
    listener = migrated.net.listen(7000)
    saved = pickle.dumps((conn, listener))
    _net._forget()  # as in a runner that thaws the app

    conn_back, listener_back = pickle.loads(saved)
    assert (conn_back.id, conn_back.peer, conn_back.closed) == (conn.id, "10.0.0.5:5000", False)
    assert (listener_back.id, listener_back.port, listener_back.host) == (listener.id, 7000, "")
    assert resume_state() == {"listeners": [{"id": listener.id, "port": 7000, "host": ""}], "conns": [conn.id]}
    dispatch(app, *event("data", conn.id, b"after the move"))
    assert app.seen[-1][1] is conn_back


def test_a_checkpoint_of_an_app_keeps_its_conns_open(home: FakeHome) -> None:
    app = chat()
    conn = accept(app)
    conn.send(b"welcome")
    app.listener = migrated.net.listen(7000)  # type: ignore[attr-defined]
    closed = accept(app, "cx-2", "10.0.0.6:6000")
    closed.close()
    snapshot = checkpoint.capture(app, "chat")
    _net._forget()

    restored = checkpoint.restore(snapshot)
    assert isinstance(restored, Chat)
    [back] = [c for c in restored.conns if c.id == conn.id]
    assert back.peer == conn.peer and not back.closed
    assert restored.listener.port == 7000  # type: ignore[attr-defined]
    assert resume_state() == {"listeners": [{"id": app.listener.id, "port": 7000, "host": ""}], "conns": [conn.id]}  # type: ignore[attr-defined]
    dispatch(restored, *event("data", conn.id, b"hi"))
    assert restored.seen[-1] == ("data", back, b"hi") and restored.seen[-1][1] is back
    dispatch(restored, *event("data", "cx-2", b"for the closed one"))
    assert restored.seen[-1][2] == b"hi"


def test_resumed_closes_the_listeners_the_home_could_not_reopen(home: FakeHome) -> None:
    kept = migrated.net.listen(7000)
    lost = migrated.net.listen(8000)
    error = "port 8000 is already in use on the home host"
    answer = {"reopened": [], "failed": [{"listener": lost.id, "port": 8000, "host": "", "error": error}]}
    assert resumed(answer) == [error]
    assert lost.closed and not kept.closed
    assert resume_state()["listeners"] == [{"id": kept.id, "port": 7000, "host": ""}]


def test_outside_an_app_net_calls_say_so() -> None:
    _home.set_current(None)
    with pytest.raises(migrated.errors.UsageError, match="only inside an app run by migrated"):
        migrated.net.listen(0)


def test_import_migrated_net_stays_light() -> None:
    code = "import sys, migrated.net; print(' '.join(sys.modules))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not loaded & {"grpc", "asyncio", "dill", "migrated.daemon"}
    assert set(migrated.net.__all__) == {"Conn", "Listener", "connect", "listen"}
