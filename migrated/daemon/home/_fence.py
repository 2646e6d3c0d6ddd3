"""Fencing at an app's home: only the copy at the current epoch may do the app's I/O; an older one must stop."""

from __future__ import annotations

from migrated.daemon._records import AppRecord, Remote, State
from migrated.errors import AppStateError, StaleCopyError

__all__ = ["fence"]


def fence(record: AppRecord | None, app: str, epoch: int, device: str, name: str, home: str) -> bool:
    """Check the I/O of ``app``'s copy at ``epoch`` on the host ``device`` (called ``name``) against the home's
    ``record``; return whether the record changed (the app moved on, to that host: the record follows it and
    must be saved). An older epoch is a stale copy, refused with ``StaleCopyError``."""
    handed_off = record is not None and record.moving and epoch > record.place.epoch  # it committed: decided
    if record is None or (record.state is not State.AWAY and not handed_off):
        raise AppStateError(f"{app!r} does not run away from {home}; stop that copy")
    place = record.place
    if epoch < place.epoch:
        raise StaleCopyError(f"epoch {epoch} of {app!r} is stale (now {place.epoch}); stop it")
    if epoch == place.epoch and device == place.host_device:
        return False
    if epoch == place.epoch:
        raise AppStateError(f"{app!r} at epoch {epoch} runs on {place.host}, not here")
    place.epoch, place.host, place.host_device = epoch, name, device
    record.remote = Remote()
    return True
