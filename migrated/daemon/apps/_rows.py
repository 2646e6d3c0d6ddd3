"""App records as rows of the ``app_records`` table: what a restarted daemon needs of each app."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from migrated.daemon._db import Change
from migrated.daemon._records import AppRecord, AppSpec, Place, State

__all__ = ["Saved", "delete", "load", "save"]

_SPEC = ("name", "kind", "file", "app_class", "cwd", "args", "autosave", "keep", "restart", "home_cwd")
_PLACE = ("epoch", "host", "host_device", "home", "home_device", "files_home", "files_home_name")
_COLUMNS = (*_SPEC, "state", "reason", *_PLACE, "console_session")


@dataclass(frozen=True, slots=True)
class Saved:
    """One app as a restart finds it."""

    spec: AppSpec
    state: str
    reason: str
    place: Place
    console_session: float  # how this host numbered the app's console (0: not known)


def save(record: AppRecord, state: State | None = None) -> Change:
    """The change that keeps ``record`` (in ``state``, its own by default)."""
    spec, place = record.spec, record.place
    values = (
        spec.name, spec.kind, spec.file, spec.app_class, spec.cwd, json.dumps(list(spec.args)), spec.autosave,
        spec.keep, spec.restart, spec.home_cwd, (state or record.state).value, record.reason, place.epoch,
        place.host, place.host_device, place.home, place.home_device, place.files_home, place.files_home_name,
        record.console.session,
    )  # fmt: skip
    query = f"INSERT OR REPLACE INTO app_records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"

    def change(conn: sqlite3.Connection) -> None:
        conn.execute(query, values)

    return change


def delete(name: str) -> Change:
    """The change that forgets the app called ``name``."""

    def change(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM app_records WHERE name = ?", (name,))

    return change


def load(conn: sqlite3.Connection) -> list[Saved]:
    """Every app on record, by name."""
    found = []
    for row in conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM app_records ORDER BY name"):
        values = dict(zip(_COLUMNS, row, strict=True))
        spec = AppSpec(**{key: values[key] for key in _SPEC if key != "args"}, args=tuple(json.loads(values["args"])))
        place = Place(**{key: values[key] for key in _PLACE})
        found.append(Saved(spec, values["state"], values["reason"], place, float(values["console_session"])))
    return found
