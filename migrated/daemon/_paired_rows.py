"""The paired table as rows of the daemon's ``paired_peers`` table (the storage of ``PairedPeers``)."""

from __future__ import annotations

import sqlite3

from migrated.daemon._db import Db
from migrated.discovery._paired import PairedPeer

__all__ = ["PairedRows"]

_COLUMNS = ("device_id", "name", "cert_pem", "client_cert_hash", "address", "paired_at")
_INSERT = f"INSERT OR REPLACE INTO paired_peers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


class PairedRows:
    """Paired peers in ``db``; a change blocks until it is durable (pairing is rare, and must not be lost)."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def load(self) -> list[PairedPeer]:
        """Every paired peer."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM paired_peers ORDER BY name"
        rows = self._db.read(lambda conn: conn.execute(query).fetchall())
        return [PairedPeer(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def change(self, keep: PairedPeer | None, drop: list[str]) -> None:
        """Drop the peers ``drop`` and keep ``keep``, in one transaction."""

        def change(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM paired_peers WHERE device_id = ?", [(device,) for device in drop])
            if keep is not None:
                values = tuple(getattr(keep, column) for column in _COLUMNS)
                conn.execute(_INSERT, values)

        self._db.write_now(change)
