"""What the daemon knows of one app: what to run (``AppSpec``), where it runs and where its home is
(``Place``), how its run here goes (the record's own fields), and, while it runs elsewhere, what that host last
said (``Remote``). Plain data: the app table, the move and home packages act on it."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from migrated.daemon._console import Console

if TYPE_CHECKING:
    from migrated.daemon._runner import Runner
    from migrated.transport.v1 import peer_pb2

__all__ = ["AppRecord", "AppSpec", "Place", "Remote", "State"]


class State(enum.Enum):
    """Where an app is in its lifecycle."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    CRASHED = "crashed"
    CLOSED = "closed"
    AWAY = "away"  # runs on another host; this one is its home and keeps its record


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What to run: fixed when the app is created (a move may give it another folder on the new host)."""

    name: str
    kind: str  # "script" or "repl"
    file: str
    app_class: str
    cwd: str
    args: tuple[str, ...] = ()
    autosave: float = 0.0  # seconds between autosaves; 0: none
    keep: str = ""  # retention policy of autosaves; empty: keep all
    restart: str = "on-crash"  # or "never"
    home_cwd: str = ""  # its working directory at home, when this host runs it from another folder

    def settings(self) -> peer_pb2.AppSettings:
        """What another host needs to run it (its code comes with its checkpoint)."""
        from migrated.transport.v1 import peer_pb2

        return peer_pb2.AppSettings(
            kind=self.kind,
            app_class=self.app_class,
            args=list(self.args),
            autosave=self.autosave,
            keep=self.keep,
            restart=self.restart,
            cwd=self.home_cwd or self.cwd,
        )

    def with_settings(self, settings: peer_pb2.AppSettings) -> AppSpec:
        """This spec (of code unpacked here) run as another host ran it."""
        return AppSpec(
            name=self.name,
            kind=settings.kind,
            file=self.file,
            app_class=self.app_class,
            cwd=self.cwd,
            args=tuple(settings.args),
            autosave=settings.autosave,
            keep=settings.keep,
            restart=settings.restart,
            home_cwd=settings.cwd,
        )

    def load_request(self, store: str = "", version: int = 0) -> dict[str, object]:
        """What the runner is sent to load it (and, with ``store``, to thaw it from ``version``; 0: the latest)."""
        load: dict[str, object] = {
            "kind": self.kind,
            "file": self.file,
            "app_class": self.app_class,
            "name": self.name,
            "args": list(self.args),
        }
        if store:
            load["restore"] = {"store": store, "version": version}
        return load


@dataclass(slots=True)
class Place:
    """Where the app runs and where its home is, as kept across restarts. Empty host: here; empty home: here."""

    epoch: int = 0  # grows with every hand-off between hosts
    host: str = ""  # the peer that runs it while AWAY
    host_device: str = ""
    home: str = ""  # its home when that is another host
    home_device: str = ""
    files_home: str = ""  # device id of the host that serves its files when its home does not
    files_home_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its fields by name."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass(slots=True)
class Remote:
    """While the app runs on another host, what its home has heard from there."""

    pid: int = 0
    state: str = ""  # its state there
    console_applied: int = 0  # the last console line of that copy applied here
    console_session: float = 0.0  # and the numbering (session) that copy's host gave its console


@dataclass(eq=False)
class AppRecord:
    """One app in the table: its spec, place and console, and its run on this host (while it runs, its runner)."""

    spec: AppSpec
    console: Console
    place: Place = field(default_factory=Place)
    remote: Remote = field(default_factory=Remote)
    state: State = State.STARTING
    version: int = 0  # latest checkpoint version
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0
    exit_code: int = 0
    reason: str = ""
    runner: Runner | None = None
    app_class: str = ""
    stop_reason: str = ""
    closing: bool = False
    restarts: int = 0  # times the daemon brought it back after a crash
    crash_times: list[float] = field(default_factory=list)
    save_error: str = ""  # why its last checkpoint was not stored ("" once one is)
    moving: bool = False
    handing_home: str = ""  # the host its home is being handed to (input is refused here from then on)
    autosave_task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one checkpoint or transition at a time

    @property
    def name(self) -> str:
        """The app's name."""
        return self.spec.name

    @property
    def pid(self) -> int:
        """The runner's pid while it runs, else 0."""
        return self.runner.pid if self.runner is not None and self.running else 0

    @property
    def running(self) -> bool:
        """Whether a runner process hosts the app here now."""
        return self.state in (State.STARTING, State.RUNNING, State.STOPPING)

    @property
    def visitor(self) -> bool:
        """Whether its home is another host."""
        return bool(self.place.home_device)

    @property
    def files_away(self) -> bool:
        """Whether its files resolve anywhere but in its runner's own working directory (proxied then)."""
        place = self.place
        return bool(place.home_device or place.files_home) or self.spec.home_cwd not in ("", self.spec.cwd)

    def not_here(self) -> str:
        """Why this host cannot act on the app itself ("" when it can)."""
        if self.state is State.AWAY:
            return f"{self.name!r} runs on {self.place.host}"
        return f"{self.name!r} is moving" if self.moving else ""
