"""After a restart: finish or undo the migrations the journal holds, as the hand-off machines say."""

from __future__ import annotations

import logging

from migrated.daemon.move._destination import MoveDestination
from migrated.daemon.move._journal import DestinationEntry, Journal, SourceEntry
from migrated.daemon.move._source import MoveSource
from migrated.errors import MigError

__all__ = ["recover"]

log = logging.getLogger("migrated.moves")


async def recover(journal: Journal, source: MoveSource, destination: MoveDestination) -> None:
    """Take up every migration on record, oldest first."""
    entries = await journal.all()
    for entry in entries:
        try:
            if isinstance(entry, SourceEntry):
                await source.recover(entry)
            elif not _moved_on(entry, entries):
                await destination.recover(entry)
        except MigError as exc:
            log.warning("migration %s of %s could not be taken up: %s", entry.id[:8], entry.app, exc.message)


def _moved_on(entry: DestinationEntry, entries: list[SourceEntry | DestinationEntry]) -> bool:
    """Whether the app moved on from here after this arrival: then the source side of that move decides."""
    later = [e for e in entries if isinstance(e, SourceEntry) and e.app == entry.app and e.epoch > entry.epoch]
    return entry.left or bool(later)
