"""One way to try again: a call repeated after pauses that grow, until it succeeds or a deadline passes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from migrated.errors import MigError

__all__ = ["ASK", "COMMIT", "RECONNECT", "TELL", "Backoff", "retry"]

log = logging.getLogger("migrated.daemon")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses between tries: ``first``, then times ``factor`` each time, at most ``most`` seconds."""

    first: float
    factor: float = 2.0
    most: float = 5.0

    def pauses(self) -> Iterator[float]:
        """The pause before each next try."""
        pause = self.first
        while True:
            yield pause
            pause = min(self.most, pause * self.factor)


COMMIT = Backoff(0.5, 2.0, 5.0)  # a decided hand-off: COMMIT again until the destination says it runs the app
ASK = Backoff(1.0, 2.0, 5.0)  # a destination asking its source for a decision it missed
TELL = Backoff(0.5, 2.0, 2.0)  # best-effort news (ABORT): a few tries, then the peer asks itself
RECONNECT = Backoff(1.0, 1.0, 1.0)  # a home link: at once, then each second


async def retry(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    what: str,
    *,
    within: float | None = None,
    tries: int | None = None,
) -> T:
    """``call()`` until it returns; each ``MigError`` is logged and tried again after the next pause. Past
    ``within`` seconds or ``tries`` tries, the last error is raised."""
    deadline = None if within is None else time.monotonic() + within
    pauses = backoff.pauses()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except MigError as exc:
            pause = next(pauses)
            left = None if deadline is None else deadline - time.monotonic()
            if (tries is not None and attempt >= tries) or (left is not None and left <= 0):
                raise
            log.info("%s failed (%s); trying again in %.1f s", what, exc.message, pause)
            await asyncio.sleep(pause if left is None else min(pause, left))
