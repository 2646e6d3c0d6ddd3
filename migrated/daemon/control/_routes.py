"""One system from any host: a command that names an app goes to the host it concerns, over the peer port.

An app is named ``NAME`` or ``NAME@HOME``. What this host can do itself with its own record of the app, it does,
as it always did: its home reads its console and versions, the host that runs it (a visitor included) reads its own
console of it and acts on its run. The rest goes elsewhere: its run (move, kill, checkpoint, ``Role.HOST``) to the
host that runs it, input (``Role.INPUT``) to its home, and any command about an app this host has no record of to
its home (``Role.HOME``: console, versions, close, open) or to the host that runs it, found by asking every paired
host. The callee serves a relayed call as its own ``mig`` would, and never relays it further (the peer port's
control service has routes that stay here, ``relays=False``), so a record that changed on the way costs a
refusal, never a loop. Pairing is full trust both ways: a paired host may
ask whatever its own ``mig`` may of the commands in ``RELAYABLE``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from migrated._names import check_app_name
from migrated.daemon._peers import Peers
from migrated.daemon._records import AppRecord, State
from migrated.daemon.apps import AppRegistry
from migrated.discovery._paired import PairedPeer
from migrated.errors import AppNotFoundError, AppStateError, MigError, PeerNotFoundError, UsageError
from migrated.transport._control_wire import method
from migrated.transport.v1 import control_pb2 as pb

__all__ = ["RELAYABLE", "Role", "Routes", "Target"]

RELAYABLE = frozenset({"Get", "List", "Kill", "Send", "Logs", "Checkpoint", "History", "Close", "Open", "Move"})
SURVEY_TIMEOUT = 2.0  # seconds a paired host has to list its apps before it is named as silent


class Role(enum.Enum):
    """Which host a command about an app concerns."""

    HOME = "home"  # console, versions, close and open: this host's record if it has one, else the home
    INPUT = "input"  # typed lines: always the home, which numbers them
    HOST = "host"  # the run: move, kill, checkpoint


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command goes: the app's bare name, and the paired host to relay to (None: this host)."""

    name: str
    peer: PairedPeer | None = None


@dataclass(frozen=True, slots=True)
class Survey:
    """What the paired hosts said of their apps: each answer with who gave it, and a sentence per silent one."""

    answers: list[tuple[str, list[pb.AppInfo]]]
    silent: list[str]


class Routes:
    """Finds the host a command about an app concerns, and relays the command there."""

    def __init__(self, registry: AppRegistry, peers: Peers, host: str, relays: bool = True) -> None:
        self.registry = registry
        self.peers = peers
        self.host = host
        self.relays = relays  # False: every command is served here (the calls paired hosts relay here)

    async def find(self, typed: str, role: Role) -> Target:
        """Where a command about ``typed`` (``NAME`` or ``NAME@HOME``) goes."""
        name, _, home = typed.partition("@")
        if not self.relays:
            return Target(name)
        check_app_name(name)
        record = self.registry.find(name)
        if record is not None and home in ("", record.place.home or self.host):
            return Target(name, self._peer_of(record, role))
        return await self._elsewhere(name, home, role)

    async def relay_unary(self, method_name: str, request: Any, role: Role) -> Any:
        """Relay a call about ``request.name`` where it goes and return the reply; None when it goes here (its
        ``name`` is then the bare name)."""
        target = await self.find(request.name, role)
        request.name = target.name
        if target.peer is None:
            return None
        replies = [reply async for reply in self.relay(target.peer, method_name, request)]
        return replies[-1]

    async def relay(self, peer: PairedPeer, method_name: str, request: Any) -> AsyncIterator[Any]:
        """The replies of ``peer`` to a call of the Control method ``method_name``."""
        called = method(method_name)
        assert called is not None
        async for data in self.peers.relay(peer, method_name, request.SerializeToString(), None):
            yield called.reply.FromString(data)

    def destination(self, name: str, host: str, runner: PairedPeer) -> str:
        """The destination ``host`` of a move that ``runner`` carries out, as ``runner`` can name it."""
        if host in (self.host, str(self.peers.listen), self.peers.identity.device_id):
            return self.peers.identity.device_id
        try:
            peer, _ = self.peers.paired_target(host)
        except PeerNotFoundError:
            return host  # maybe the runner knows it
        if peer.device_id == runner.device_id:
            raise UsageError(f"{name!r} runs on {runner.name} already")
        return peer.device_id

    async def survey(self) -> Survey:
        """Ask every paired host for its apps, at once; name each that does not answer in time."""
        peers = sorted(self.peers.paired, key=lambda peer: peer.name)
        results = await asyncio.gather(*(self._apps_of(peer) for peer in peers))
        answers = [(peer.name, result) for peer, result in zip(peers, results, strict=True) if isinstance(result, list)]
        silent = [result for result in results if isinstance(result, str)]
        return Survey(answers, silent)

    async def _apps_of(self, peer: PairedPeer) -> list[pb.AppInfo] | str:
        try:
            async with asyncio.timeout(SURVEY_TIMEOUT):
                replies = [reply async for reply in self.relay(peer, "List", pb.ListRequest())]
        except TimeoutError:
            return f"{peer.name} did not answer within {SURVEY_TIMEOUT:g} s; apps that only it knows are not listed"
        except MigError as exc:
            return f"{peer.name} did not answer ({exc.message.rstrip('.')}); apps that only it knows are not listed"
        return list(replies[-1].apps)

    def _peer_of(self, record: AppRecord, role: Role) -> PairedPeer | None:
        place = record.place
        if role is Role.HOST and record.moving:
            raise AppStateError(f"{record.name!r} is moving; try again once the move is done")
        if role is Role.HOST and record.state is State.AWAY:
            device = place.host_device
        elif role is Role.INPUT and record.visitor:
            device = place.home_device
        else:
            return None
        peer, _ = self.peers.paired_target(device)
        return peer

    async def _elsewhere(self, name: str, home: str, role: Role) -> Target:
        """An app this host does not know: ask every paired host, and go where the one app of that name is."""
        survey = await self.survey()
        found = merge(
            (who, [app for app in apps if app.name == name and home in ("", app.home)]) for who, apps in survey.answers
        )
        if not found:
            where = f"@{home}" if home else ""
            silent = f" ({len(survey.silent)} paired hosts did not answer)" if survey.silent else ""
            raise AppNotFoundError(
                f"no app is called {name + where!r} here or on any paired host{silent}; mig ps --all lists the apps"
            )
        if len(found) > 1:
            names = ", ".join(f"{app.name}@{app.home}" for app in found)
            raise UsageError(f"{name!r} names apps of {len(found)} homes ({names}); name one as NAME@HOME")
        app = found[0]
        if role is Role.HOST and app.state == pb.APP_STATE_MOVING:
            raise AppStateError(f"{name!r} is moving; try again once the move is done")
        peer, _ = self.peers.paired_target(app.host if role is Role.HOST else app.home)
        return Target(name, peer)


def merge(answers: Iterable[tuple[str, list[pb.AppInfo]]]) -> list[pb.AppInfo]:
    """One row per app (its name and home), from the answers of several hosts (who answered, what it said):
    the row of the host that runs it wins over its home's, which wins over any other's."""
    rows: dict[tuple[str, str], tuple[int, pb.AppInfo]] = {}
    for who, apps in answers:
        for app in apps:
            rank = 2 if app.host == who else 1 if app.home == who else 0
            key = (app.name, app.home)
            if key not in rows or rows[key][0] < rank:
                rows[key] = (rank, app)
    return [app for _, (_, app) in sorted(rows.items())]
