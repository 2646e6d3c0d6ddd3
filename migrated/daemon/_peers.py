"""The daemon's peers: its peer port, mDNS, the paired table, probes, and calls to paired peers over mutual TLS.

What the peer port serves is the composition root's to give (``start``); pairing is ``_pairing``'s. A failed call
to a peer is the error class it stands for (``transport._errors.error_of``); a handshake that fails because
the host presents another certificate than the paired one is found by fetching the certificate it presents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

import migrated
from migrated.daemon._config import Address, PeerSettings, parse_address
from migrated.discovery._paired import PairedPeer, PairedPeers
from migrated.discovery._table import PeerRow, PeerTable, Probe, Sighting
from migrated.errors import (
    ConfigError,
    MigError,
    NotPairedError,
    PeerIdentityError,
    PeerNotFoundError,
    PeerUnreachableError,
)
from migrated.transport._auth import PairedOnly
from migrated.transport._errors import ErrorInterceptor, error_of
from migrated.transport._identity import Identity, cert_hash, channel_credentials, channel_options, load_identity
from migrated.transport._probe import fetch_certificate
from migrated.transport.v1 import peer_pb2 as pb
from migrated.transport.v1 import peer_pb2_grpc

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from migrated.discovery import Advert, Mdns

__all__ = ["MAX_MESSAGE", "Peers"]

log = logging.getLogger("migrated.peers")

MAX_MESSAGE = 16 * 1024 * 1024
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 3.0
CALL_TIMEOUT = 10.0
# A cut link must fail a call (and so a move) within seconds, not when TCP gives up after minutes.
KEEPALIVE_CHANNEL = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
KEEPALIVE_SERVER = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 4000),
    ("grpc.http2.max_ping_strikes", 0),
]


class Peers:
    """Everything this daemon knows and does about other daemons."""

    def __init__(
        self,
        state_dir: Path,
        name: str,
        settings: PeerSettings,
        paired: PairedPeers,
        apps_running: Callable[[], int],
        handshake_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.settings = settings
        self.apps_running = apps_running
        self.handshake_timeout = handshake_timeout
        self.identity_dir = state_dir / "identity"
        self.identity: Identity = load_identity(self.identity_dir, name)
        self.paired = paired
        self.table = PeerTable(self.identity.device_id)
        self.table.static = tuple(str(address) for address in settings.peers)
        self.listen: Address | None = None
        self._server: grpc.aio.Server | None = None
        self._mdns: Mdns | None = None
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._wake = asyncio.Event()

    # -- lifecycle

    async def start(self, services: Callable[[grpc.aio.Server], None]) -> None:
        """Open the peer port with the services ``services`` adds to its server, and start mDNS."""
        await self._serve(services)
        if self.settings.mdns and self.listen is not None:
            from migrated.discovery import Mdns  # zeroconf costs its import only where mDNS runs

            self._mdns = Mdns(self._on_mdns, list(self.settings.mdns_interfaces) or None)
            await self._mdns.start(self.advert())

    async def run_probes(self) -> None:
        """Probe every peer now and then (at once when something changed); runs until cancelled."""
        while True:
            await self._probe_all()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_INTERVAL):
                    await self._wake.wait()

    async def close(self) -> None:
        """Say goodbye over mDNS, close channels, stop the peer port."""
        if self._mdns is not None:
            await self._mdns.close()
        for channel in self._channels.values():
            await channel.close(None)
        if self._server is not None:
            await self._server.stop(grace=1.0)

    async def _serve(self, services: Callable[[grpc.aio.Server], None]) -> None:
        settings = self.settings
        server = grpc.aio.server(
            interceptors=[
                ErrorInterceptor(),
                PairedOnly(
                    ("migrated.v1.Peer",),
                    self.paired.admits,
                    f"{self.name} has not paired with this host; run `mig pair` on {self.name}, then "
                    f"`mig pair {self.name} CODE` on this host",
                ),
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000)),
                ("grpc.so_reuseport", 0),
                *KEEPALIVE_SERVER,
            ],
        )
        self._server = server
        services(server)
        address = settings.listen
        try:
            port = server.add_secure_port(str(address), self.identity.server_credentials())
        except RuntimeError:
            if settings.listen_given:
                raise ConfigError(
                    f"cannot listen on {address}: the port is taken or the address is not this host's; "
                    "choose another with --listen ADDR:PORT"
                ) from None
            address = Address(address.host, 0)
            port = server.add_secure_port(str(address), self.identity.server_credentials())
            log.warning("port %d is taken; the peer port is %d instead", settings.listen.port, port)
        await server.start()
        self.listen = Address(address.host, port)
        log.info("peer port on %s, device id %s", self.listen, self.identity.device_id)

    def advert(self) -> Advert:
        """What mDNS says about this daemon."""
        assert self.listen is not None
        from migrated.discovery import Advert

        host = self.listen.host
        addresses = () if host in ("0.0.0.0", "::") else (host,)
        return Advert(self.name, self.identity.device_id, self.listen.port, addresses, migrated.__version__)

    def hello(self) -> pb.PeerHello:
        """How this host introduces itself while pairing."""
        return pb.PeerHello(
            name=self.name,
            cert_pem=self.identity.cert_pem,
            client_cert_pem=self.identity.client_cert_pem,
            port=self.listen.port if self.listen else 0,
            version=migrated.__version__,
        )

    def changed(self) -> None:
        """The paired table or the sightings changed: probe soon."""
        self._wake.set()

    def _on_mdns(self, seen: dict[str, Advert]) -> None:
        sightings = []
        for advert in seen.values():
            host = advert.addresses[0] if advert.addresses else ""
            if host:
                sightings.append(
                    Sighting(advert.name, advert.device_id, str(Address(host, advert.port)), advert.version)
                )
        self.table.see(sightings, time.time())
        self.changed()

    # -- what the control API asks

    def rows(self) -> list[PeerRow]:
        """Every known peer."""
        return self.table.rows(self.paired)

    async def forget(self, device_id: str) -> None:
        """Close the channels to a peer that is no longer paired."""
        for key in [key for key in self._channels if key[0] == device_id]:
            await self._channels.pop(key).close(None)

    async def ping(self, host: str, count: int) -> tuple[PeerRow, list[float]]:
        """Ping a paired peer ``count`` times over mutual TLS; return it and the round trips in ms."""
        peer, address = self.paired_target(host)
        rtts: list[float] = []
        reply: pb.PingReply | None = None
        for _ in range(max(1, count)):
            start = time.perf_counter()
            reply = await self.call(peer, "Ping", pb.PingRequest(), CALL_TIMEOUT)
            rtts.append((time.perf_counter() - start) * 1000)
        assert reply is not None
        self.table.probed(str(address), _probe_of(reply))
        return self.row(peer.device_id, peer.name, str(address)), rtts

    # -- calling paired peers

    def paired_target(self, host: str) -> tuple[PairedPeer, Address]:
        """The paired peer ``host`` names and the address to call it at; refuse unpaired ones."""
        try:
            row = self.table.resolve(host, self.paired)
        except PeerNotFoundError:
            row = None
        peer = self.paired.by_device(row.device_id) if row and row.device_id else None
        if peer is None:
            with contextlib.suppress(PeerNotFoundError):
                peer = self.paired.find(host)
        if peer is None:
            if row is None:
                raise PeerNotFoundError(
                    f"no peer called {host!r} is known; see `mig peers`, or pair it with `mig pair {host} CODE`"
                )
            raise NotPairedError(
                f"{row.name} is not paired with this host; run `mig pair` on {row.name}, then "
                f"`mig pair {row.name} CODE` here"
            )
        address = row.address if row is not None and row.address else peer.address
        return peer, parse_address(address, what="the peer address")

    def stub(self, peer: PairedPeer, address: Address) -> peer_pb2_grpc.PeerAsyncStub:
        """A Peer stub over mutual TLS, pinned to the peer's certificate."""
        channel = self.channel(peer.device_id, peer.cert_pem.encode(), address)
        return peer_pb2_grpc.PeerStub(channel)

    def channel(self, device_id: str, cert_pem: bytes, address: Address) -> grpc.aio.Channel:
        key = (device_id, str(address))
        channel = self._channels.get(key)
        if channel is None:
            channel = grpc.aio.secure_channel(
                str(address),
                channel_credentials(self.identity, cert_pem),
                options=[
                    *channel_options(),
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                    *KEEPALIVE_CHANNEL,
                ],
            )
            self._channels[key] = channel
        return channel

    async def call(self, peer: PairedPeer, method: str, request: Message, deadline: float) -> Any:
        """One call to a paired peer, at the address it was last seen at, of at most ``deadline`` seconds; a
        failure is the error it stands for."""
        _, address = self.paired_target(peer.device_id)
        try:
            return await getattr(self.stub(peer, address), method)(request, timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc, peer, address) from None

    async def stage(self, peer: PairedPeer, requests: AsyncIterator[pb.StageRequest]) -> pb.StageReply:
        """Stream a version to a paired peer (``Stage``)."""
        _, address = self.paired_target(peer.device_id)
        try:
            reply: pb.StageReply = await self.stub(peer, address).Stage(requests, timeout=3600)
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc, peer, address) from None
        return reply

    async def home_link(self, device: str, requests: AsyncIterator[pb.LinkUp]) -> AsyncIterator[pb.LinkDown]:
        """Open the home link stream to the paired host ``device``; its replies, as they come."""
        peer, address = self.paired_target(device)
        try:
            async for down in self.stub(peer, address).HomeLink(requests):
                yield down
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc, peer, address) from None

    async def relay(
        self, peer: PairedPeer, method: str, request: bytes, deadline: float | None
    ) -> AsyncIterator[bytes]:
        """The replies of the paired host ``peer`` to a Control call relayed to it (``Relay``); the call ends
        when the caller stops reading."""
        _, address = self.paired_target(peer.device_id)
        call = self.stub(peer, address).Relay(pb.RelayRequest(method=method, request=request), timeout=deadline)
        try:
            async for reply in call:
                yield reply.reply
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc, peer, address) from None
        finally:
            call.cancel()

    async def _failure(self, exc: grpc.aio.AioRpcError, peer: PairedPeer, address: Address) -> MigError:
        """The error a failed call stands for; an unreachable host that presents another certificate than the
        paired one is named as such."""
        error = error_of(exc, peer.name)
        if exc.code() != grpc.StatusCode.UNAVAILABLE or not isinstance(error, PeerUnreachableError):
            return error
        try:
            cert = await fetch_certificate(address.host, address.port, *self.tls_files(), PROBE_TIMEOUT)
        except OSError:
            return error
        if cert_hash(cert.pem) != peer.device_id:
            return PeerIdentityError(
                f"the machine at {address} does not hold {peer.name}'s paired certificate; if {peer.name} was "
                f"reinstalled, `mig unpair {peer.name}` and pair again"
            )
        return error

    def tls_files(self) -> tuple[Path, Path]:
        return self.identity_dir / "client.pem", self.identity_dir / "key.pem"

    def row(self, device_id: str, name: str, address: str) -> PeerRow:
        for row in self.rows():
            if row.device_id == device_id:
                return row
        return PeerRow(name, address, device_id, paired=self.paired.by_device(device_id) is not None)

    # -- probes

    async def _probe_all(self) -> None:
        rows = {row.address: row for row in self.rows() if row.address}
        await asyncio.gather(*(self.probe(address, row) for address, row in rows.items()))

    async def probe(self, address_text: str, row: PeerRow | None = None) -> None:
        now = time.time()
        try:
            address = parse_address(address_text, what="the peer address")
        except ConfigError:
            return
        peer = next((p for p in self.paired if p.address == address_text), None)
        if row is not None and row.device_id:
            peer = self.paired.by_device(row.device_id) or peer
        if peer is not None:
            probe = await self._ping_probe(peer, address, now)
            if probe.reachable:
                self.paired.seen_at(peer.device_id, address_text)
        else:
            try:
                cert = await fetch_certificate(address.host, address.port, *self.tls_files(), PROBE_TIMEOUT)
                probe = Probe(True, now, cert_hash(cert.pem), cert.name)
            except OSError:
                probe = Probe(False, now)
        self.table.probed(address_text, probe)

    async def _ping_probe(self, peer: PairedPeer, address: Address, now: float) -> Probe:
        try:
            reply = await self.stub(peer, address).Ping(pb.PingRequest(), timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            refused = exc.code() == grpc.StatusCode.PERMISSION_DENIED
            return Probe(refused, now, peer.device_id if refused else "", peer.name)
        return _probe_of(reply, now)


def _probe_of(reply: pb.PingReply, now: float | None = None) -> Probe:
    return Probe(True, now or time.time(), reply.device_id, reply.name, reply.version, reply.apps_running, reply.load)
