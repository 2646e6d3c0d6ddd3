"""The paired table: the peers this host trusts, kept in ``DIR/peers.json`` (0600), replaced atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from migrated._paths import check_owned
from migrated.errors import PeerNotFoundError, StateDirError

__all__ = ["PairedPeer", "PairedPeers"]


@dataclass(frozen=True, slots=True)
class PairedPeer:
    """A trusted peer: its certificates' hashes pin it, its address is only where it was last seen."""

    name: str
    device_id: str  # SHA-256 of its self-signed certificate: what we pin when we call it
    cert_pem: str
    client_cert_hash: str  # SHA-256 of the certificate it presents when it calls us
    address: str  # HOST:PORT
    paired_at: float


class PairedPeers:
    """The paired table, in memory and on disk; every change is on disk before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._peers: dict[str, PairedPeer] = {}
        self._by_client: dict[str, PairedPeer] = {}

    def load(self) -> None:
        """Read the table, if it is ours and only we can write it; a missing file is an empty table."""
        try:
            data = json.loads(self.path.read_text()) if check_owned(self.path, private=True) else []
        except FileNotFoundError:
            data = []
        except (OSError, ValueError) as exc:
            raise StateDirError(
                f"the paired table {self.path} cannot be read ({exc}); restore it from a backup or remove it and "
                "pair again"
            ) from None
        self._set([PairedPeer(**entry) for entry in data])

    def __iter__(self) -> Iterator[PairedPeer]:
        return iter(sorted(self._peers.values(), key=lambda peer: peer.name))

    def by_device(self, device_id: str) -> PairedPeer | None:
        """The paired peer with this device id."""
        return self._peers.get(device_id)

    def admits(self, client_cert_hash: str) -> bool:
        """Whether a caller presenting this client certificate is paired."""
        return client_cert_hash in self._by_client

    def by_client(self, client_cert_hash: str) -> PairedPeer | None:
        """The paired peer that presents this client certificate."""
        return self._by_client.get(client_cert_hash)

    def find(self, host: str) -> PairedPeer:
        """The paired peer named ``host`` (or with that device id, or a unique prefix of it)."""
        matches = [p for p in self._peers.values() if host in (p.name, p.device_id, p.address)]
        if not matches and len(host) >= 8:
            matches = [p for p in self._peers.values() if p.device_id.startswith(host.lower())]
        if len(matches) != 1:
            names = ", ".join(p.name for p in self) or "none"
            raise PeerNotFoundError(f"no paired host is called {host!r} (paired: {names}); see `mig pair --list`")
        return matches[0]

    def add(self, peer: PairedPeer) -> None:
        """Add or replace a peer; a different device that had the same name is replaced (it was re-paired)."""
        kept = [p for p in self._peers.values() if p.device_id != peer.device_id and p.name != peer.name]
        self._save([*kept, peer])

    def remove(self, device_id: str) -> None:
        """Forget a peer at once."""
        self._save([p for p in self._peers.values() if p.device_id != device_id])

    def seen_at(self, device_id: str, address: str) -> None:
        """Remember where a paired peer was last seen."""
        peer = self._peers.get(device_id)
        if peer is not None and peer.address != address:
            self._save([*(p for p in self._peers.values() if p.device_id != device_id), replace(peer, address=address)])

    def _save(self, peers: list[PairedPeer]) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps([asdict(p) for p in sorted(peers, key=lambda p: p.name)], indent=1).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StateDirError(
                f"cannot write the paired table {self.path}: {exc.strerror}; free space or fix it"
            ) from None
        self._set(peers)

    def _set(self, peers: list[PairedPeer]) -> None:
        self._peers = {p.device_id: p for p in peers}
        self._by_client = {p.client_cert_hash: p for p in peers}
