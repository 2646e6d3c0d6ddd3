"""The home's end of a home link: carry the I/O of an app that runs on the calling host while its epoch is
current, apply its console lines once each, in order, and end the stream when a newer copy takes over."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from migrated.daemon._faults import fault_point
from migrated.daemon._records import AppRecord
from migrated.daemon._tasks import owned
from migrated.daemon.home._app_home import AppHome
from migrated.daemon.home._fence import fence
from migrated.daemon.home._io import HomeIO
from migrated.daemon.home._queue import new_session
from migrated.errors import StaleCopyError
from migrated.runtime import _wire
from migrated.transport.v1 import peer_pb2 as pb

__all__ = ["Caller", "serve_link"]

log = logging.getLogger("migrated.home")

LINK_BATCH = 1 << 20


@dataclass(frozen=True, slots=True)
class Caller:
    """The paired host at the other end of a link."""

    device_id: str
    name: str


async def serve_link(
    io: HomeIO, host: str, requests: AsyncIterator[pb.LinkUp], caller: Caller
) -> AsyncIterator[pb.LinkDown]:
    """Carry the I/O of the app the first message names, run by ``caller``, while its epoch is current."""
    first = await anext(aiter(requests))
    record, home, current = await _side(io, host, first, caller)
    down: asyncio.Queue[pb.IoFrame | None] = asyncio.Queue()
    superseded = False

    def push(kind: _wire.Kind, payload: bytes) -> None:
        down.put_nowait(pb.IoFrame(kind=kind, payload=payload))

    def close() -> None:
        nonlocal superseded
        superseded = True
        down.put_nowait(None)

    home.close_files()  # files a copy before this one opened: this one reopens its own
    home.attach(push, (first.cursor_session, first.cursor_seq) if first.resumed else None, close)
    reader = owned(_read(first, requests, home, record, current, push, down, caller), f"link from {caller.name}")
    try:
        while (item := await down.get()) is not None:
            yield pb.LinkDown(frames=_batch(item, down))
    finally:
        reader.cancel()
        home.detach(push)
    if superseded or not current():
        raise StaleCopyError(f"epoch {first.epoch} of {first.app!r} is stale (a newer copy runs); stop it")


async def _side(
    io: HomeIO, host: str, first: pb.LinkUp, caller: Caller
) -> tuple[AppRecord | None, AppHome, Callable[[], bool]]:
    """The app's home side the link serves: a grant (its files, for the app's new home), or the app's own home
    here, once its epoch passed the fence."""
    grant = io.grants.get(first.app)
    if grant is not None and grant.device == caller.device_id:
        home = io.granted.get(first.app) or AppHome(first.app, grant.cwd, new_session())
        io.granted[first.app] = home
        return None, home, lambda: io.granted.get(first.app) is home
    record = io.registry.find(first.app)
    if fence(record, first.app, first.epoch, caller.device_id, caller.name, host):
        assert record is not None
        await io.registry.save(record)
    assert record is not None
    home = io.home(record)
    epoch = first.epoch
    return record, home, lambda: record.place.epoch == epoch and io.current_home(record.name) is home


async def _read(
    first: pb.LinkUp,
    requests: AsyncIterator[pb.LinkUp],
    home: AppHome,
    record: AppRecord | None,
    current: Callable[[], bool],
    push: Callable[[_wire.Kind, bytes], None],
    down: asyncio.Queue[pb.IoFrame | None],
    caller: Caller,
) -> None:
    try:
        message = first
        while current():
            for frame in message.frames:
                if frame.kind == _wire.Kind.CONSOLE and record is not None:
                    push(_wire.Kind.CONSOLE_ACK, await apply_console(record, frame.payload))
                else:
                    home.receive(frame.kind, frame.payload, push)
            try:
                message = await anext(requests)
            except StopAsyncIteration:
                return
            except Exception as exc:  # the stream broke, or this daemon's server stops: the link is down
                level = logging.INFO if type(exc).__module__.startswith("grpc") else logging.WARNING
                log.log(level, "home link of %s from %s ended: %s: %s", first.app, caller.name, type(exc).__name__, exc)
                return
    except (_wire.FrameError, ValueError) as exc:
        log.warning("home link of %s from %s: %s", first.app, caller.name, exc)
    finally:
        down.put_nowait(None)


async def apply_console(record: AppRecord, payload: bytes) -> bytes:
    """Console lines (and how it is doing) of an app running on another host: each line applied once, in
    order; return the acknowledgement."""
    header, data = _wire.Frame(_wire.Kind.CONSOLE, payload).io()
    session, first = float(header.get("session", 0.0)), int(header.get("first", 0))
    remote = record.remote
    if session != remote.console_session:  # the host restarted: its numbering starts anew
        remote.console_session, remote.console_applied = session, 0
    remote.state, remote.pid = str(header.get("state", "")), int(header.get("pid", 0) or 0)
    record.reason = str(header.get("reason", ""))
    lines, offset = [], 0
    for size in header.get("sizes", []):
        lines.append(data[offset : offset + int(size)])
        offset += int(size)
    new = lines[max(0, remote.console_applied + 1 - first) :]
    last = first + len(lines) - 1
    if new:  # kept with the cursor they bring it to: a home restarted in the middle applies none twice
        await record.console.write_remote(b"".join(new), (session, last))
        await fault_point("home-console-applied")
    remote.console_applied = max(remote.console_applied, last)
    return json.dumps({"session": session, "applied": remote.console_applied}).encode()


def _batch(item: pb.IoFrame, down: asyncio.Queue[pb.IoFrame | None]) -> list[pb.IoFrame]:
    batch, size = [item], len(item.payload)
    while not down.empty() and size < LINK_BATCH:
        following = down.get_nowait()
        if following is None:
            down.put_nowait(None)
            break
        batch.append(following)
        size += len(following.payload)
    return batch
