"""Fault points: where the fault tests stop a daemon in the middle of a hand-off, to kill it there."""

from __future__ import annotations

import asyncio
import logging
import os

__all__ = ["fault_point"]

log = logging.getLogger("migrated.moves")


async def fault_point(name: str) -> None:
    """With ``MIGRATED_FAULT_PAUSE=NAME`` log and wait here for ever, so a test can kill the daemon at exactly this
    step. Unset in normal runs, it costs a dict lookup."""
    if os.environ.get("MIGRATED_FAULT_PAUSE") == name:
        log.warning("paused at %s (MIGRATED_FAULT_PAUSE)", name)
        await asyncio.Event().wait()
