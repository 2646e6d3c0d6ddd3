"""Where a daemon keeps its state; shared by the daemon and the ``mig`` command line."""

from __future__ import annotations

import os
from pathlib import Path

from migrated.errors import StateDirError

__all__ = [
    "SOCKET_NAME",
    "default_state_dir",
    "resolve_state_dir",
    "socket_path",
    "socket_path_fits",
    "socket_path_too_long",
    "unusable_state_dir",
]

SOCKET_NAME = "control.sock"
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def default_state_dir() -> Path:
    """``$MIG_DIR``, else ``$XDG_STATE_HOME/migrated``, else ``~/.local/state/migrated``."""
    if env := os.environ.get("MIG_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "migrated"


def resolve_state_dir(given: str | os.PathLike[str] | None) -> Path:
    """The absolute state directory for ``--dir`` (or the default when not given)."""
    return Path(os.path.abspath(os.path.expanduser(given if given else default_state_dir())))


def socket_path(state_dir: Path) -> Path:
    """The control socket inside a state directory."""
    return state_dir / SOCKET_NAME


def socket_path_fits(state_dir: Path) -> bool:
    """Whether the control socket path fits in a Unix socket address."""
    return len(os.fsencode(socket_path(state_dir))) <= _MAX_SOCKET_PATH


def unusable_state_dir(state_dir: Path, exc: OSError) -> StateDirError:
    """The error for a state directory that cannot be created or written."""
    return StateDirError(
        f"cannot use {state_dir} as the state directory ({exc.strerror or exc}); "
        "choose another with --dir or $MIG_DIR, or fix its permissions"
    )


def socket_path_too_long(state_dir: Path) -> StateDirError:
    """The error for a state directory whose socket path does not fit in a Unix socket address."""
    return StateDirError(f"the state directory path {state_dir} is too long for a Unix socket; choose a shorter --dir")
