"""``serve()``: the daemon's task group, its control server on the Unix socket, and an orderly stop."""

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
from migrated.daemon._apps import AppTable
from migrated.daemon._config import PeerSettings
from migrated.daemon._control import ControlService
from migrated.daemon._exports import ExportTrust
from migrated.daemon._home import HomeIO
from migrated.daemon._moves import Moves
from migrated.daemon._peers import Peers
from migrated.daemon._runner import SAFE_POINT_WAIT
from migrated.daemon._statedir import StateDir
from migrated.transport._errors import ErrorInterceptor
from migrated.transport.v1 import control_pb2_grpc

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


async def serve(config: DaemonConfig, ready: Callable[[], None] = lambda: None) -> None:
    """Run the daemon until SIGTERM, SIGINT or a Shutdown request; a crash of any part ends it loudly."""
    state_dir = StateDir(config.state_dir)
    state_dir.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    store = Store(config.state_dir / "checkpoints.sqlite")
    apps: AppTable | None = None
    # The peer port first: a port that cannot be had ends the start before any app is touched.
    peers = Peers(
        config.state_dir,
        config.host,
        config.peers,
        lambda: sum(record.running for record in apps or ()),
        config.handshake_timeout,
    )
    try:
        await peers.start()
        async with asyncio.TaskGroup() as tasks:
            exports = ExportTrust(peers.identity, config.host, peers.paired)
            apps = AppTable(
                tasks,
                config.state_dir,
                store,
                config.console_lines,
                config.console_bytes,
                exports,
                config.safe_point_wait,
            )
            await apps.load_saved()
            if store.unclean:
                log.warning("the checkpoint store was not closed cleanly; quick_check: %s", store.problems or "ok")
            home_io = HomeIO(peers, config.host, tasks, config.state_dir, config.home_timeout)
            apps.io = home_io
            moves = Moves(apps, peers, config.state_dir, config.host, tasks, home_io)
            peers.serve_moves(moves)
            await moves.recover()
            probes = tasks.create_task(peers.run_probes())
            server = grpc.aio.server(interceptors=[ErrorInterceptor()])
            service = ControlService(apps, peers, moves, config.host, str(config.state_dir), stop.set)
            control_pb2_grpc.add_ControlServicer_to_server(service, server)
            server.add_insecure_port(f"unix:{state_dir.socket}")
            await server.start()
            log.info("serving %s on %s", config.host, state_dir.socket)
            ready()
            await stop.wait()
            log.info("stopping")
            await apps.close_all()
            await moves.flush_consoles()
            moves.close()
            home_io.close()
            probes.cancel()
            await server.stop(grace=1.0)
    finally:
        await peers.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(store.close)
        state_dir.close()


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
