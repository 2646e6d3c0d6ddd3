"""An app's events at its home, in order: numbered within a session and kept until the app has handled them."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from migrated.runtime import _wire

__all__ = ["Event", "EventQueue", "accepted", "new_session"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event in a home's queue: its number and its payload (header and bytes) as the runner gets it."""

    seq: int
    payload: bytes


class EventQueue:
    """An app's events in order, numbered within ``session``; kept until the app has handled them."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.next_seq = 1
        self._events: deque[Event] = deque()
        self.bytes = 0

    def add(self, kind: str, header: dict[str, Any], data: bytes) -> Event:
        """Number a new event."""
        event = Event(
            self.next_seq,
            _wire.io_payload({**header, "session": self.session, "seq": self.next_seq, "type": kind}, data),
        )
        self.next_seq += 1
        self._events.append(event)
        self.bytes += len(event.payload)
        return event

    def ack(self, session: str, seq: int) -> None:
        """The app handled every event up to ``seq``: forget them."""
        if session != self.session:
            return
        while self._events and self._events[0].seq <= seq:
            self.bytes -= len(self._events.popleft().payload)

    def after(self, session: str, seq: int) -> list[Event]:
        """The events a copy whose cursor is (``session``, ``seq``) has not handled (all of them when the cursor
        is from another session: a home restarted, or the app came from another home)."""
        start = seq if session == self.session else 0
        return [event for event in self._events if event.seq > start]

    def clear(self) -> None:
        """Drop every event (the app ended)."""
        self._events.clear()
        self.bytes = 0


def new_session() -> str:
    """A numbering of events of its own: for each home side of an app (a daemon restart or a close starts anew,
    and a copy's cursor from the old numbering must not skip the new events)."""
    return uuid.uuid4().hex[:16]


def accepted(event: Event) -> str:
    """The connection an accept event introduces ("" for any other event)."""
    header, _ = _wire.Frame(_wire.Kind.EVENT, event.payload).io()
    return str(header.get("conn", "")) if header.get("type") == "accept" else ""
