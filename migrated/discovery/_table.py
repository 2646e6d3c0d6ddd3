"""The peer table: what mDNS, the configured peers, the paired table and the last probes say, merged. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from migrated.discovery._paired import PairedPeer
from migrated.errors import PeerNotFoundError

__all__ = ["HIDE_AFTER_FAILURES", "PeerRow", "PeerTable", "Probe", "Sighting"]

HIDE_AFTER_FAILURES = 2  # an unpaired peer seen only over mDNS that stops answering drops out of the list


@dataclass(frozen=True, slots=True)
class Sighting:
    """A daemon's mDNS advert, as far as the table cares."""

    name: str
    device_id: str
    address: str  # HOST:PORT
    version: str


@dataclass(frozen=True, slots=True)
class Probe:
    """The outcome of the last reachability check of one address."""

    reachable: bool
    at: float
    device_id: str = ""  # the certificate that answered
    name: str = ""
    version: str = ""
    apps_running: int = -1
    load: float = -1.0
    failures: int = 0  # consecutive


@dataclass(slots=True)
class PeerRow:
    """One peer, as ``mig peers`` shows it."""

    name: str
    address: str
    device_id: str
    paired: bool = False
    reachable: bool = False
    version: str = ""
    apps_running: int = -1
    load: float = -1.0
    sources: set[str] = field(default_factory=set)
    last_seen: float = 0.0
    paired_at: float = 0.0
    failures: int = 0


class PeerTable:
    """Merge the sources into rows keyed by device id (or by address while the device is unknown)."""

    def __init__(self, own_device_id: str) -> None:
        self.own_device_id = own_device_id
        self.sightings: dict[str, Sighting] = {}
        self.seen_at: dict[str, float] = {}
        self.static: tuple[str, ...] = ()
        self.probes: dict[str, Probe] = {}  # by address

    def see(self, sightings: Iterable[Sighting], now: float) -> None:
        """Replace what mDNS shows."""
        self.sightings = {s.device_id: s for s in sightings if s.device_id != self.own_device_id}
        for device_id in self.sightings:
            self.seen_at.setdefault(device_id, now)
        for device_id in list(self.seen_at):
            if device_id in self.sightings:
                self.seen_at[device_id] = max(self.seen_at[device_id], now)

    def probed(self, address: str, probe: Probe) -> None:
        """Record a probe of ``address``, counting consecutive failures."""
        previous = self.probes.get(address)
        if not probe.reachable:
            failures = (previous.failures if previous else 0) + 1
            kept = previous or probe
            probe = Probe(False, probe.at, kept.device_id, kept.name, kept.version, -1, -1.0, failures)
        self.probes[address] = probe

    def rows(self, paired: Iterable[PairedPeer]) -> list[PeerRow]:
        """Every peer worth showing, sorted by name."""
        rows: dict[str, PeerRow] = {}
        for peer in paired:
            row = rows.setdefault(peer.device_id, PeerRow(peer.name, peer.address, peer.device_id))
            row.paired, row.paired_at = True, peer.paired_at
            row.sources.add("paired")
        for sighting in self.sightings.values():
            row = rows.setdefault(sighting.device_id, PeerRow(sighting.name, sighting.address, sighting.device_id))
            row.name, row.address, row.version = sighting.name, sighting.address, sighting.version
            row.last_seen = self.seen_at.get(sighting.device_id, 0.0)
            row.sources.add("mdns")
        for address in self.static:
            probe = self.probes.get(address)
            key = probe.device_id if probe and probe.device_id else address
            row = rows.setdefault(key, PeerRow(probe.name if probe and probe.name else address, address, key))
            if not row.device_id.strip() or row.device_id == address:
                row.device_id = probe.device_id if probe else ""
            row.sources.add("config")
            if "mdns" not in row.sources:
                row.address = address
        for row in rows.values():
            self._apply_probe(row)
        own = self.own_device_id
        shown = [
            row
            for row in rows.values()
            if row.device_id != own and (row.sources != {"mdns"} or row.failures < HIDE_AFTER_FAILURES)
        ]
        return sorted(shown, key=lambda row: (row.name, row.device_id))

    def _apply_probe(self, row: PeerRow) -> None:
        probe = self.probes.get(row.address)
        if probe is None or (row.device_id and probe.device_id and probe.device_id != row.device_id):
            return  # not probed yet, or another machine answers at that address: not this peer
        row.reachable, row.failures = probe.reachable, probe.failures
        row.version = probe.version or row.version
        row.apps_running, row.load = probe.apps_running, probe.load
        row.last_seen = max(row.last_seen, probe.at if probe.reachable else 0.0)

    def resolve(self, host: str, paired: Iterable[PairedPeer]) -> PeerRow:
        """The one peer that ``host`` names: a name, a device id (or 8+ hex of one), or its HOST:PORT."""
        rows = self.rows(paired)
        tests: list[Callable[[PeerRow], bool]] = [
            lambda row: row.name == host,
            lambda row: row.device_id == host or row.address == host,
            lambda row: len(host) >= 8 and bool(row.device_id) and row.device_id.startswith(host.lower()),
        ]
        for test in tests:
            matches = [row for row in rows if test(row)]
            if len(matches) > 1 and sum(row.paired for row in matches) == 1:
                matches = [row for row in matches if row.paired]  # a spoofed advert does not shadow a paired host
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                ids = ", ".join(row.device_id[:12] for row in matches)
                raise PeerNotFoundError(
                    f"several peers are called {host!r} (device ids {ids}); name one by its device id"
                )
        known = ", ".join(row.name for row in rows) or "none"
        raise PeerNotFoundError(
            f"no peer called {host!r} is known (seen: {known}); check `mig peers`, or give its address as HOST:PORT"
        )
