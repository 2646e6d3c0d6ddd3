"""The hand-off of an app between two daemons, as pure state machines: exactly one copy, never two.

The source coordinates. Every message carries the migration id, the app and the new epoch, and is safe to
repeat. Each side records its state durably (a ``Record`` action) before it carries out the actions after it.

Source::

    STARTED --frozen--> FROZEN --prepared--> HANDED_OFF --committed--> DONE
       |                  |                      ^  |
       +--failure---------+--failure--> ABORTED  +--+ commit failed: send it again, never resume

Destination::

    (none) --prepare--> PREPARED --commit--> COMMITTED (runs the app)
                            +-----abort----> ABORTED

Before the source records HANDED_OFF, any failure (and a restart) means abort: the destination drops what it
prepared and the app goes on at the source. After it, the source never runs the app again and repeats COMMIT
until the destination acknowledges; the destination never runs an app it has not been told to commit. While a
link is down after HANDED_OFF, no copy runs; when it heals, exactly one does. A restarted destination holding a
PREPARED migration asks the source for the decision. Post-copy is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = [
    "Abort",
    "AskDecision",
    "Commit",
    "DestState",
    "Destination",
    "Drop",
    "Prepare",
    "Record",
    "Refuse",
    "Reply",
    "Resume",
    "Retire",
    "Source",
    "SourceState",
    "Thaw",
]


class SourceState(StrEnum):
    """Where a migration stands at its source."""

    STARTED = "started"  # pre-copy: the app runs here, its chunks are being sent
    FROZEN = "frozen"  # the app is frozen at a stored version; PREPARE is out
    HANDED_OFF = "handed_off"  # decided: the destination runs it; this side never will
    DONE = "done"  # the destination acknowledged the commit
    ABORTED = "aborted"  # the app goes on here


class DestState(StrEnum):
    """Where a migration stands at its destination."""

    PREPARED = "prepared"  # chunks and manifest stored; waiting for the decision
    COMMITTED = "committed"  # the app runs here
    ABORTED = "aborted"  # dropped


# Actions. A Record must be durable before the daemon carries out any action after it.


@dataclass(frozen=True, slots=True)
class Record:
    """Write the migration's new state durably."""

    state: SourceState | DestState


@dataclass(frozen=True, slots=True)
class Prepare:
    """Source: send PREPARE (the manifest of the frozen version)."""


@dataclass(frozen=True, slots=True)
class Commit:
    """Source: send COMMIT (again, until acknowledged)."""


@dataclass(frozen=True, slots=True)
class Abort:
    """Source: send ABORT (best effort; a restarted destination asks anyway)."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Source: the app goes on here, live if it still runs, else from the frozen version."""

    version: int


@dataclass(frozen=True, slots=True)
class Retire:
    """Source: the app now runs at the destination; keep its history, never run it here."""


@dataclass(frozen=True, slots=True)
class Thaw:
    """Destination: run the app from the prepared version, at the new epoch."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Destination: forget what was prepared (its chunks go at the next GC)."""


@dataclass(frozen=True, slots=True)
class AskDecision:
    """Destination: ask the source whether this migration committed."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Destination: acknowledge the message."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Destination: refuse the message, saying why."""

    reason: str


Action = Record | Prepare | Commit | Abort | Resume | Retire | Thaw | Drop | AskDecision | Reply | Refuse


@dataclass(frozen=True, slots=True)
class Source:
    """One migration as its source sees it."""

    id: str
    app: str
    epoch: int  # the app's epoch at the destination (one more than here)
    state: SourceState = SourceState.STARTED
    version: int = 0  # the frozen version, once frozen

    def frozen(self, version: int) -> tuple[Source, list[Action]]:
        """The app is frozen and its final version stored locally."""
        if self.state is not SourceState.STARTED:
            return self, []
        return replace(self, state=SourceState.FROZEN, version=version), [Record(SourceState.FROZEN), Prepare()]

    def prepared(self) -> tuple[Source, list[Action]]:
        """The destination acknowledged PREPARE: decide."""
        if self.state is SourceState.FROZEN:
            return replace(self, state=SourceState.HANDED_OFF), [Record(SourceState.HANDED_OFF), Commit()]
        if self.state is SourceState.ABORTED:
            return self, [Abort()]  # a late acknowledgement: tell it again
        return self, []

    def failed(self) -> tuple[Source, list[Action]]:
        """Something failed (pre-copy, freeze, PREPARE refused or lost, a cancel): abort unless decided."""
        if self.state in (SourceState.STARTED, SourceState.FROZEN):
            return self._abort()
        if self.state is SourceState.HANDED_OFF:
            return self, [Commit()]  # decided: only the commit can follow
        return self, []

    def committed(self) -> tuple[Source, list[Action]]:
        """The destination acknowledged COMMIT."""
        if self.state is SourceState.HANDED_OFF:
            return replace(self, state=SourceState.DONE), [Record(SourceState.DONE), Retire()]
        return self, []

    def commit_failed(self) -> tuple[Source, list[Action]]:
        """COMMIT got no acknowledgement (link down, destination down): send it again later."""
        return self, [Commit()] if self.state is SourceState.HANDED_OFF else []

    def restarted(self) -> tuple[Source, list[Action]]:
        """The source daemon restarted with this migration on record."""
        if self.state in (SourceState.STARTED, SourceState.FROZEN):
            return self._abort()
        if self.state is SourceState.HANDED_OFF:
            return self, [Commit()]
        return self, []

    def decision(self) -> SourceState:
        """What a destination asking about this migration is told: committed only once handed off."""
        return self.state

    def _abort(self) -> tuple[Source, list[Action]]:
        return replace(self, state=SourceState.ABORTED), [Record(SourceState.ABORTED), Abort(), Resume(self.version)]


@dataclass(frozen=True, slots=True)
class Destination:
    """One migration as its destination sees it (``state`` None: never heard of it)."""

    id: str
    app: str
    epoch: int
    state: DestState | None = None

    def prepare(self, known_epoch: int) -> tuple[Destination, list[Action]]:
        """PREPARE arrived with its chunks stored; ``known_epoch`` is the highest epoch of the app seen here."""
        if self.state is None:
            if self.epoch <= known_epoch:
                return self, [Refuse(f"epoch {self.epoch} of {self.app} is stale; this host has seen {known_epoch}")]
            return replace(self, state=DestState.PREPARED), [Record(DestState.PREPARED), Reply()]
        if self.state is DestState.ABORTED:
            return self, [Refuse(f"migration {self.id} was aborted")]
        return self, [Reply()]

    def commit(self) -> tuple[Destination, list[Action]]:
        """COMMIT arrived."""
        if self.state is DestState.PREPARED:
            return replace(self, state=DestState.COMMITTED), [Record(DestState.COMMITTED), Thaw(), Reply()]
        if self.state is DestState.COMMITTED:
            return self, [Reply()]
        return self, [Refuse(f"migration {self.id} is not prepared here")]

    def abort(self) -> tuple[Destination, list[Action]]:
        """ABORT arrived (or the source's answer to AskDecision was: aborted)."""
        if self.state is DestState.PREPARED:
            return replace(self, state=DestState.ABORTED), [Record(DestState.ABORTED), Drop(), Reply()]
        if self.state is DestState.COMMITTED:
            return self, [Refuse(f"migration {self.id} committed; it cannot be aborted")]
        if self.state is None:  # ABORT overtook PREPARE: refuse the PREPARE when it comes
            return replace(self, state=DestState.ABORTED), [Record(DestState.ABORTED), Reply()]
        return self, [Reply()]

    def restarted(self) -> tuple[Destination, list[Action]]:
        """The destination daemon restarted with this migration on record."""
        if self.state is DestState.PREPARED:
            return self, [AskDecision()]
        if self.state is DestState.COMMITTED:
            return self, [Thaw()]
        return self, []
