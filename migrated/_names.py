"""App names: one rule for a name typed on the command line, read from a file or sent by a peer.

A name becomes a path inside the state directory (its code and console folders), so a name that could climb
out of it (``..``, ``/``, a NUL) is refused before anything is stored or removed.
"""

from __future__ import annotations

import re

from migrated.errors import UsageError

__all__ = ["check_app_name", "valid_app_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RULE = "use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def valid_app_name(name: str) -> bool:
    """Whether ``name`` may name an app."""
    return _NAME.fullmatch(name) is not None


def check_app_name(name: str, given_by: str = "", fix: str = "") -> str:
    """``name`` if it may name an app; else ``UsageError``. ``given_by`` says where a name not typed came from
    (e.g. "the export"), ``fix`` what to do instead."""
    if valid_app_name(name):
        return name
    shown = repr(name) if len(name) <= 80 else repr(name[:77]) + "..."
    if given_by:
        raise UsageError(f"{given_by} names its app {shown}, which is not a valid app name; {fix or _RULE}")
    raise UsageError(f"{shown} is not a valid app name; {_RULE}")
