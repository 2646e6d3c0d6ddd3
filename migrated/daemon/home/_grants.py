"""Files this host serves for an app whose home moved on (``mig rehome --files stay``): which app, to which new
home, from which folder. Kept in the daemon's ``file_grants`` table."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from migrated.daemon._db import Db

__all__ = ["FileGrants", "Grant"]


@dataclass(frozen=True, slots=True)
class Grant:
    """``device`` (the app's home now) may use the files in ``cwd`` here."""

    device: str
    cwd: str


class FileGrants:
    """The grants by app, in memory and in the daemon's tables."""

    def __init__(self, db: Db) -> None:
        self._db = db
        self._grants: dict[str, Grant] = {}

    def load(self) -> None:
        """Read the grants (at start)."""
        rows = self._db.read(lambda conn: conn.execute("SELECT app, device, cwd FROM file_grants").fetchall())
        self._grants = {app: Grant(device, cwd) for app, device, cwd in rows}

    def get(self, app: str) -> Grant | None:
        """The grant for ``app``, if there is one."""
        return self._grants.get(app)

    async def grant(self, app: str, device: str, cwd: str) -> None:
        """Serve ``app``'s files (in ``cwd``) to ``device`` from now on."""

        def change(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO file_grants (app, device, cwd) VALUES (?, ?, ?)", (app, device, cwd))

        await self._db.write(change)
        self._grants[app] = Grant(device, cwd)

    async def revoke(self, app: str) -> bool:
        """Serve ``app``'s files no longer as another host's; return whether there was a grant."""
        if self._grants.pop(app, None) is None:
            return False

        def change(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM file_grants WHERE app = ?", (app,))

        await self._db.write(change)
        return True
