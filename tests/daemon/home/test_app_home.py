"""An app's home side with real sockets on 127.0.0.1: output applied once, held back for a peer that does not
read, calls answered in order and once, input queued until a copy says where its cursor is."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from migrated.daemon.home import MAX_UNSENT, AppHome
from migrated.runtime._wire import Frame, Kind, encode_io, io_payload
from tests.helpers import WAIT_BOUND, Recorder


class Runner(Recorder):
    """Stands for the runner: what the home pushed to it, decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[Kind, dict[str, Any], bytes]] = []

    def __call__(self, kind: Kind, payload: bytes) -> None:
        header, data = Frame(kind, payload).io()
        self.frames.append((kind, header, data))
        self.changed.set()

    def of(self, kind: Kind) -> list[dict[str, Any]]:
        return [header for k, header, _ in self.frames if k is kind]


def call(home: AppHome, runner: Runner, call_id: int, op: str, **args: Any) -> None:
    home.receive(Kind.IO, io_payload({"id": call_id, "op": op, **args}), runner)


def out(home: AppHome, runner: Runner, number: int, op: str, data: bytes = b"", **args: Any) -> None:
    home.receive(Kind.OUT, io_payload({"out": number, "op": op, **args}), runner)


def run(test: Callable[[AppHome, Runner], Awaitable[None]], cwd: Path) -> None:
    async def main() -> None:
        home, runner = AppHome("app", str(cwd), "session-1"), Runner()
        home.attach(runner)
        try:
            await test(home, runner)
        finally:
            await home.close()

    asyncio.run(main())


async def connected(home: AppHome, runner: Runner) -> tuple[socket.socket, str]:
    """A client connected to a port the app listens on, and the connection's id at home."""
    call(home, runner, 1, "home.resume", session="", seq=0, listeners=[], conns=[])
    call(home, runner, 2, "net.listen", port=0, host="127.0.0.1")
    await runner.until(lambda: len(runner.of(Kind.IO_REPLY)) == 2, "the listener")
    port = runner.of(Kind.IO_REPLY)[1]["port"]
    client = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))
    await runner.until(lambda: runner.of(Kind.EVENT), "the accept event")
    return client, runner.of(Kind.EVENT)[0]["conn"]


def test_output_is_applied_once_and_held_back_while_a_peer_does_not_read(tmp_path: Path) -> None:
    async def test(home: AppHome, runner: Runner) -> None:
        client, conn = await connected(home, runner)
        piece = b"x" * (1 << 20)
        home.receive(Kind.OUT, encode_io(Kind.OUT, {"out": 1, "op": "net.send", "conn": conn}, b"once")[5:], runner)
        home.receive(Kind.OUT, encode_io(Kind.OUT, {"out": 1, "op": "net.send", "conn": conn}, b"once")[5:], runner)
        assert [h["out"] for h in runner.of(Kind.OUT_ACK)] == [1, 1]
        for number in range(2, 40):  # 38 MiB to a client that reads nothing
            home.receive(Kind.OUT, io_payload({"out": number, "op": "net.send", "conn": conn}, piece), runner)
        acked = max(h["out"] for h in runner.of(Kind.OUT_ACK))
        assert acked < 39, "the app's output was all acknowledged while it waited in the daemon"
        assert home.net.buffered() > MAX_UNSENT
        got = bytearray()

        def drain() -> None:
            client.settimeout(WAIT_BOUND)
            while len(got) < 4 + 38 * len(piece):
                got.extend(client.recv(1 << 20))

        await asyncio.to_thread(drain)
        await runner.until(lambda: max(h["out"] for h in runner.of(Kind.OUT_ACK)) == 39, "the held acknowledgement")
        assert bytes(got[:5]) == b"oncex", "the repeated output was applied twice"
        client.close()

    run(test, tmp_path)


def test_calls_are_answered_in_order_and_a_repeated_call_once(tmp_path: Path) -> None:
    async def test(home: AppHome, runner: Runner) -> None:
        home.receive(Kind.IO, io_payload({"id": 7, "op": "os.mkdir", "path": "made", "perm": 0o755}), runner)
        home.receive(Kind.IO, io_payload({"id": 8, "op": "os.stat", "path": "made", "follow": True}), runner)
        home.receive(Kind.IO, io_payload({"id": 7, "op": "os.mkdir", "path": "made", "perm": 0o755}), runner)
        await runner.until(lambda: len(runner.of(Kind.IO_REPLY)) == 3, "three answers")
        answers = runner.of(Kind.IO_REPLY)
        assert [a["id"] for a in answers] == [7, 8, 7]
        assert "errno" not in answers[0] and "errno" not in answers[1], answers
        assert answers[2] == answers[0], "a call sent again after a reconnection was carried out twice"
        assert (tmp_path / "made").is_dir()

    run(test, tmp_path)


def test_input_waits_for_the_copy_to_resume_and_comes_from_its_cursor(tmp_path: Path) -> None:
    async def test(home: AppHome, runner: Runner) -> None:
        for line in ("a", "b", "c"):
            home.input(line)
        assert runner.of(Kind.EVENT) == [], "events went to a copy before it said where its cursor is"
        session = home.queue.session
        call(home, runner, 1, "home.resume", session=session, seq=1, listeners=[], conns=[])
        await runner.until(lambda: len(runner.of(Kind.EVENT)) == 2, "events after the cursor")
        assert [data for kind, _, data in runner.frames if kind is Kind.EVENT] == [b"b", b"c"]

    run(test, tmp_path)
