"""The daemon's background tasks, supervised: each runs in the daemon's task group; a failure is logged with its
traceback and handed to whoever started the task, never lost; cancellation passes through untouched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from migrated.errors import MigError

__all__ = ["Tasks", "owned"]

log = logging.getLogger("migrated.daemon")

T = TypeVar("T")
OnFailure = Callable[[Exception], None]


class Tasks:
    """Starts background work in ``group`` and keeps track of it until it ends."""

    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(
        self, work: Coroutine[Any, Any, T], name: str, on_failure: OnFailure | None = None
    ) -> asyncio.Task[T | None]:
        """Run ``work`` in the background; a failure is logged and given to ``on_failure``."""
        task = self._group.create_task(_supervised(work, name, on_failure), name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    def cancel(self, prefix: str = "") -> None:
        """Cancel the running tasks whose name starts with ``prefix`` (all of them by default)."""
        for task in list(self._running):
            if task.get_name().startswith(prefix):
                task.cancel()


async def _supervised(work: Coroutine[Any, Any, T], name: str, on_failure: OnFailure | None) -> T | None:
    try:
        return await work
    except Exception as exc:  # CancelledError is a BaseException: it passes
        if isinstance(exc, MigError):
            log.warning("%s failed: %s", name, exc.message)
        else:
            log.exception("%s failed", name)  # a bug: its traceback is what someone needs
        if on_failure is not None:
            on_failure(exc)
        return None


def owned(work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A task whose creator awaits or cancels it (a part of a larger piece of work); a failure it ends with
    is logged, never lost."""
    task = asyncio.get_running_loop().create_task(work, name=name)
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or (exc := task.exception()) is None:
        return
    if isinstance(exc, MigError):
        log.warning("%s failed: %s", task.get_name(), exc.message)
    else:
        log.error("%s failed", task.get_name(), exc_info=exc)
