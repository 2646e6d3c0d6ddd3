"""The control socket: ``mig``'s calls in the frames of ``transport/_control_wire.py``, served by ``ControlService``.

One call per connection. A caller that closes its end cancels its call, as a cancelled RPC would; a ``MigError``
becomes an ``ERROR`` frame with its class, anything else is logged and reported as the daemon's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message

from migrated.daemon._tasks import owned
from migrated.daemon.control._service import ControlService
from migrated.errors import DaemonError, MigError
from migrated.transport._control_wire import HEADER, MAX_FRAME, FrameKind, Method, error_frame, frame, parse_call, plain

__all__ = ["ControlSocket"]

log = logging.getLogger("migrated.daemon")


class ControlSocket:
    """Serves ``control`` on a Unix socket only this user can reach."""

    def __init__(self, control: ControlService) -> None:
        self.control = control
        self._server: asyncio.Server | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def start(self, path: Path) -> None:
        """Listen on ``path`` (the state directory is private already; the socket is made so too)."""
        self._server = await asyncio.start_unix_server(self._accept, path=str(path), limit=MAX_FRAME)
        os.chmod(path, 0o600)

    async def stop(self, grace: float) -> None:
        """Stop listening; calls still running after ``grace`` seconds are cancelled."""
        if self._server is not None:
            self._server.close()
        if self._calls:
            _, pending = await asyncio.wait(set(self._calls), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller went away: its call is over
        finally:
            self._calls.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
        if kind != FrameKind.CALL or size > MAX_FRAME:
            return  # not mig: nothing to answer
        try:
            method, request, as_plain = parse_call(await reader.readexactly(size))
        except DecodeError:
            writer.write(error_frame(DaemonError("the daemon could not read the request; mig and migrated differ")))
            await writer.drain()
            return
        except MigError as exc:
            writer.write(error_frame(exc))
            await writer.drain()
            return
        call = owned(self._answer(method, request, as_plain, _Replies(writer)), f"control {method.name}")
        gone = owned(_hung_up(reader), f"control {method.name} caller")
        try:
            await asyncio.wait((call, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (call, gone):
                task.cancel()
            await asyncio.gather(call, gone, return_exceptions=True)

    async def _answer(self, method: Method, request: Any, as_plain: bool, replies: _Replies) -> None:
        def encode(reply: Message) -> bytes:
            return json.dumps(plain(reply)).encode() if as_plain else reply.SerializeToString()

        try:
            try:
                handler = getattr(self.control, method.name)
                if method.streaming:
                    stream: AsyncIterator[Any] = handler(request)
                    async for reply in stream:
                        await replies.send(frame(FrameKind.REPLY, encode(reply)))
                    await replies.send(frame(FrameKind.END))
                else:
                    answer: Awaitable[Any] = handler(request)
                    await replies.send(frame(FrameKind.REPLY, encode(await answer)))
            except MigError as exc:
                await replies.send(error_frame(exc))
            except _HungUp:
                raise
            except Exception as exc:
                log.exception("internal error in %s", method.name)
                failed = f"the daemon failed with {type(exc).__name__}: {exc}; see daemon.log in its state directory"
                await replies.send(error_frame(MigError(failed)))
        except _HungUp:
            pass  # the caller went away: nobody to answer


class _HungUp(Exception):
    """The caller closed its end while the daemon wrote to it."""


class _Replies:
    """The caller's end: a write to a caller that went away raises ``_HungUp``, never a connection error."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            raise _HungUp from None


async def _hung_up(reader: asyncio.StreamReader) -> None:
    """Return when the caller closes its end (it sends nothing after its call) or resets it."""
    with contextlib.suppress(ConnectionError):
        await reader.read(1)
