"""Spare runners: runner processes started ahead, their imports done, each waiting for an app to load.

Taking a spare makes a start, open or thaw cost a load, not an interpreter start (about 100 ms of Python start
and imports). A spare is replaced a moment after it is taken, so the new one does not compete with the load
that took the old one. A spare that died meanwhile is passed over; with no spare at hand a runner is started
as before. ``migrated --spare-runners 0`` keeps none.

A move readies one more for the app it brings (``ready_for``): during the pre-copy, that runner imports what the
app had imported and reads the pre-copied version, so the thaw reads only what changed since. It is kept for
that move alone (``take`` with its key), and ended when the move does not come (``forget``, or when more than
``AHEAD_KEPT`` wait).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from migrated.daemon._runner import Runner
from migrated.daemon._tasks import Tasks
from migrated.errors import RunnerError

__all__ = ["AHEAD_KEPT", "REFILL_DELAY", "SpareRunners"]

log = logging.getLogger("migrated.daemon")

REFILL_DELAY = 0.5  # seconds after a spare is taken before its replacement starts
AHEAD_KEPT = 2  # runners readied for arriving apps at most; the oldest goes first


class SpareRunners:
    """Keeps ``count`` runners ready (``count`` 0: none, and none readied for moves; ``take`` starts one each
    time)."""

    def __init__(self, tasks: Tasks, count: int) -> None:
        self._tasks = tasks
        self.count = max(0, count)
        self._ready: list[Runner] = []
        self._ahead: dict[str, Runner] = {}  # readied for a move, by its key
        self._readying: set[str] = set()  # keys whose runner is still starting
        self._starting = 0
        self._closed = False

    def start(self) -> None:
        """Start the spares (in the background)."""
        self._refill(delay=0.0)

    async def ready_for(self, key: str, ahead: dict[str, Any]) -> None:
        """Ready a runner for the app a move brings (``Kind.AHEAD``'s request), to be taken with ``key``."""
        if not self.count or key in self._ahead or key in self._readying or self._closed:
            return
        self._readying.add(key)
        try:
            runner = self._pop_ready() or await Runner.spawn("/", spare=True)
        except RunnerError as exc:
            self._readying.discard(key)
            log.warning("no runner readied for an arriving app: %s", exc.message)
            return
        finally:
            self._refill(REFILL_DELAY)
        if key not in self._readying or self._closed:  # taken, forgotten or closed meanwhile
            runner.kill()
            return
        self._readying.discard(key)
        self._ahead[key] = runner
        while len(self._ahead) > AHEAD_KEPT:
            self.forget(next(iter(self._ahead)))
        try:
            await runner.read_ahead(ahead)
        except RunnerError:
            self.forget(key)

    def forget(self, key: str) -> None:
        """The move ``key`` readied a runner for will not thaw here: end that runner."""
        self._readying.discard(key)
        runner = self._ahead.pop(key, None)
        if runner is not None:
            runner.kill()

    async def take(self, cwd: str, key: str = "") -> Runner:
        """A runner for an app that runs in ``cwd``: the one readied for ``key``, else a spare if one is ready,
        else a new one."""
        self._readying.discard(key)
        readied = self._ahead.pop(key, None) if key else None
        if readied is not None and readied.proc.returncode is None and readied.ready and _is_dir(cwd):
            return readied
        if readied is not None:  # dead, or still reading ahead (a shortcut is no use late): the thaw goes on without
            log.info("the runner readied for %s (pid %d) is not ready; a spare takes the app", key[:8], readied.pid)
            readied.kill()
        if _is_dir(cwd):  # otherwise the new runner's start says what is wrong with cwd
            runner = self._pop_ready()
            if runner is not None:
                self._refill(REFILL_DELAY)
                return runner
        self._refill(REFILL_DELAY)
        return await Runner.spawn(cwd)

    def _pop_ready(self) -> Runner | None:
        """A spare that still runs, if one is ready."""
        while self._ready:
            runner = self._ready.pop(0)
            if runner.proc.returncode is None:
                return runner
            log.info("spare runner %d ended before it was needed (status %s)", runner.pid, runner.proc.returncode)
        return None

    def close(self) -> None:
        """Stop the spares (the daemon stops)."""
        self._closed = True
        for runner in [*self._ready, *self._ahead.values()]:
            runner.kill()
        self._ready.clear()
        self._ahead.clear()

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
