"""Home I/O of every app on this host: the home side of the apps whose home is here (``AppHome``), the links of
the visitors (``Link``), the files this host keeps serving for apps whose home moved on (``FileGrants``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from migrated.daemon._records import AppRecord, State
from migrated.daemon._runner import Runner
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps import AppRegistry
from migrated.daemon.home._app_home import AppHome
from migrated.daemon.home._grants import FileGrants
from migrated.daemon.home._link import Link, LinkPeers
from migrated.daemon.home._queue import new_session
from migrated.runtime import _wire

__all__ = ["HomeIO"]

log = logging.getLogger("migrated.home")

_Relay = tuple[Link, dict[int, asyncio.Future[bytes]], asyncio.Task[Any]]


class HomeIO:
    """Where each runner's home I/O goes, and the home side of every app whose home is here."""

    def __init__(self, registry: AppRegistry, peers: LinkPeers, grants: FileGrants, tasks: Tasks, timeout: float):
        self.registry = registry
        self.peers = peers
        self.grants = grants
        self.timeout = timeout  # seconds a call waits for an unreachable home
        self._tasks = tasks
        self._homes: dict[str, AppHome] = {}
        self.granted: dict[str, AppHome] = {}  # home sides of apps whose files this host serves for another home
        self._links: dict[str, tuple[Link, asyncio.Task[Any]]] = {}
        self._relays: dict[str, _Relay] = {}

    # -- the runners on this host

    def attach(self, record: AppRecord, runner: Runner) -> Callable[[_wire.Frame], None]:
        """A runner starts for ``record``: where its frames go (a visitor's, over a link to its home)."""

        def push(kind: _wire.Kind, payload: bytes) -> None:
            runner.push(_wire.encode(kind, payload))

        if record.visitor:
            return self._open_link(record, push).receive
        home = self.home(record)
        home.close_files()
        home.attach(push)
        runner.on_end(lambda: home.detach(push))
        return lambda frame: home.receive(frame.kind, frame.payload, push)

    def _open_link(self, record: AppRecord, push: Callable[[_wire.Kind, bytes], None]) -> Link:
        """A link for a visitor's new runner; its console goes on from what the home has of it already."""
        before = self._close_link(record.name)
        acked = before.console_acked if before is not None and before.record is record else 0

        async def refused(why: str) -> None:
            await self.stale(record, why)

        target = (record.place.home_device, record.place.home)
        link = Link(self.peers, record, target, push, refused, self.timeout, (record.console.session, acked))
        self._links[record.name] = (link, self._tasks.spawn(link.run(), f"home link {record.name}"))
        return link

    def carry_kept_consoles(self) -> None:
        """After a restart: the lines visitors printed before it go to their homes (which skip those they have),
        also while the app does not run here."""
        for record in self.registry:
            if record.visitor and record.console.log.next_seq > 1 and record.name not in self._links:
                self._open_link(record, lambda kind, payload: None)

    async def ended(self, record: AppRecord) -> None:
        """A runner of ``record`` ended: a visitor's link stays for its console; an app's sockets at home stay
        only while it moves or may come back."""
        if record.state in (State.CLOSED, State.EXITED) and not record.moving:
            await self.closed(record.name)

    async def closed(self, name: str) -> None:
        """The app will not run until opened again: close its sockets and files, drop its events."""
        home = self._homes.pop(name, None)
        if home is not None:
            await home.close()
        relay = self._relays.pop(name, None)
        if relay is not None:
            relay[2].cancel()

    async def flush(self, record: AppRecord, within: float = 10.0) -> None:
        """Wait until a visitor's home has every console line written here (or ``within`` seconds pass)."""
        link = self._links.get(record.name)
        if link is not None:
            await link[0].flushed(within)

    async def flush_all(self, within: float = 5.0) -> None:
        """Give the consoles of visitors ``within`` seconds to reach their homes (the daemon stops)."""
        links = [link for link, _ in self._links.values()]
        if links:
            await asyncio.wait([asyncio.ensure_future(link.flushed(within)) for link in links])

    def left(self, name: str) -> None:
        """A visitor is no longer here (it moved on, or went home): its link ends."""
        self._close_link(name)

    def _close_link(self, name: str) -> Link | None:
        link = self._links.pop(name, None)
        if link is None:
            return None
        link[1].cancel()
        return link[0]

    async def stale(self, record: AppRecord, why: str) -> None:
        """The home refused this copy: a newer one runs elsewhere; this one stops and is forgotten here."""
        if record.moving or not self.registry.current(record):
            return
        log.warning("%s: the home refused this copy (%s); stopping it", record.name, why)
        await record.console.note(f"{record.name} stops here: its home knows a newer copy ({why})")
        if record.runner is not None and record.running:
            record.stop_reason = "a newer copy runs elsewhere"
            record.runner.kill()
            await record.ended.wait()
        self.left(record.name)
        await self.registry.forget(record.name)

    # -- the home side of apps whose home is here

    def home(self, record: AppRecord) -> AppHome:
        """The home side of an app whose home is here."""
        home = self._homes.get(record.name)
        if home is None:
            cwd = record.spec.home_cwd or record.spec.cwd
            home = self._homes[record.name] = AppHome(record.name, cwd, new_session())
        home.relay = self._relay(record) if record.place.files_home else None
        return home

    def current_home(self, name: str) -> AppHome | None:
        """The home side of ``name`` now, if it has one."""
        return self._homes.get(name)

    def input(self, record: AppRecord, text: str) -> None:
        """Lines typed at home, for the app wherever it runs."""
        home = self.home(record)
        for line in text.splitlines() or [""]:
            home.input(line)

    def unhandled_input(self, name: str) -> list[bytes]:
        """Lines typed here that the app has not handled yet (its home moves: they go along)."""
        home = self._homes.get(name)
        if home is None:
            return []
        lines = []
        for event in home.queue.after("", 0):
            header, data = _wire.Frame(_wire.Kind.EVENT, event.payload).io()
            if header.get("type") == "input":
                lines.append(data)
        return lines

    def _relay(self, record: AppRecord) -> Callable[[dict[str, Any], bytes], Awaitable[bytes]]:
        """File calls of an app whose files another host serves: over a link to that host."""

        async def relay(header: dict[str, Any], data: bytes) -> bytes:
            link, waiting, _ = self._relays.get(record.name) or self._start_relay(record)
            answer = asyncio.get_running_loop().create_future()
            waiting[int(header.get("id", 0))] = answer
            link.receive(_wire.Frame(_wire.Kind.IO, _wire.io_payload(header, data)))
            return bytes(await answer)

        return relay

    def _start_relay(self, record: AppRecord) -> _Relay:
        waiting: dict[int, asyncio.Future[bytes]] = {}

        def push(kind: _wire.Kind, payload: bytes) -> None:
            header, _ = _wire.Frame(kind, payload).io()
            answer = waiting.pop(int(header.get("id", 0)), None)
            if answer is not None and not answer.done():
                answer.set_result(payload)

        async def refused(why: str) -> None:
            log.warning("%s no longer serves the files of %s: %s", record.place.files_home_name, record.name, why)

        target = (record.place.files_home, record.place.files_home_name)
        link = Link(self.peers, record, target, push, refused, self.timeout)
        link.epoch = 0  # the files' host checks its grant, not an epoch
        relay = (link, waiting, self._tasks.spawn(link.run(), f"files link {record.name}"))
        self._relays[record.name] = relay
        return relay

    # -- files this host serves for an app whose home moved on

    async def grant_files(self, app: str, device: str, cwd: str) -> None:
        """Serve ``app``'s files (in ``cwd``) to ``device``, its new home, from now on."""
        await self.grants.grant(app, device, cwd)

    async def revoke_files(self, app: str) -> None:
        """``app`` came back: its files are served here as its own again."""
        await self.grants.revoke(app)
        home = self.granted.pop(app, None)
        if home is not None:
            home.close_files()

    def close(self) -> None:
        """Stop every link (the daemon stops)."""
        for name in list(self._links):
            self._close_link(name)
        for _, _, task in self._relays.values():
            task.cancel()
        self._relays.clear()
