"""``serve()``: the composition root. It builds every service of the daemon with what it needs (``_compose``),
starts them in order in one task group (the peer port first: a port that cannot be had ends the start before
any app is touched), serves the control API on the Unix socket, and stops in order."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio

from migrated.checkpoint import Store
from migrated.daemon._config import PeerSettings
from migrated.daemon._db import Db
from migrated.daemon._exports import ExportTrust
from migrated.daemon._paired_rows import PairedRows
from migrated.daemon._pairing import Pairing, PairingService
from migrated.daemon._peer_service import PeerService
from migrated.daemon._peers import Peers
from migrated.daemon._runner import SAFE_POINT_WAIT
from migrated.daemon._spares import SpareRunners
from migrated.daemon._statedir import StateDir
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps import AppRegistry, AppTable, AppVersions, Checkpointer
from migrated.daemon.control import ControlService, ControlSocket, Routes
from migrated.daemon.home import FileGrants, HomeIO
from migrated.daemon.move import Journal, MoveDestination, MoveSource, evacuate_on_stop, recover
from migrated.discovery._paired import PairedPeers
from migrated.errors import MigError
from migrated.transport.v1 import peer_pb2_grpc

__all__ = ["DaemonConfig", "serve"]

log = logging.getLogger("migrated.daemon")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """How a daemon runs."""

    state_dir: Path
    host: str
    console_lines: int = 1_000_000
    console_bytes: int = 64 * 1024 * 1024
    peers: PeerSettings = field(default_factory=PeerSettings)
    handshake_timeout: float = 10.0
    home_timeout: float = 30.0
    safe_point_wait: float = SAFE_POINT_WAIT
    spare_runners: int = 1
    evacuate_to: str = ""  # a paired host a stop moves the running apps to first
    evacuate_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class _Daemon:
    """Every service of one daemon, built once."""

    config: DaemonConfig
    store: Store
    tasks: Tasks
    peers: Peers
    pairing: Pairing
    registry: AppRegistry
    home: HomeIO
    table: AppTable
    versions: AppVersions
    journal: Journal
    source: MoveSource
    destination: MoveDestination
    peer_service: PeerService
    control: ControlService


def _compose(config: DaemonConfig, store: Store, db: Db, tasks: Tasks, stop: Callable[[], None]) -> _Daemon:
    """Build the services, each with what it needs; nothing starts here."""
    state_dir, host = config.state_dir, config.host
    paired = PairedPeers(PairedRows(db))
    paired.load()
    registry = AppRegistry(db, store, state_dir / "console", config.console_lines, config.console_bytes)
    peers = Peers(
        state_dir, host, config.peers, paired, lambda: sum(r.running for r in registry), config.handshake_timeout
    )
    grants = FileGrants(db)
    grants.load()
    home = HomeIO(registry, peers, grants, tasks, config.home_timeout)
    checkpointer = Checkpointer(store, config.safe_point_wait)
    spares = SpareRunners(tasks, config.spare_runners)
    table = AppTable(registry, checkpointer, home, tasks, store, state_dir, spares)
    exports = ExportTrust(peers.identity, host, paired)
    versions = AppVersions(table, registry, checkpointer, store, exports, state_dir / "code")
    journal = Journal(db)
    source = MoveSource(registry, table, versions, home, peers, journal, store, tasks, host)
    destination = MoveDestination(registry, table, home, peers, journal, store, spares, tasks, state_dir, host)
    pairing = Pairing(peers)

    def control_with(routes: Routes) -> ControlService:
        return ControlService(
            registry, table, versions, source, peers, pairing, routes, store, tasks, host, str(state_dir), stop
        )

    control = control_with(Routes(registry, peers, host))
    served_to_peers = control_with(Routes(registry, peers, host, relays=False))  # a relayed call goes no further
    peer_service = PeerService(peers, source, destination, home, served_to_peers, host)
    return _Daemon(config, store, tasks, peers, pairing, registry, home, table, versions, journal, source,
                   destination, peer_service, control)  # fmt: skip


async def serve(config: DaemonConfig, ready: Callable[[], None] = lambda: None) -> None:
    """Run the daemon until SIGTERM, SIGINT or a Shutdown request."""
    state_dir = StateDir(config.state_dir)
    state_dir.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    store = Store(config.state_dir / "checkpoints.sqlite")
    peers: Peers | None = None
    try:
        db = Db(store)
        db.open(config.state_dir)
        async with asyncio.TaskGroup() as group:
            daemon = _compose(config, store, db, Tasks(group), stop.set)
            peers = daemon.peers
            server = await _start(daemon, state_dir.socket)
            ready()
            await stop.wait()
            await _stop(daemon, server)
    except* MigError as failed:  # the start refused (a port taken, a store that cannot open): one sentence
        raise failed.exceptions[0] from None
    finally:
        if peers is not None:
            await peers.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(store.close)
        state_dir.close()


async def _start(daemon: _Daemon, socket: Path) -> ControlSocket:
    """Start the services in order; return the control server, serving."""

    def peer_services(server: grpc.aio.Server) -> None:
        peer_pb2_grpc.add_PairingServicer_to_server(PairingService(daemon.peers, daemon.pairing), server)
        peer_pb2_grpc.add_PeerServicer_to_server(daemon.peer_service, server)

    daemon.table.spares.start()
    await daemon.peers.start(peer_services)
    await daemon.registry.load_saved()
    if daemon.store.unclean:
        log.warning("the checkpoint store was not closed cleanly; quick_check: %s", daemon.store.problems or "ok")
    await recover(daemon.journal, daemon.source, daemon.destination)
    daemon.home.carry_kept_consoles()
    daemon.peer_service.ready.set()
    daemon.tasks.spawn(daemon.peers.run_probes(), "probes")
    server = ControlSocket(daemon.control)
    await server.start(socket)
    log.info("serving %s on %s", daemon.config.host, socket)
    return server


async def _stop(daemon: _Daemon, server: ControlSocket) -> None:
    """Close every app that runs (saving what can be saved), let visitors' consoles reach home, stop the rest."""
    log.info("stopping")
    if daemon.config.evacuate_to:
        await evacuate_on_stop(daemon.source, daemon.config.evacuate_to, daemon.config.evacuate_timeout)
    await daemon.table.close_all(daemon.versions.close)
    daemon.table.spares.close()
    await daemon.home.flush_all()
    daemon.home.close()
    daemon.tasks.cancel()
    await server.stop(grace=1.0)


def _log_tasks() -> None:
    """SIGUSR1: log where every task of the daemon waits (a daemon that hangs can say why)."""
    for task in asyncio.all_tasks():
        where: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(where) < 16:  # down the chain of awaits, to where the task waits
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None and frame.f_lineno is not None:  # gRPC's own (compiled) tasks have no lines
                where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        if where:
            log.warning("task %s: %s", task.get_name(), " > ".join(where))
