"""Spare runners: runner processes started ahead, their imports done, each waiting for an app to load.

Taking a spare makes a start, open or thaw cost a load, not an interpreter start (about 100 ms of Python start
and imports). A spare is replaced a moment after it is taken, so the new one does not compete with the load
that took the old one. A spare that died meanwhile is passed over; with no spare at hand a runner is started
as before. ``migrated --spare-runners 0`` keeps none.
"""

from __future__ import annotations

import asyncio
import logging
import os

from migrated.daemon._runner import Runner
from migrated.daemon._tasks import Tasks
from migrated.errors import RunnerError

__all__ = ["REFILL_DELAY", "SpareRunners"]

log = logging.getLogger("migrated.daemon")

REFILL_DELAY = 0.5  # seconds after a spare is taken before its replacement starts


class SpareRunners:
    """Keeps ``count`` runners ready (``count`` 0: none; ``take`` starts one each time)."""

    def __init__(self, tasks: Tasks, count: int) -> None:
        self._tasks = tasks
        self.count = max(0, count)
        self._ready: list[Runner] = []
        self._starting = 0
        self._closed = False

    def start(self) -> None:
        """Start the spares (in the background)."""
        self._refill(delay=0.0)

    async def take(self, cwd: str) -> Runner:
        """A runner for an app that runs in ``cwd``: a spare if one is ready, else a new one."""
        if _is_dir(cwd):  # otherwise the new runner's start says what is wrong with cwd
            while self._ready:
                runner = self._ready.pop(0)
                if runner.proc.returncode is None:
                    self._refill(REFILL_DELAY)
                    return runner
                log.info("spare runner %d ended before it was needed (status %s)", runner.pid, runner.proc.returncode)
        self._refill(REFILL_DELAY)
        return await Runner.spawn(cwd)

    def close(self) -> None:
        """Stop the spares (the daemon stops)."""
        self._closed = True
        for runner in self._ready:
            runner.kill()
        self._ready.clear()

    def _refill(self, delay: float) -> None:
        missing = self.count - len(self._ready) - self._starting
        for _ in range(missing if not self._closed else 0):
            self._starting += 1
            self._tasks.spawn(self._start_one(delay), "spare runner")

    async def _start_one(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            runner = await Runner.spawn("/", spare=True)
        except RunnerError as exc:
            log.warning("no spare runner: %s", exc.message)
            return
        finally:
            self._starting -= 1
        if self._closed:
            runner.kill()
        else:
            self._ready.append(runner)


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)  # one stat of a local directory: no thread needed
