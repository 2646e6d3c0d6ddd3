"""The daemon's state directory: created private (0700), checked ours and writable, locked by one daemon."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from migrated._paths import check_owned, socket_path, socket_path_fits, socket_path_too_long, unusable_state_dir
from migrated.errors import DirectoryLockedError

__all__ = ["StateDir"]

# If others can write these, a key or a paired peer may be planted (the store holds the paired table).
_PRIVATE = frozenset(
    {"identity", "peers.json", "checkpoints.sqlite", "checkpoints.sqlite-wal", "checkpoints.sqlite-shm"}
)


class StateDir:
    """An exclusively locked state directory; ``close()`` releases it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = -1

    @property
    def socket(self) -> Path:
        """The control socket path."""
        return socket_path(self.path)

    def open(self) -> None:
        """Create the directory if needed, check it is ours, make it private, take the lock, clear a stale socket."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_owned(self.path)  # after mkdir: another user may have made it first
            os.chmod(self.path, 0o700)
            self._check_entries()  # once private: nothing new can be planted after the listing
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise unusable_state_dir(self.path, exc) from None
        if not socket_path_fits(self.path):
            raise socket_path_too_long(self.path)
        self._lock()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def _check_entries(self) -> None:
        """Refuse entries another user owns (the store, the socket, the lock, the keys) before any is used."""
        for entry in self.path.iterdir():
            check_owned(entry, private=entry.name in _PRIVATE)
        identity = self.path / "identity"
        for entry in identity.iterdir() if identity.is_dir() else ():
            check_owned(entry, private=True)

    def _lock(self) -> None:
        fd = os.open(self.path / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryLockedError(
                f"another migrated (pid {owner}) already owns {self.path}; "
                "stop it first or start this one with another --dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Remove the socket and release the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
