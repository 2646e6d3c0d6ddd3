"""The modes of moving that involve more than one hand-off or more than one host: closing an app that runs
away from home (the home asks, the host closes it and sends it home closed), and evacuating a host."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from migrated.daemon._records import AppRecord, State
from migrated.daemon.move._source import MoveSource
from migrated.daemon.move._transfer import MoveProgress
from migrated.discovery._paired import PairedPeer
from migrated.errors import AppStateError, MigError
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["close_away", "closing_away", "evacuate", "evacuate_on_stop"]

log = logging.getLogger("migrated.moves")


async def close_away(source: MoveSource, name: str) -> AppRecord:
    """Home: close an app; one that runs on another host is closed there and handed back here, closed."""
    record = source.registry.get(name)
    if record.state is not State.AWAY:
        return await source.versions.close(name)
    peer, _ = source.peers.paired_target(record.place.host_device)
    await source.peers.call(peer, "CloseAway", pb.CloseAwayRequest(app=name, epoch=record.place.epoch), 3600)
    return source.registry.get(name)


async def closing_away(source: MoveSource, request: pb.CloseAwayRequest, caller: PairedPeer) -> None:
    """Host: the app's home wants it closed; close it here, then hand the closed version home."""
    record = source.registry.get(request.app)
    if record.place.home_device != caller.device_id or record.place.epoch != request.epoch:
        raise AppStateError(f"{request.app!r} at epoch {request.epoch} is not {caller.name}'s to close here")
    if record.running:
        await source.versions.close(request.app)
    await source.send_home_closed(request.app, caller.device_id)


async def evacuate(
    source: MoveSource, to: str, rehome: bool = False, move_files: bool = False
) -> AsyncIterator[tuple[str, bool, str, float]]:
    """Move every app running here to ``to``, one after the other; one that fails stays and runs here. With
    ``rehome`` each app's home goes with it. Yield (app, moved, what happened, downtime) for each."""
    for name in _runnable(source):
        downtime = 0.0

        def keep(update: MoveProgress) -> None:
            nonlocal downtime
            downtime = update.downtime or downtime

        try:
            if rehome:
                _, where = await source.rehome(name, to, move_files, keep)
            else:
                _, where = await source.move(name, to, keep)
        except MigError as exc:
            yield name, False, exc.message, 0.0
            continue
        yield name, True, f"moved {name} to {where}: frozen {downtime * 1000:.0f} ms", downtime


async def evacuate_on_stop(source: MoveSource, to: str, within: float) -> None:
    """The daemon stops with ``--evacuate-to``: move every app running here (its own and visitors) to ``to``, one
    after the other, within ``within`` seconds; what did not move is closed by the stop, as without evacuation.
    No move starts after the deadline; one under way then is cancelled (undone: it resumes here, to be closed)
    while it has not frozen the app, and let finish its hand-off once it has (bounded by the hand-off's own
    waits), since a hand-off cut short leaves the app to the next start's recovery."""
    deadline = time.monotonic() + within
    log.info("evacuating the apps running here to %s (at most %g s)", to, within)
    for name in _runnable(source):
        if time.monotonic() >= deadline:
            log.warning("evacuation to %s ran out of its %g s; %s and what follows are closed here", to, within, name)
            return
        phases: list[str] = []
        move = asyncio.create_task(source.move(name, to, _phases_into(phases)))
        done, _ = await asyncio.wait({move}, timeout=max(0.0, deadline - time.monotonic()))
        if not done and not set(phases) & {"freeze", "final copy", "hand-off", "done"}:
            move.cancel()
        try:
            _, where = await move
        except asyncio.CancelledError:
            if not move.cancelled():
                raise  # the stop itself was cancelled
            log.warning("evacuate %s: not moved within %g s; it is closed here", name, within)
        except MigError as exc:
            log.warning("evacuate %s: %s", name, exc.message)
        else:
            log.info("evacuate %s: moved to %s", name, where)


def _phases_into(phases: list[str]) -> Callable[[MoveProgress], None]:
    return lambda update: phases.append(update.phase)


def _runnable(source: MoveSource) -> list[str]:
    """The apps that run here and could move (not away, not moving)."""
    return sorted(r.name for r in source.registry if r.state is State.RUNNING and not r.not_here())
