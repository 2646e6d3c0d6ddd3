"""What ``os.scandir`` gives for a directory at the app's home: entries that carry the stats the home sent."""

from __future__ import annotations

import errno
import os
import stat as _stat

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from collections.abc import Iterator
    from typing import Any

__all__ = ["Entries", "HomeDirEntry"]


class HomeDirEntry:
    """What ``os.scandir`` gives for an entry of a directory at home (``os.DirEntry`` cannot be made)."""

    __slots__ = ("_lstat", "_stat", "name", "path")

    def __init__(self, name: Any, path: Any, lstat: os.stat_result, target: os.stat_result | None) -> None:
        self.name = name
        self.path = path
        self._lstat = lstat
        self._stat = target

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"

    def __fspath__(self) -> Any:
        return self.path

    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self._lstat.st_mode)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        found = self._followed(follow_symlinks)
        return found is not None and _stat.S_ISDIR(found.st_mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        found = self._followed(follow_symlinks)
        return found is not None and _stat.S_ISREG(found.st_mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        found = self._followed(follow_symlinks)
        if found is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
        return found

    def inode(self) -> int:
        return self._lstat.st_ino

    def _followed(self, follow: bool) -> os.stat_result | None:
        return self._stat if follow and self.is_symlink() else self._lstat


class Entries:
    """``os.scandir``'s iterator over entries at home: an iterator and a context manager."""

    def __init__(self, entries: list[HomeDirEntry]) -> None:
        self._entries: Iterator[HomeDirEntry] = iter(entries)

    def __iter__(self) -> Entries:
        return self

    def __next__(self) -> HomeDirEntry:
        return next(self._entries)

    def __enter__(self) -> Entries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._entries = iter(())
