"""The home side of an app's network, with real sockets on 127.0.0.1: every socket event becomes an event of the
app's queue (here a list), and the app's output reaches the peers in order."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from migrated.daemon.home._net import NetHome
from tests.helpers import WAIT_BOUND, Recorder

LOCAL = "127.0.0.1"


class Queue(Recorder):
    """Stands for the app's event queue: what ``emit`` appended, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict[str, Any], bytes]] = []

    def __call__(self, kind: str, header: dict[str, Any], data: bytes) -> None:
        self.events.append((kind, dict(header), bytes(data)))
        self.changed.set()

    def of(self, kind: str, conn: str | None = None) -> list[tuple[dict[str, Any], bytes]]:
        return [(h, d) for k, h, d in self.events if k == kind and (conn is None or h.get("conn") == conn)]

    def received(self, conn: str) -> bytes:
        return b"".join(data for _, data in self.of("data", conn))


def run(test: Callable[[NetHome, Queue], Awaitable[None]]) -> None:
    """Run ``test`` with a fresh home and queue on a new event loop; close the home's sockets after."""

    async def main() -> None:
        queue = Queue()
        home = NetHome(queue)
        try:
            await test(home, queue)
        finally:
            await home.close_all()

    asyncio.run(main())


async def listen(home: NetHome, host: str = LOCAL, port: int = 0) -> dict[str, Any]:
    answer, _ = await home.handle("net.listen", {"port": port, "host": host}, b"")
    return answer


async def accepted(home: NetHome, queue: Queue, port: int) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connected to ``port``, and the conn id the home announced for it."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    await queue.until(lambda: queue.of("accept"), "no accept event")
    header, _ = queue.of("accept")[-1]
    return str(header["conn"]), reader, writer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_client_that_connects_is_announced_with_its_address() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        answer = await listen(home)
        assert answer["port"] > 0 and answer["host"] == LOCAL
        _, writer = await asyncio.open_connection(LOCAL, answer["port"])
        await queue.until(lambda: queue.of("accept"), "no accept event")
        [(header, data)] = queue.of("accept")
        client_ip, client_port = writer.get_extra_info("sockname")[:2]
        assert header["peer"] == f"{client_ip}:{client_port}"
        assert header["listener"] == answer["listener"]
        assert header["conn"] and data == b""
        writer.close()

    run(test)


def test_listening_on_every_address_reports_ipv4_peers_plainly() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        answer = await listen(home, host="")
        _, _, writer = await accepted(home, queue, answer["port"])
        [(header, _)] = queue.of("accept")
        assert header["peer"] == f"{LOCAL}:{writer.get_extra_info('sockname')[1]}"
        writer.close()

    run(test)


def test_bytes_from_the_peer_arrive_in_order() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        conn, _, writer = await accepted(home, queue, (await listen(home))["port"])
        sent = b"".join(b"%06d," % n for n in range(20000))
        for start in range(0, len(sent), 7000):
            writer.write(sent[start : start + 7000])
            await writer.drain()
        await queue.until(lambda: len(queue.received(conn)) >= len(sent), "not every byte arrived")
        assert queue.received(conn) == sent
        assert all(not header.keys() - {"conn"} for header, _ in queue.of("data"))
        writer.close()

    run(test)


def test_what_the_app_sends_reaches_the_peer_in_order() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        conn, reader, writer = await accepted(home, queue, (await listen(home))["port"])
        parts = [b"first ", b"second ", b"x" * 300_000, b" last"]
        for number, part in enumerate(parts, 1):
            home.apply("net.send", {"out": number, "op": "net.send", "conn": conn}, part)
        got = await asyncio.wait_for(reader.readexactly(sum(map(len, parts))), WAIT_BOUND)
        assert got == b"".join(parts)
        writer.close()

    run(test)


def test_a_peer_that_closes_ends_the_conn_with_one_close_event() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        conn, _, writer = await accepted(home, queue, (await listen(home))["port"])
        writer.write(b"bye")
        writer.close()
        await queue.until(lambda: queue.of("close", conn), "no close event")
        assert queue.received(conn) == b"bye"
        assert [kind for kind, header, _ in queue.events if header.get("conn") == conn][-1] == "close"
        [(header, _)] = queue.of("close", conn)
        assert header["reason"] == "closed by the peer"
        home.apply("net.send", {"conn": conn}, b"too late")  # gone already: skipped, no error
        home.apply("net.close", {"conn": conn}, b"")
        await asyncio.sleep(0.05)
        assert len(queue.of("close", conn)) == 1

    run(test)


def test_the_app_closing_flushes_its_output_then_closes() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        conn, reader, writer = await accepted(home, queue, (await listen(home))["port"])
        home.apply("net.send", {"conn": conn}, b"goodbye")
        home.apply("net.close", {"conn": conn}, b"")
        assert await asyncio.wait_for(reader.read(), WAIT_BOUND) == b"goodbye"  # then end of stream
        [(header, _)] = queue.of("close", conn)
        assert header["reason"] == "closed by the app"
        writer.write(b"ignored")
        await asyncio.sleep(0.05)
        assert queue.received(conn) == b""
        assert len(queue.of("close", conn)) == 1
        writer.close()

    run(test)


def test_connect_reaches_a_local_server_and_carries_bytes_both_ways() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def test(home: NetHome, queue: Queue) -> None:
        server = await asyncio.start_server(echo, LOCAL, 0)
        port = server.sockets[0].getsockname()[1]
        answer, _ = await home.handle("net.connect", {"host": LOCAL, "port": port, "timeout": 5.0}, b"")
        assert answer["peer"] == f"{LOCAL}:{port}"
        conn = answer["conn"]
        home.apply("net.send", {"conn": conn}, b"ping")
        await queue.until(lambda: queue.of("close", conn), "the echo server's close did not arrive")
        assert queue.received(conn) == b"ping"
        assert not queue.of("accept")  # a conn the app opened is not announced: the call answered
        server.close()
        await server.wait_closed()

    run(test)


def test_connection_refused_is_a_clear_oserror() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        port = free_port()
        with pytest.raises(ConnectionRefusedError) as caught:
            await home.handle("net.connect", {"host": LOCAL, "port": port, "timeout": 5.0}, b"")
        assert caught.value.errno == errno.ECONNREFUSED
        assert caught.value.strerror == f"connection to {LOCAL}:{port} was refused"
        assert not queue.events

    run(test)


def test_an_unknown_host_is_a_clear_oserror() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        with pytest.raises(OSError, match=re.escape("cannot find the host 'no-such-host.invalid'")):
            await home.handle("net.connect", {"host": "no-such-host.invalid", "port": 80, "timeout": 5.0}, b"")

    run(test)


def test_a_port_in_use_is_a_clear_oserror() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        port = (await listen(home))["port"]
        with pytest.raises(OSError) as caught:
            await listen(home, port=port)
        assert caught.value.errno == errno.EADDRINUSE
        assert caught.value.strerror == f"port {port} is already in use on the home host"

    run(test)


def test_bad_arguments_are_oserrors_that_say_what_is_wrong() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        with pytest.raises(OSError, match="a port is a number from 0 to 65535, not 70000"):
            await listen(home, port=70000)
        with pytest.raises(OSError, match="positive number of seconds"):
            await home.handle("net.connect", {"host": LOCAL, "port": 80, "timeout": 0}, b"")
        with pytest.raises(OSError, match=re.escape("'net.frobnicate'")):
            await home.handle("net.frobnicate", {}, b"")

    run(test)


def test_unlisten_stops_new_connections_and_keeps_accepted_ones() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        answer = await listen(home)
        conn, reader, writer = await accepted(home, queue, answer["port"])
        await home.handle("net.unlisten", {"listener": answer["listener"]}, b"")
        await home.handle("net.unlisten", {"listener": answer["listener"]}, b"")  # twice: nothing
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, answer["port"])
        home.apply("net.send", {"conn": conn}, b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), WAIT_BOUND) == b"still here"
        writer.close()

    run(test)


def test_ids_differ_between_homes() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        other = NetHome(queue)
        first = await listen(home)
        second = await listen(other)
        assert first["listener"] != second["listener"]
        assert first["listener"].split("-")[0] != second["listener"].split("-")[0]
        await other.close_all()

    run(test)


def test_resume_reopens_a_listener_and_ends_conns_it_does_not_know() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        before = await listen(home)
        conn, _, writer = await accepted(home, queue, before["port"])
        writer.close()
        await home.close_all()  # the home restarted: its sockets are gone
        queue.events.clear()

        restarted = NetHome(queue)
        held = [{"id": before["listener"], "port": before["port"], "host": LOCAL}]
        answer = await restarted.resume(held, [conn])
        assert answer["reopened"] == [before["listener"]] and answer["failed"] == []
        [(header, _)] = queue.of("close", conn)
        assert header["reason"]
        _, _, again = await accepted(restarted, queue, before["port"])
        [(header, _)] = queue.of("accept")
        assert header["listener"] == before["listener"]
        again.close()
        await restarted.close_all()

    run(test)


def test_resume_keeps_what_is_open_and_says_which_port_it_could_not_reopen() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        kept = await listen(home)
        conn, reader, writer = await accepted(home, queue, kept["port"])
        with socket.socket() as squatter:
            squatter.bind((LOCAL, 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            held = [
                {"id": kept["listener"], "port": kept["port"], "host": LOCAL},
                {"id": "lgone-1", "port": taken, "host": LOCAL},
            ]
            answer = await home.resume(held, [conn])
        assert answer["reopened"] == []
        assert answer["failed"] == [
            {
                "listener": "lgone-1",
                "port": taken,
                "host": LOCAL,
                "error": f"port {taken} is already in use on the home host",
            }
        ]
        assert not queue.of("close")
        home.apply("net.send", {"conn": conn}, b"ok")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT_BOUND) == b"ok"
        writer.close()

    run(test)


def test_resume_closes_conns_and_listeners_the_app_does_not_hold() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        answer = await listen(home)
        dropped, dropped_reader, w1 = await accepted(home, queue, answer["port"])
        queue.events.clear()
        pending, pending_reader, w2 = await accepted(home, queue, answer["port"])
        result = await home.resume([], [], pending=[pending])
        assert result["closed"] == [dropped]
        assert await asyncio.wait_for(dropped_reader.read(), WAIT_BOUND) == b""
        [(header, _)] = queue.of("close", dropped)
        assert header["reason"] == "the app no longer holds the connection"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, answer["port"])
        home.apply("net.send", {"conn": pending}, b"kept")  # its accept event is still on its way to the app
        assert await asyncio.wait_for(pending_reader.readexactly(4), WAIT_BOUND) == b"kept"
        w1.close()
        w2.close()

    run(test)


def test_pause_holds_bytes_and_connections_back_until_unpause() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        port = (await listen(home))["port"]
        conn, _, writer = await accepted(home, queue, port)
        writer.write(b"before ")
        await queue.until(lambda: queue.received(conn) == b"before ", "bytes before the pause did not arrive")
        home.pause()
        assert home.paused
        writer.write(b"during")
        await writer.drain()
        _, late = await asyncio.open_connection(LOCAL, port)  # waits in the kernel's backlog
        writer.close()  # the end of stream waits too
        await asyncio.sleep(0.3)
        assert queue.received(conn) == b"before "
        assert len(queue.of("accept")) == 1 and not queue.of("close")
        home.unpause()
        await queue.until(lambda: queue.of("close", conn) and len(queue.of("accept")) == 2, "nothing after unpause")
        assert queue.received(conn) == b"before during"
        kinds = [kind for kind, header, _ in queue.events if header.get("conn") == conn]
        assert kinds[-1] == "close"
        late.close()

    run(test)


def test_a_connection_accepted_while_paused_starts_paused() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        port = (await listen(home))["port"]
        home.pause()
        home.unpause()  # let the accept through, then pause again before reading
        conn, _, writer = await accepted(home, queue, port)
        home.pause()
        writer.write(b"held")
        await writer.drain()
        await asyncio.sleep(0.2)
        assert queue.received(conn) == b""
        home.unpause()
        await queue.until(lambda: queue.received(conn) == b"held", "held bytes not delivered")
        writer.close()

    run(test)


def test_close_all_closes_every_socket_quietly() -> None:
    async def test(home: NetHome, queue: Queue) -> None:
        port = (await listen(home))["port"]
        conn, reader, writer = await accepted(home, queue, port)
        home.apply("net.send", {"conn": conn}, b"last words")
        before = len(queue.events)
        await home.close_all()
        assert await asyncio.wait_for(reader.read(), WAIT_BOUND) == b"last words"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, port)
        assert len(queue.events) == before  # the app ended: no events for it
        writer.close()

    run(test)


def test_output_before_the_transport_is_ready_is_kept_in_order() -> None:
    async def main() -> None:
        queue = Queue()

        def emit(kind: str, header: dict[str, Any], data: bytes) -> None:
            queue(kind, header, data)
            if kind == "accept":  # output for the conn before its transport is set up
                assert home._streams[header["conn"]].transport is None
                home.apply("net.send", {"conn": header["conn"]}, b"early ")
                home.apply("net.send", {"conn": header["conn"]}, b"bird")
                home.apply("net.close", {"conn": header["conn"]}, b"")

        home = NetHome(emit)
        port = (await listen(home))["port"]
        reader, writer = await asyncio.open_connection(LOCAL, port)
        assert await asyncio.wait_for(reader.read(), WAIT_BOUND) == b"early bird"
        assert [kind for kind, _, _ in queue.events] == ["accept", "close"]
        writer.close()
        await home.close_all()

    asyncio.run(main())


class _Sink(asyncio.Transport):
    """A transport that sends whatever it is given at once (a peer that reads as fast as the app writes)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_output_sent_before_the_connection_is_up_stops_being_held_once_it_goes_out() -> None:
    """Output sent in the moment between an accept and its connection waits in the stream; when the connection
    comes up and takes it all at once (no pause, so no resume), whoever waits on it must still hear."""

    async def test(net: NetHome, events: Queue) -> None:
        stream = net._add_stream("127.0.0.1:1")
        stream.write(b"x" * (8 << 20))
        assert net.buffered() == 8 << 20
        waiting = asyncio.ensure_future(net.wait_buffered(1 << 20))
        await asyncio.sleep(0)
        stream.connection_made(_Sink())
        await asyncio.wait_for(waiting, WAIT_BOUND)
        assert net.buffered() == 0

    run(test)
