"""The peer port's services: Pairing (open, code-authenticated) and Peer (paired callers only)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc.aio

import migrated
from migrated.discovery._paired import PairedPeer
from migrated.errors import NotPairedError, PairingError
from migrated.transport._auth import caller_cert_hash, caller_host
from migrated.transport._identity import cert_hash, public_key_of
from migrated.transport._pairing import AttemptLimit, PairingServer, Party
from migrated.transport.v1 import peer_pb2 as pb
from migrated.transport.v1 import peer_pb2_grpc

if TYPE_CHECKING:
    from migrated.daemon._peers import Peers

__all__ = ["PairingService", "PeerService", "hello_party"]

Context = grpc.aio.ServicerContext[Any, Any]
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

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self._sessions: dict[str, _Session] = {}
        self._attempts = AttemptLimit()

    async def PairBegin(self, request: pb.PairBeginRequest, context: Context) -> pb.PairBeginReply:
        now, host = time.monotonic(), caller_host(context)
        self._attempts.take(now, host)
        client = hello_party(request.client)
        if caller_cert_hash(context) != client.client_cert_hash:
            raise PairingError("the pairing request's client certificate is not the one used for this connection")
        server = PairingServer(self.peers.codes.current(now, self.peers.name), self.peers.party)
        confirm = server.answer(request.spake_message, client)
        # Only now is it a well-formed attempt: a wrong code spends a try (the online-guessing limit), garbage does not.
        self.peers.codes.take_try(now, self.peers.name)
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
        self.peers.codes.burn()
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


class PeerService(peer_pb2_grpc.PeerServicer):
    """What paired peers may ask; the server's PairedOnly check has run before any of these."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def Ping(self, request: pb.PingRequest, context: Context) -> pb.PingReply:
        return pb.PingReply(
            name=self.peers.name,
            device_id=self.peers.identity.device_id,
            version=migrated.__version__,
            proto=1,
            apps_running=self.peers.apps_running(),
            load=os.getloadavg()[0],
            payload=request.payload,
        )

    async def Preflight(self, request: pb.PreflightRequest, context: Context) -> pb.PreflightReply:
        return pb.PreflightReply(problems=self.peers.moves().preflight(request))

    async def Missing(self, request: pb.MissingRequest, context: Context) -> pb.MissingReply:
        return pb.MissingReply(missing=await self.peers.moves().missing(list(request.hashes)))

    async def Stage(self, request_iterator: AsyncIterator[pb.StageRequest], context: Context) -> pb.StageReply:
        return await self.peers.moves().stage(request_iterator)

    async def Prepare(self, request: pb.PrepareRequest, context: Context) -> pb.PrepareReply:
        await self.peers.moves().prepare(request, self._caller(context))
        return pb.PrepareReply()

    async def Commit(self, request: pb.CommitRequest, context: Context) -> pb.CommitReply:
        return pb.CommitReply(pid=await self.peers.moves().commit(request))

    async def Abort(self, request: pb.AbortRequest, context: Context) -> pb.AbortReply:
        await self.peers.moves().abort(request)
        return pb.AbortReply()

    async def Decision(self, request: pb.DecisionRequest, context: Context) -> pb.DecisionReply:
        return pb.DecisionReply(state=self.peers.moves().decision(request))

    async def ConsoleAppend(self, request: pb.ConsoleAppendRequest, context: Context) -> pb.ConsoleAppendReply:
        applied = await self.peers.moves().console_append(request, self._caller(context))
        return pb.ConsoleAppendReply(applied_to=applied)

    async def CloseAway(self, request: pb.CloseAwayRequest, context: Context) -> pb.CloseAwayReply:
        await self.peers.moves().closing_away(request, self._caller(context))
        return pb.CloseAwayReply()

    async def HomeLink(
        self, request_iterator: AsyncIterator[pb.LinkUp], context: Context
    ) -> AsyncIterator[pb.LinkDown]:
        async for down in self.peers.moves().home_io.serve_link(request_iterator, self._caller(context)):
            yield down

    def _caller(self, context: Context) -> PairedPeer:
        caller = self.peers.paired.by_client(caller_cert_hash(context) or "")
        if caller is None:  # PairedOnly let it in, and it was unpaired since
            raise NotPairedError(f"{self.peers.name} no longer pairs with this host")
        return caller
