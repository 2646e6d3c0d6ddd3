"""Where a daemon keeps its state; shared by the daemon and the ``mig`` command line."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from migrated.errors import StateDirError

__all__ = [
    "SOCKET_NAME",
    "check_owned",
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


def check_owned(path: Path, *, private: bool = False) -> bool:
    """Whether ``path`` exists; StateDirError if it or its target is not ours, or others may write a ``private`` one."""
    try:
        found = os.lstat(path)
        if stat.S_ISLNK(found.st_mode):
            _check_owner(path, found)
            path, found = Path(os.path.realpath(path)), os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    _check_owner(path, found)
    if private and found.st_mode & 0o022:
        raise StateDirError(
            f"{path} can be written by other users (mode {stat.S_IMODE(found.st_mode):04o}), so it may have been "
            "changed; if you trust it, chmod go-w it, else use a state directory of your own"
        )
    return True


def _check_owner(path: Path, found: os.stat_result) -> None:
    # A root daemon must not trust what another user can change: a planted peer or socket runs their apps as root.
    if found.st_uid != os.geteuid():
        raise StateDirError(
            f"{path} belongs to {_user(found.st_uid)}, not to {_user(os.geteuid())}; "
            "use a state directory of your own, or chown it"
        )


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"user {uid}"
