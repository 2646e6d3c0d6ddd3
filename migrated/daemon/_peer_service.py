"""The Peer service: what paired peers may ask of this host (the peer port's PairedOnly check has let the caller
in before any of these runs). Moves go to the move package, home links to the home package, commands of `mig`
relayed from a paired host to the control service."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

import migrated
from migrated.daemon._peers import Peers
from migrated.daemon.control import ControlService
from migrated.daemon.home import Caller, HomeIO, serve_link
from migrated.daemon.move import MoveDestination, MoveSource, checked, closing_away
from migrated.discovery._paired import PairedPeer
from migrated.errors import NotPairedError
from migrated.transport._auth import caller_cert_hash
from migrated.transport.v1 import peer_pb2 as pb
from migrated.transport.v1 import peer_pb2_grpc

__all__ = ["PeerService"]

Context = grpc.aio.ServicerContext[Any, Any]


class PeerService(peer_pb2_grpc.PeerServicer):
    """Serves paired peers; every call but Ping waits until the daemon has taken up what a restart left."""

    def __init__(
        self,
        peers: Peers,
        source: MoveSource,
        destination: MoveDestination,
        home: HomeIO,
        control: ControlService,
        host: str,
    ) -> None:
        self.peers = peers
        self.control = control
        self.source = source
        self.destination = destination
        self.home = home
        self.host = host
        self.ready = asyncio.Event()

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
        await self.ready.wait()
        return pb.PreflightReply(problems=await self.destination.preflight(request))

    async def Missing(self, request: pb.MissingRequest, context: Context) -> pb.MissingReply:
        await self.ready.wait()
        return pb.MissingReply(missing=await self.destination.missing(list(request.hashes)))

    async def Stage(self, request_iterator: AsyncIterator[pb.StageRequest], context: Context) -> pb.StageReply:
        await self.ready.wait()
        return await self.destination.stage(request_iterator)

    async def Prepare(self, request: pb.PrepareRequest, context: Context) -> pb.PrepareReply:
        await self.ready.wait()
        await self.destination.prepare(request, self._caller(context))
        return pb.PrepareReply()

    async def Commit(self, request: pb.CommitRequest, context: Context) -> pb.CommitReply:
        await self.ready.wait()
        return pb.CommitReply(pid=await self.destination.commit(request))

    async def Abort(self, request: pb.AbortRequest, context: Context) -> pb.AbortReply:
        await self.ready.wait()
        await self.destination.abort(request)
        return pb.AbortReply()

    async def Decision(self, request: pb.DecisionRequest, context: Context) -> pb.DecisionReply:
        await self.ready.wait()
        checked(request.migration)
        return pb.DecisionReply(state=await self.source.decision(request))

    async def CloseAway(self, request: pb.CloseAwayRequest, context: Context) -> pb.CloseAwayReply:
        await self.ready.wait()
        await closing_away(self.source, request, self._caller(context))
        return pb.CloseAwayReply()

    async def HomeLink(
        self, request_iterator: AsyncIterator[pb.LinkUp], context: Context
    ) -> AsyncIterator[pb.LinkDown]:
        await self.ready.wait()
        caller = self._caller(context)
        async for down in serve_link(self.home, self.host, request_iterator, Caller(caller.device_id, caller.name)):
            yield down

    async def Relay(self, request: pb.RelayRequest, context: Context) -> AsyncIterator[pb.RelayReply]:
        await self.ready.wait()
        async for reply in self.control.relayed(request.method, request.request):
            yield pb.RelayReply(reply=reply)

    def _caller(self, context: Context) -> PairedPeer:
        caller = self.peers.paired.by_client(caller_cert_hash(context) or "")
        if caller is None:  # PairedOnly let it in, and it was unpaired since
            raise NotPairedError(f"{self.peers.name} no longer pairs with this host")
        return caller
