"""The routes of commands about an app, with a fake registry and fake peers: where each command goes for an app
this host knows, for one it does not (the paired hosts are asked), an ambiguous name, ``NAME@HOME``, a move under
way, and one row per app in ``mig ps --all``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from migrated.daemon._console import Console
from migrated.daemon._records import AppRecord, AppSpec, Place, State
from migrated.daemon.control import Role, Routes
from migrated.daemon.control._routes import merge
from migrated.discovery._paired import PairedPeer
from migrated.errors import AppNotFoundError, AppStateError, PeerUnreachableError, UsageError
from migrated.transport.v1 import control_pb2 as pb


def peer(name: str) -> PairedPeer:
    return PairedPeer(name, name * 8, "", name, "127.0.0.1:1", 0.0)


class FakePeers:
    """Paired hosts by name, each with the apps it lists (None: it does not answer)."""

    def __init__(self, apps: dict[str, list[pb.AppInfo] | None]) -> None:
        self.apps = apps
        self.paired = [peer(name) for name in apps]
        self.asked: list[str] = []

    def paired_target(self, host: str) -> tuple[PairedPeer, str]:
        found = next(p for p in self.paired if host in (p.name, p.device_id))
        return found, "127.0.0.1:1"

    async def relay(self, to: PairedPeer, method: str, request: bytes, deadline: float | None) -> AsyncIterator[bytes]:
        self.asked.append(f"{method} {to.name}")
        apps = self.apps[to.name]
        if apps is None:
            raise PeerUnreachableError(f"{to.name} cannot be reached")
        yield pb.ListReply(apps=apps).SerializeToString()


class FakeRegistry:
    def __init__(self, *records: AppRecord) -> None:
        self.records = {record.name: record for record in records}

    def find(self, name: str) -> AppRecord | None:
        return self.records.get(name)


def record(name: str, state: State = State.RUNNING, **place: Any) -> AppRecord:
    return AppRecord(AppSpec(name, "script", "/x.py", "", "/"), Console.__new__(Console), Place(**place), state=state)


def routes(*records: AppRecord, relays: bool = True, **apps: list[pb.AppInfo] | None) -> tuple[Routes, FakePeers]:
    peers = FakePeers(apps)
    return Routes(FakeRegistry(*records), peers, "h0", relays=relays), peers  # type: ignore[arg-type]


def app(name: str, host: str, home: str, state: pb.AppState.ValueType = pb.APP_STATE_RUNNING) -> pb.AppInfo:
    return pb.AppInfo(name=name, host=host, home=home, state=state)


def where(target: Any) -> str:
    return target.peer.name if target.peer is not None else "here"


def test_an_app_this_host_knows_goes_by_its_record() -> None:
    away = record("away", State.AWAY, host="h1", host_device="h1" * 8)
    visitor = record("visitor", home="h2", home_device="h2" * 8)
    table, peers = routes(away, visitor, h1=[], h2=[])

    async def check() -> None:
        assert where(await table.find("away", Role.HOST)) == "h1"
        assert where(await table.find("away", Role.HOME)) == "here"
        assert where(await table.find("visitor", Role.HOME)) == "here"  # its console as this host keeps it
        assert where(await table.find("visitor", Role.INPUT)) == "h2"
        assert where(await table.find("visitor", Role.HOST)) == "here"
        assert where(await table.find("away", Role.INPUT)) == "here"
        assert where(await table.find("away@h0", Role.HOST)) == "h1"

    asyncio.run(check())
    assert peers.asked == [], "a known app needs no survey"


def test_a_move_under_way_is_refused_in_one_sentence() -> None:
    moving = record("moving")
    moving.moving = True
    table, _ = routes(moving, h1=[app("far", "h1", "h1", pb.APP_STATE_MOVING)])
    for name in ("moving", "far"):
        with pytest.raises(AppStateError, match="is moving; try again once the move is done"):
            asyncio.run(table.find(name, Role.HOST))
    assert asyncio.run(table.find("moving", Role.HOME)).peer is None  # its console can still be read here


def test_an_unknown_name_is_looked_up_on_every_paired_host() -> None:
    table, _ = routes(
        h1=[app("metro", "h1", "h2"), app("twin", "h1", "h1")],
        h2=[app("metro", "h1", "h2"), app("twin", "h2", "h2")],
        h3=None,
    )

    async def check() -> None:
        assert where(await table.find("metro", Role.HOST)) == "h1"
        assert where(await table.find("metro", Role.HOME)) == "h2"
        assert where(await table.find("metro", Role.INPUT)) == "h2"
        assert where(await table.find("twin@h2", Role.HOME)) == "h2"
        with pytest.raises(UsageError, match=r"'twin' names apps of 2 homes \(twin@h1, twin@h2\); name one"):
            await table.find("twin", Role.HOME)
        with pytest.raises(AppNotFoundError, match=r"no app is called 'ghost@h1' .* \(1 paired hosts did not answer\)"):
            await table.find("ghost@h1", Role.HOME)

    asyncio.run(check())


def test_a_relayed_call_is_served_here_and_never_relayed_again() -> None:
    away = record("away", State.AWAY, host="h1", host_device="h1" * 8)
    table, peers = routes(away, relays=False, h1=[])
    assert asyncio.run(table.find("away@h0", Role.HOST)).peer is None
    assert peers.asked == []


def test_ps_all_shows_one_row_per_app_from_the_host_that_runs_it() -> None:
    rows = merge(
        [
            ("h0", [app("metro", "h1", "h0", pb.APP_STATE_RUNNING), app("local", "h0", "h0")]),
            ("h1", [pb.AppInfo(name="metro", host="h1", home="h0", pid=7), app("metro", "h1", "h1")]),
            ("h2", [app("metro", "h1", "h0")]),
        ]
    )
    assert [(row.name, row.home, row.pid) for row in rows] == [
        ("local", "h0", 0),
        ("metro", "h0", 7),
        ("metro", "h1", 0),
    ]


def test_the_fast_command_line_asks_for_every_host_as_protobuf_would() -> None:
    from client._fast import LIST_ALL

    assert pb.ListRequest(all=True).SerializeToString() == LIST_ALL
