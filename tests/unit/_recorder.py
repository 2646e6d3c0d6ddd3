"""A fake that records what a unit under test hands it, and lets a test wait until a check holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WAIT = 30.0  # a bound for a failing test only: a passing one goes on as soon as its check holds


class Recorder:
    """Base of the fakes: ``changed`` is set on every record; ``until`` waits (at most ``WAIT`` s) for a check."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    async def until(self, check: Callable[[], object], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not check():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(what) from None
