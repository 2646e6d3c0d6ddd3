"""The daemon's peers: its peer port, mDNS, pairing, the paired table, probes and channels to paired peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

import migrated
from migrated.daemon._config import Address, PeerSettings, parse_address
from migrated.daemon._peer_service import PairingService, PeerService, hello_party
from migrated.discovery._paired import PairedPeer, PairedPeers
from migrated.discovery._table import PeerRow, PeerTable, Probe, Sighting
from migrated.errors import (
    ConfigError,
    MigError,
    NotPairedError,
    PeerError,
    PeerIdentityError,
    PeerNotFoundError,
    PeerUnreachableError,
    error_class,
)
from migrated.transport._auth import PairedOnly
from migrated.transport._errors import ERROR_KEY, ErrorInterceptor
from migrated.transport._identity import Identity, cert_hash, channel_credentials, channel_options, load_identity
from migrated.transport._pairing import CodeBook, PairingClient, Party, normalize_code
from migrated.transport._probe import fetch_certificate
from migrated.transport.v1 import peer_pb2 as pb
from migrated.transport.v1 import peer_pb2_grpc

if TYPE_CHECKING:
    from migrated.daemon._moves import Moves
    from migrated.discovery import Advert, Mdns

__all__ = ["MAX_MESSAGE", "Peers"]

log = logging.getLogger("migrated.peers")

MAX_MESSAGE = 16 * 1024 * 1024
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 3.0
CODE_TTL = 300.0
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
        apps_running: Callable[[], int],
        handshake_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.settings = settings
        self.apps_running = apps_running
        self.handshake_timeout = handshake_timeout
        self.identity_dir = state_dir / "identity"
        self.identity: Identity = load_identity(self.identity_dir, name)
        self.party = Party(name, self.identity.device_id, self.identity.client_cert_hash)
        self.paired = PairedPeers(state_dir / "peers.json")
        self.paired.load()
        self.codes = CodeBook()
        self.table = PeerTable(self.identity.device_id)
        self.table.static = tuple(str(address) for address in settings.peers)
        self.listen: Address | None = None
        self._server: grpc.aio.Server | None = None
        self._mdns: Mdns | None = None
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._wake = asyncio.Event()
        self._moves: Moves | None = None

    def serve_moves(self, moves: Moves) -> None:
        """Let paired peers move apps here (and send the console of ours home)."""
        self._moves = moves

    def moves(self) -> Moves:
        """The moves this host takes part in."""
        if self._moves is None:
            raise PeerUnreachableError(f"{self.name} is still starting; try again in a moment")
        return self._moves

    # -- lifecycle

    async def start(self) -> None:
        """Open the peer port and start mDNS."""
        await self._serve()
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

    async def _serve(self) -> None:
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
        peer_pb2_grpc.add_PairingServicer_to_server(PairingService(self), server)
        peer_pb2_grpc.add_PeerServicer_to_server(PeerService(self), server)
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

    def issue_code(self, ttl: float) -> tuple[str, float]:
        """Show a new pairing code; return it and its expiry as Unix time."""
        if self.listen is None:
            raise ConfigError("this daemon has no peer port, so no host can pair with it; start it with --listen")
        ttl = ttl if ttl > 0 else CODE_TTL
        code, _ = self.codes.issue(time.monotonic(), ttl)
        return code, time.time() + ttl

    async def pair(self, host: str, code: str) -> PeerRow:
        """Pair with ``host`` using the code it shows."""
        code = normalize_code(code)
        name, address, expected = self._target(host)
        try:
            cert = await fetch_certificate(address.host, address.port, *self._tls_files(), PROBE_TIMEOUT)
        except OSError as exc:
            raise PeerUnreachableError(
                f"{name} at {address} does not answer ({exc}); check that its daemon runs and the address is right"
            ) from None
        device_id = cert_hash(cert.pem)
        if expected and device_id != expected:
            raise PeerIdentityError(
                f"the machine at {address} is not the {name} that mDNS announced (its certificate differs); "
                "pair by address if you trust it"
            )
        client = PairingClient(code, self.party)
        channel = self._channel(device_id, cert.pem, address)
        stub = peer_pb2_grpc.PairingStub(channel)
        reply = await self._call(
            stub.PairBegin(
                pb.PairBeginRequest(client=self.hello(), spake_message=client.message), timeout=CALL_TIMEOUT
            ),
            name,
            address,
        )
        server = hello_party(reply.server)
        if server.device_id != device_id:
            raise PeerIdentityError(f"{name} at {address} answered with another certificate than its TLS one")
        confirm = client.finish(reply.spake_message, server, reply.confirm)
        await self._call(
            stub.PairFinish(pb.PairFinishRequest(session=reply.session, confirm=confirm), timeout=CALL_TIMEOUT),
            name,
            address,
        )
        peer_address = Address(address.host, reply.server.port or address.port)
        self.paired.add(
            PairedPeer(
                name=server.name,
                device_id=device_id,
                cert_pem=reply.server.cert_pem.decode(),
                client_cert_hash=server.client_cert_hash,
                address=str(peer_address),
                paired_at=time.time(),
            )
        )
        log.info("paired with %s (%s) at %s", server.name, device_id, peer_address)
        await self._probe(str(peer_address))
        self.changed()
        return self._row(device_id, server.name, str(peer_address))

    def unpair(self, host: str) -> PairedPeer:
        """Forget a paired peer; its calls are refused from now on."""
        peer = self.paired.find(host)
        self.paired.remove(peer.device_id)
        for key in [key for key in self._channels if key[0] == peer.device_id]:
            channel = self._channels.pop(key)
            asyncio.get_running_loop().create_task(channel.close(None))
        log.info("unpaired %s (%s)", peer.name, peer.device_id)
        self.changed()
        return peer

    async def ping(self, host: str, count: int) -> tuple[PeerRow, list[float]]:
        """Ping a paired peer ``count`` times over mutual TLS; return it and the round trips in ms."""
        peer, address = self.paired_target(host)
        stub = self.stub(peer, address)
        rtts: list[float] = []
        reply: pb.PingReply | None = None
        for _ in range(max(1, count)):
            start = time.perf_counter()
            reply = await self._call(stub.Ping(pb.PingRequest(), timeout=CALL_TIMEOUT), peer.name, address)
            rtts.append((time.perf_counter() - start) * 1000)
        assert reply is not None
        self.table.probed(str(address), _probe_of(reply))
        return self._row(peer.device_id, peer.name, str(address)), rtts

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
        channel = self._channel(peer.device_id, peer.cert_pem.encode(), address)
        return peer_pb2_grpc.PeerStub(channel)

    def _channel(self, device_id: str, cert_pem: bytes, address: Address) -> grpc.aio.Channel:
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

    async def _call(self, call: Any, name: str, address: Address) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise _peer_error(exc, name, address) from None

    def _tls_files(self) -> tuple[Path, Path]:
        return self.identity_dir / "client.pem", self.identity_dir / "key.pem"

    def _target(self, host: str) -> tuple[str, Address, str]:
        """Name, address and the advertised device id (if any) of a peer to pair with."""
        try:
            row = self.table.resolve(host, self.paired)
        except PeerNotFoundError:
            try:
                address = parse_address(host, what="the host")
            except ConfigError:
                raise PeerNotFoundError(
                    f"no peer called {host!r} is known; see `mig peers`, or give its address as HOST:PORT"
                ) from None
            return host, address, ""
        return row.name, parse_address(row.address, what="the peer address"), row.device_id

    def _row(self, device_id: str, name: str, address: str) -> PeerRow:
        for row in self.rows():
            if row.device_id == device_id:
                return row
        return PeerRow(name, address, device_id, paired=self.paired.by_device(device_id) is not None)

    # -- probes

    async def _probe_all(self) -> None:
        rows = {row.address: row for row in self.rows() if row.address}
        await asyncio.gather(*(self._probe(address, row) for address, row in rows.items()))

    async def _probe(self, address_text: str, row: PeerRow | None = None) -> None:
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
                cert = await fetch_certificate(address.host, address.port, *self._tls_files(), PROBE_TIMEOUT)
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


def _peer_error(exc: grpc.aio.AioRpcError, name: str, address: Address) -> MigError:
    """One sentence for a failed call to a peer."""
    metadata: Any = exc.trailing_metadata() or ()
    kind = next((value for key, value in metadata if key == ERROR_KEY), None)
    if kind:
        return error_class(str(kind))(exc.details() or f"{name} refused the call")
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and ("handshake" in details.lower() or "CERTIFICATE" in details):
        return PeerIdentityError(
            f"the machine at {address} does not hold {name}'s paired certificate; if {name} was reinstalled, "
            f"`mig unpair {name}` and pair again"
        )
    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
        return NotPairedError(f"{name} refused this host: {details}")
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return PeerUnreachableError(
            f"{name} at {address} does not answer; check that its daemon runs and the network between the hosts"
        )
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PeerError(f"{name} refused a message as too large: {details}")
    return PeerUnreachableError(f"{name} at {address} failed the call: {exc.code().name}: {details}")
