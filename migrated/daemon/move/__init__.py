"""Moving apps between hosts: the source's side (``MoveSource``, one entry point per mode), the destination's
(``MoveDestination``), the transfer of the chunks a destination lacks, the journal both keep, and the recovery
of what a restart interrupted. The hand-off machines in ``daemon._handoff`` decide; these carry out."""

from migrated.daemon.move._destination import MoveDestination, checked
from migrated.daemon.move._journal import Journal
from migrated.daemon.move._modes import close_away, closing_away, evacuate, evacuate_on_stop
from migrated.daemon.move._recovery import recover
from migrated.daemon.move._source import COMMIT_WAIT, MoveSource
from migrated.daemon.move._transfer import MoveProgress

__all__ = [
    "COMMIT_WAIT",
    "Journal",
    "MoveDestination",
    "MoveProgress",
    "MoveSource",
    "checked",
    "close_away",
    "closing_away",
    "evacuate",
    "evacuate_on_stop",
    "recover",
]
