"""Pairing, both sides: this host shows a code (``Pairing.issue_code``) and answers the host that types it
(``PairingService``, open to any caller: nothing is stored unless the caller proves it typed the code), or types
another host's code (``Pairing.pair``). Both sides store the other's certificate hashes in the paired table."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import grpc.aio

from migrated.daemon._config import Address, parse_address
from migrated.daemon._peers import CALL_TIMEOUT, PROBE_TIMEOUT, Peers
from migrated.discovery._paired import PairedPeer
from migrated.discovery._table import PeerRow
from migrated.errors import ConfigError, PairingError, PeerIdentityError, PeerNotFoundError, PeerUnreachableError
from migrated.transport._auth import caller_cert_hash, caller_host
from migrated.transport._errors import error_of
from migrated.transport._identity import cert_hash, public_key_of
from migrated.transport._pairing import AttemptLimit, CodeBook, PairingClient, PairingServer, Party, normalize_code
from migrated.transport._probe import fetch_certificate
from migrated.transport.v1 import peer_pb2 as pb
from migrated.transport.v1 import peer_pb2_grpc

__all__ = ["Pairing", "PairingService", "hello_party"]

log = logging.getLogger("migrated.peers")

Context = grpc.aio.ServicerContext[Any, Any]
CODE_TTL = 300.0
SESSION_TTL = 60.0
MAX_SESSIONS = 8
MAX_PEM = 8192
MAX_NAME = 64


def hello_party(hello: pb.PeerHello) -> Party:
    """The identities a hello claims, checked to be well formed and to share one key."""
    if not 0 < len(hello.name) <= MAX_NAME or not hello.name.isprintable():
        raise PairingError("the pairing request names no usable host name; run `mig pair HOST CODE` again")
    if not (0 < len(hello.cert_pem) <= MAX_PEM and 0 < len(hello.client_cert_pem) <= MAX_PEM):
        raise PairingError("the pairing request carries no usable certificate")
    try:
        same_key = public_key_of(hello.cert_pem) == public_key_of(hello.client_cert_pem)
    except ValueError:
        raise PairingError("the pairing request carries a malformed certificate") from None
    if not same_key:
        raise PairingError("the pairing request's two certificates are for different keys")
    return Party(hello.name, cert_hash(hello.cert_pem), cert_hash(hello.client_cert_pem))


@dataclass(slots=True)
class _Session:
    server: PairingServer
    hello: pb.PeerHello
    caller: str  # client certificate hash of the caller that began it
    host: str  # the caller's IP address
    expires: float


class PairingService(peer_pb2_grpc.PairingServicer):
    """Open to any caller: nothing is stored unless the caller proves it typed this host's code."""

    def __init__(self, peers: Peers, pairing: Pairing) -> None:
        self.peers = peers
        self.pairing = pairing
        self._sessions: dict[str, _Session] = {}
        self._attempts = AttemptLimit()

    async def PairBegin(self, request: pb.PairBeginRequest, context: Context) -> pb.PairBeginReply:
        now, host = time.monotonic(), caller_host(context)
        self._attempts.take(now, host)
        client = hello_party(request.client)
        if caller_cert_hash(context) != client.client_cert_hash:
            raise PairingError("the pairing request's client certificate is not the one used for this connection")
        server = PairingServer(self.pairing.codes.current(now, self.peers.name), self.pairing.party)
        confirm = server.answer(request.spake_message, client)
        # Only now is it a well-formed attempt: a wrong code spends a try (the online-guessing limit), garbage does not.
        self.pairing.codes.take_try(now, self.peers.name)
        begun = _Session(server, request.client, client.client_cert_hash, host, now + SESSION_TTL)
        return pb.PairBeginReply(
            session=self._open(begun, now), server=self.peers.hello(), spake_message=server.message, confirm=confirm
        )

    async def PairFinish(self, request: pb.PairFinishRequest, context: Context) -> pb.PairFinishReply:
        self._expire(time.monotonic())
        session = self._sessions.pop(request.session, None)
        if session is None or caller_cert_hash(context) != session.caller:
            raise PairingError("this pairing attempt is unknown or timed out; run `mig pair HOST CODE` again")
        if not session.server.confirmed(request.confirm):
            raise PairingError(f"the pairing code was wrong; check the code `mig pair` shows on {self.peers.name}")
        hello = session.hello
        host = f"[{session.host}]" if ":" in session.host else session.host
        self.peers.paired.add(
            PairedPeer(
                name=hello.name,
                device_id=cert_hash(hello.cert_pem),
                cert_pem=hello.cert_pem.decode(),
                client_cert_hash=cert_hash(hello.client_cert_pem),
                address=f"{host}:{hello.port}",
                paired_at=time.time(),
            )
        )
        self.pairing.codes.burn()
        self.peers.changed()
        return pb.PairFinishReply()

    def _open(self, session: _Session, now: float) -> str:
        """Keep a begun pairing for its PairFinish (the newest few); return its key."""
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        key = secrets.token_hex(16)
        self._sessions[key] = session
        return key

    def _expire(self, now: float) -> None:
        for key in [key for key, session in self._sessions.items() if session.expires <= now]:
            del self._sessions[key]


class Pairing:
    """This host's pairing code, and pairing with the code another host shows."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.codes = CodeBook()
        identity = peers.identity
        self.party = Party(peers.name, identity.device_id, identity.client_cert_hash)

    def issue_code(self, ttl: float) -> tuple[str, float]:
        """Show a new pairing code; return it and its expiry as Unix time."""
        if self.peers.listen is None:
            raise ConfigError("this daemon has no peer port, so no host can pair with it; start it with --listen")
        ttl = ttl if ttl > 0 else CODE_TTL
        code, _ = self.codes.issue(time.monotonic(), ttl)
        return code, time.time() + ttl

    async def pair(self, host: str, code: str) -> PeerRow:
        """Pair with ``host`` using the code it shows."""
        code = normalize_code(code)
        name, address, expected = self._target(host)
        device_id, cert_pem = await self._certificate(name, address, expected)
        client = PairingClient(code, self.party)
        stub = peer_pb2_grpc.PairingStub(self.peers.channel(device_id, cert_pem, address))
        begin = pb.PairBeginRequest(client=self.peers.hello(), spake_message=client.message)
        reply = await _call(stub.PairBegin(begin, timeout=CALL_TIMEOUT), name)
        server = hello_party(reply.server)
        if server.device_id != device_id:
            raise PeerIdentityError(f"{name} at {address} answered with another certificate than its TLS one")
        confirm = client.finish(reply.spake_message, server, reply.confirm)
        finish = pb.PairFinishRequest(session=reply.session, confirm=confirm)
        await _call(stub.PairFinish(finish, timeout=CALL_TIMEOUT), name)
        peer_address = Address(address.host, reply.server.port or address.port)
        peer = PairedPeer(server.name, device_id, reply.server.cert_pem.decode(), server.client_cert_hash,
                          str(peer_address), time.time())  # fmt: skip
        self.peers.paired.add(peer)
        log.info("paired with %s (%s) at %s", server.name, device_id, peer_address)
        await self.peers.probe(str(peer_address))
        self.peers.changed()
        return self.peers.row(device_id, server.name, str(peer_address))

    async def unpair(self, host: str) -> PairedPeer:
        """Forget a paired peer; its calls are refused from now on."""
        peer = self.peers.paired.find(host)
        self.peers.paired.remove(peer.device_id)
        await self.peers.forget(peer.device_id)
        log.info("unpaired %s (%s)", peer.name, peer.device_id)
        self.peers.changed()
        return peer

    async def _certificate(self, name: str, address: Address, expected: str) -> tuple[str, bytes]:
        """The device id and certificate the host at ``address`` presents, if it is the one mDNS announced."""
        try:
            cert = await fetch_certificate(address.host, address.port, *self.peers.tls_files(), PROBE_TIMEOUT)
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
        return device_id, cert.pem

    def _target(self, host: str) -> tuple[str, Address, str]:
        """Name, address and the advertised device id (if any) of a peer to pair with."""
        try:
            row = self.peers.table.resolve(host, self.peers.paired)
        except PeerNotFoundError:
            try:
                address = parse_address(host, what="the host")
            except ConfigError:
                raise PeerNotFoundError(
                    f"no peer called {host!r} is known; see `mig peers`, or give its address as HOST:PORT"
                ) from None
            return host, address, ""
        return row.name, parse_address(row.address, what="the peer address"), row.device_id


async def _call(call: Any, name: str) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise error_of(exc, name) from None
