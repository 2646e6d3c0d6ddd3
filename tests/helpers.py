"""What several test modules read of a daemon's state directory, as a user with sqlite3 at hand would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["journal", "json_state_files", "paired_rows", "rows"]


def rows(state_dir: Path, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the daemon's database, read without writing (the daemon may be running)."""
    path = state_dir / "checkpoints.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def journal(state_dir: Path, role: str) -> list[dict[str, Any]]:
    """The move journal's entries in one role (source or destination), oldest first, as dicts."""
    found = rows(state_dir, "SELECT id, app, epoch, state, detail FROM moves WHERE role = ? ORDER BY rowid", (role,))
    return [
        {"id": id_, "role": role, "app": app, "epoch": epoch, "state": state, **json.loads(detail)}
        for id_, app, epoch, state, detail in found
    ]


def paired_rows(state_dir: Path) -> list[tuple[Any, ...]]:
    """The paired table, as stored."""
    return rows(state_dir, "SELECT * FROM paired_peers ORDER BY device_id")


def json_state_files(state_dir: Path) -> list[Path]:
    """JSON files in the state directory: there should be none (its state lives in its database)."""
    return sorted(path for path in state_dir.rglob("*.json") if "code" not in path.relative_to(state_dir).parts)
