"""What a failed write to the state directory means to a user: a full disk, a read-only one, or damage.

SQLite and the file system report these as ``sqlite3.Error`` and ``OSError``; the daemon turns them into one
``StorageError`` sentence at the boundary, so no task dies of them and every command says what to do.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from migrated.errors import StorageError

__all__ = ["disk_problem", "fix", "storage_error"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_READ_ONLY = frozenset({errno.EROFS})
_DENIED = frozenset({errno.EACCES, errno.EPERM})
# Primary SQLite result codes (the extended ones keep them in the low byte).
_LOW = 1 << 20
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_PERM = 13, 8, 10, 14, 3


def disk_problem(exc: BaseException, where: Path) -> str:
    """What ``exc`` says about the disk that holds ``where``, as a phrase ("" when it is no storage failure)."""
    if isinstance(exc, OSError):
        return _os_problem(exc, where)
    if isinstance(exc, sqlite3.Error):
        return _sqlite_problem(exc, where)
    return ""


def storage_error(exc: BaseException, where: Path, what: str) -> StorageError:
    """One sentence for a failed write: ``what`` (e.g. "version not saved"), why, and what to do."""
    problem = disk_problem(exc, where) or f"{where} cannot be written ({exc})"
    return StorageError(f"{what}: {problem}; {fix(problem)}")


def _os_problem(exc: OSError, where: Path) -> str:
    if exc.errno in _FULL:
        return f"the disk that holds {where} is full"
    if exc.errno in _READ_ONLY:
        return f"the disk that holds {where} is read-only"
    if exc.errno in _DENIED:
        return f"{where} may not be written ({exc.strerror})"
    if exc.errno == errno.EIO:
        return f"the disk that holds {where} failed to write (an I/O error)"
    return f"{where} cannot be written ({exc.strerror or exc})"


def _sqlite_problem(exc: sqlite3.Error, where: Path) -> str:
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    if code == _SQLITE_FULL or (code == _SQLITE_IOERR and _nearly_full(where)):
        return f"the disk that holds {where} is full"
    if code == _SQLITE_READONLY:
        return f"the disk that holds {where} is read-only"
    if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_PERM):
        return f"{where} cannot be written ({exc})"
    return ""


def _nearly_full(where: Path) -> bool:
    """Whether the disk under ``where`` has almost no room (SQLite reports a full disk as an I/O error when it
    cannot grow its shared-memory file)."""
    try:
        return shutil.disk_usage(where).free < _LOW
    except OSError:
        return False


def fix(problem: str) -> str:
    """What to do about a ``disk_problem``."""
    if problem.endswith("is full"):
        return "free some space"
    if problem.endswith("read-only"):
        return "remount it read-write or use another --dir"
    return "check the disk and its permissions"
