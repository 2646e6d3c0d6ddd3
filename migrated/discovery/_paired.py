"""The paired table: the peers this host trusts. The daemon keeps it in its database; this module holds it in
memory, answers who a caller or a name is, and hands every change to its storage before it takes effect."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from migrated.errors import PeerNotFoundError

__all__ = ["PairedPeer", "PairedPeers", "PairedStorage"]


@dataclass(frozen=True, slots=True)
class PairedPeer:
    """A trusted peer: its certificates' hashes pin it, its address is only where it was last seen."""

    name: str
    device_id: str  # SHA-256 of its self-signed certificate: what we pin when we call it
    cert_pem: str
    client_cert_hash: str  # SHA-256 of the certificate it presents when it calls us
    address: str  # HOST:PORT
    paired_at: float


class PairedStorage(Protocol):
    """Where the paired table is kept (each change durable before it returns)."""

    def load(self) -> list[PairedPeer]:
        """Every paired peer."""
        ...

    def change(self, keep: PairedPeer | None, drop: list[str]) -> None:
        """Drop the peers with the device ids ``drop`` and keep ``keep`` (added or replaced), in one change."""
        ...


class PairedPeers:
    """The paired table, in memory and in its storage; every change is stored before it returns."""

    def __init__(self, storage: PairedStorage) -> None:
        self._storage = storage
        self._peers: dict[str, PairedPeer] = {}
        self._by_client: dict[str, PairedPeer] = {}

    def load(self) -> None:
        """Read the table from its storage."""
        self._set(self._storage.load())

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
        gone = [p.device_id for p in self._peers.values() if p.device_id != peer.device_id and p.name == peer.name]
        self._storage.change(peer, gone)
        self._set([*(p for p in self._peers.values() if p.device_id not in gone), peer])

    def remove(self, device_id: str) -> None:
        """Forget a peer at once."""
        self._storage.change(None, [device_id])
        self._set([p for p in self._peers.values() if p.device_id != device_id])

    def seen_at(self, device_id: str, address: str) -> None:
        """Remember where a paired peer was last seen."""
        peer = self._peers.get(device_id)
        if peer is not None and peer.address != address:
            moved = replace(peer, address=address)
            self._storage.change(moved, [])
            self._set([*(p for p in self._peers.values() if p.device_id != device_id), moved])

    def _set(self, peers: list[PairedPeer]) -> None:
        self._peers = {p.device_id: p for p in peers}
        self._by_client = {p.client_cert_hash: p for p in peers}
