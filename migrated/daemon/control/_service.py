"""The Control service: what the ``mig`` command line asks of its own daemon."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable

import migrated
from migrated.checkpoint import Store, VersionInfo
from migrated.daemon._pairing import Pairing
from migrated.daemon._peers import Peers
from migrated.daemon._records import AppRecord, AppSpec, State
from migrated.daemon._tasks import Tasks
from migrated.daemon.apps import AppRegistry, AppTable, AppVersions
from migrated.daemon.control._routes import RELAYABLE, Role, Routes, merge
from migrated.daemon.move import MoveProgress, MoveSource, close_away, evacuate
from migrated.discovery._table import PeerRow
from migrated.errors import AppFileError, MigError, UsageError
from migrated.transport._control_wire import method
from migrated.transport.v1 import control_pb2 as pb

__all__ = ["ControlService"]

log = logging.getLogger("migrated.daemon")

_STATES = {
    State.STARTING: pb.APP_STATE_STARTING,
    State.RUNNING: pb.APP_STATE_RUNNING,
    State.STOPPING: pb.APP_STATE_STOPPING,
    State.EXITED: pb.APP_STATE_EXITED,
    State.CRASHED: pb.APP_STATE_CRASHED,
    State.CLOSED: pb.APP_STATE_CLOSED,
    State.AWAY: pb.APP_STATE_RUNNING,  # on another host, as ``host`` says
}
_KINDS = {"script": pb.APP_KIND_SCRIPT, "repl": pb.APP_KIND_REPL}
BATCH_LINES = 8192


class ControlService:
    """The control API of ``control.proto``: the commands of ``mig`` (``_socket.py`` carries them). A command that
    names an app another host concerns is relayed there (``_routes.py``)."""

    def __init__(
        self,
        registry: AppRegistry,
        table: AppTable,
        versions: AppVersions,
        source: MoveSource,
        peers: Peers,
        pairing: Pairing,
        routes: Routes,
        store: Store,
        tasks: Tasks,
        host: str,
        state_dir: str,
        shutdown: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.table = table
        self.versions = versions
        self.source = source
        self.peers = peers
        self.pairing = pairing
        self.routes = routes
        self.store = store
        self._tasks = tasks
        self.host = host
        self.state_dir = state_dir
        self.started_at = time.time()
        self._shutdown = shutdown

    def info(self, record: AppRecord) -> pb.AppInfo:
        """The wire form of an app."""
        spec, place = record.spec, record.place
        return pb.AppInfo(
            name=spec.name,
            state=pb.APP_STATE_MOVING if record.moving else _state(record),
            kind=_KINDS[spec.kind],
            host=place.host or self.host,
            home=place.home or self.host,
            pid=record.remote.pid if record.state is State.AWAY else record.pid,
            file=spec.file,
            app_class=record.app_class or spec.app_class,
            cwd=spec.cwd,
            args=list(spec.args),
            started_at=record.started_at,
            ended_at=record.ended_at,
            exit_code=record.exit_code,
            reason=record.reason or (record.save_error if record.running else ""),
            console_seq=record.console.log.next_seq - 1,
            version=record.version,
            autosave=spec.autosave,
            keep=spec.keep,
            restart=spec.restart,
            restarts=record.restarts,
            epoch=place.epoch,
            files_home=place.files_home_name or place.home or self.host,
        )

    async def Status(self, request: pb.StatusRequest) -> pb.StatusReply:
        apps = list(self.registry)
        return pb.StatusReply(
            host=self.host,
            version=migrated.__version__,
            pid=os.getpid(),
            state_dir=self.state_dir,
            started_at=self.started_at,
            apps_running=sum(record.running for record in apps),
            apps_total=len(apps),
            rss_bytes=_rss_bytes(),
            device_id=self.peers.identity.device_id,
            listen=str(self.peers.listen or ""),
            mdns=self.peers.settings.mdns,
        )

    async def Run(self, request: pb.RunRequest) -> pb.AppInfo:
        spec = _spec(request)
        return self.info(await self.table.run(spec))

    async def List(self, request: pb.ListRequest) -> pb.ListReply:
        apps = [self.info(record) for record in self.registry]
        if not request.all or not self.routes.relays:
            return pb.ListReply(apps=apps)
        survey = await self.routes.survey()
        return pb.ListReply(apps=merge([(self.host, apps), *survey.answers]), unreachable=survey.silent)

    async def Get(self, request: pb.AppRef) -> pb.AppInfo:
        if (reply := await self.routes.relay_unary("Get", request, Role.HOME)) is not None:
            return reply  # type: ignore[no-any-return]
        return self.info(self.registry.get(request.name))

    async def Kill(self, request: pb.KillRequest) -> pb.AppInfo:
        if (reply := await self.routes.relay_unary("Kill", request, Role.HOST)) is not None:
            return reply  # type: ignore[no-any-return]
        return self.info(await self.table.stop(request.name, force=request.force))

    async def Remove(self, request: pb.RemoveRequest) -> pb.RemoveReply:
        await self.table.remove(request.name, force=request.force)
        return pb.RemoveReply()

    async def Send(self, request: pb.SendRequest) -> pb.SendReply:
        if (reply := await self.routes.relay_unary("Send", request, Role.INPUT)) is not None:
            return reply  # type: ignore[no-any-return]
        await self.table.send(request.name, request.text)
        return pb.SendReply()

    async def Logs(self, request: pb.LogsRequest) -> AsyncIterator[pb.ConsoleBatch]:
        target = await self.routes.find(request.name, Role.HOME)
        request.name = target.name
        if target.peer is not None:
            async for batch in self.routes.relay(target.peer, "Logs", request):
                yield batch
            return
        record = self.registry.get(request.name)
        console = record.console
        since = request.since or (console.log.tail_start(request.tail) if request.tail else 0)
        shown = 0  # bytes of the unfinished line this stream has sent
        while True:
            read = console.log.read(since, BATCH_LINES)
            if read.dropped:
                shown = 0  # the line it began is gone
            lines = []
            for seq, data in read.lines:
                skip = min(shown, len(data))
                shown -= skip
                lines.append(pb.ConsoleLine(seq=seq, data=data, skip=skip))
            since = read.next_seq
            caught_up = since >= console.log.next_seq
            partial = console.log.partial[shown:] if caught_up else b""
            shown += len(partial)
            if lines or read.dropped or partial:
                yield pb.ConsoleBatch(lines=lines, dropped=read.dropped, partial=partial)
            if not caught_up:
                continue
            if not request.follow or console.closed:
                break
            await console.wait_change(since, shown)
        if request.follow:
            yield pb.ConsoleBatch(app=self.info(record))

    async def Checkpoint(self, request: pb.CheckpointRequest) -> pb.CheckpointReply:
        if (reply := await self.routes.relay_unary("Checkpoint", request, Role.HOST)) is not None:
            return reply  # type: ignore[no-any-return]
        info, captured = await self.versions.checkpoint(request.name, "manual", request.message)
        return pb.CheckpointReply(
            version=_version(info), pause_seconds=captured.pause, capture_seconds=captured.capture
        )

    async def History(self, request: pb.AppRef) -> pb.HistoryReply:
        if (reply := await self.routes.relay_unary("History", request, Role.HOME)) is not None:
            return reply  # type: ignore[no-any-return]
        return pb.HistoryReply(versions=[_version(info) for info in await self.versions.history(request.name)])

    async def Close(self, request: pb.AppRef) -> pb.AppInfo:
        if (reply := await self.routes.relay_unary("Close", request, Role.HOME)) is not None:
            return reply  # type: ignore[no-any-return]
        return self.info(await close_away(self.source, request.name))

    async def Open(self, request: pb.OpenRequest) -> pb.AppInfo:
        if (reply := await self.routes.relay_unary("Open", request, Role.HOME)) is not None:
            return reply  # type: ignore[no-any-return]
        if request.on:
            if request.version:
                raise UsageError(
                    f"--version and --on together are not supported; `mig restore {request.name} "
                    f"{request.version}` first, then `mig open {request.name} --on {request.on}`"
                )
            record, where = await self.source.open_on(request.name, request.on)
            info = self.info(record)
            info.host = where
            return info
        return self.info(await self.versions.open(request.name, request.version))

    async def Restore(self, request: pb.RestoreRequest) -> pb.AppInfo:
        return self.info(await self.versions.restore(request.name, request.version))

    async def Fork(self, request: pb.ForkRequest) -> pb.AppInfo:
        return self.info(await self.versions.fork(request.name, request.new_name, request.version))

    async def Export(self, request: pb.ExportRequest) -> pb.ExportReply:
        if not os.path.isabs(request.path):
            raise UsageError(f"{request.path} is not an absolute path; the command line sends absolute paths")
        info, written = await self.versions.export(request.name, request.path, request.version)
        return pb.ExportReply(version=_version(info), bytes=written)

    async def Import(self, request: pb.ImportRequest) -> pb.ImportReply:
        if not os.path.isabs(request.path):
            raise UsageError(f"{request.path} is not an absolute path; the command line sends absolute paths")
        record, signer = await self.versions.import_(request.path, request.name, request.cwd or os.getcwd())
        return pb.ImportReply(
            app=self.info(record),
            signer=signer.name,
            trusted=signer.trusted,
            warning=signer.warning(record.name, request.path),
        )

    async def Gc(self, request: pb.GcRequest) -> pb.GcReply:
        report = await asyncio.to_thread(self.store.gc)
        return pb.GcReply(chunks=report.chunks, bytes=report.bytes)

    async def Verify(self, request: pb.VerifyRequest) -> pb.VerifyReply:
        report = await asyncio.to_thread(self.store.verify)
        damaged = [
            pb.Damage(app=d.app, version=d.version, chunk=d.chunk.hex(), reason=d.reason) for d in report.damaged
        ]
        return pb.VerifyReply(chunks=report.chunks, bytes=report.bytes, damaged=damaged)

    async def Shutdown(self, request: pb.ShutdownRequest) -> pb.ShutdownReply:
        asyncio.get_running_loop().call_soon(self._shutdown)
        return pb.ShutdownReply()

    async def Peers(self, request: pb.PeersRequest) -> pb.PeersReply:
        return pb.PeersReply(peers=[_peer_info(row) for row in self.peers.rows()])

    async def PairCode(self, request: pb.PairCodeRequest) -> pb.PairCodeReply:
        code, expires = self.pairing.issue_code(request.ttl)
        return pb.PairCodeReply(code=code, expires=expires)

    async def Pair(self, request: pb.PairRequest) -> pb.PeerInfo:
        return _peer_info(await self.pairing.pair(request.host, request.code))

    async def Paired(self, request: pb.PairedRequest) -> pb.PeersReply:
        return pb.PeersReply(peers=[_peer_info(row) for row in self.peers.rows() if row.paired])

    async def Unpair(self, request: pb.UnpairRequest) -> pb.PeerInfo:
        peer = await self.pairing.unpair(request.host)
        return pb.PeerInfo(name=peer.name, address=peer.address, device_id=peer.device_id, paired=False)

    async def Move(self, request: pb.MoveRequest) -> AsyncIterator[pb.MoveProgress]:
        target = await self.routes.find(request.name, Role.HOST)
        request.name = target.name
        if target.peer is not None:  # a pull, or a move between two other hosts: the host that runs it moves it
            request.host = self.routes.destination(request.name, request.host, target.peer)
            async for update in self.routes.relay(target.peer, "Move", request):
                yield update
            return
        updates: asyncio.Queue[MoveProgress | None] = asyncio.Queue()
        outcome: list[tuple[AppRecord, str] | BaseException] = []

        async def move() -> None:  # runs on if the command goes away: a move is not undone by a closed terminal
            try:
                outcome.append(await self.source.move(request.name, request.host, updates.put_nowait,
                                                      request.stop_and_copy))  # fmt: skip
            except MigError as exc:
                outcome.append(exc)
            except Exception as exc:
                log.exception("the move of %s failed", request.name)
                outcome.append(MigError(f"the move of {request.name!r} failed ({exc}); see the daemon's log"))
            finally:
                updates.put_nowait(None)

        self._tasks.spawn(move(), f"move {request.name}")
        while (update := await updates.get()) is not None:
            yield _progress(update)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        record, destination = outcome[0]
        info = self.info(record)
        info.host = destination
        yield pb.MoveProgress(phase="done", app=info)

    async def Evacuate(self, request: pb.EvacuateRequest) -> AsyncIterator[pb.EvacuateReport]:
        async for name, moved, message, downtime in evacuate(
            self.source, request.to, rehome=request.rehome, move_files=request.move_files
        ):
            yield pb.EvacuateReport(app=name, moved=moved, message=message, downtime=downtime)

    async def Rehome(self, request: pb.RehomeRequest) -> pb.AppInfo:
        was_running = self.registry.get(request.name).running
        moved, where = await self.source.rehome(request.name, request.host, request.move_files)
        info = self.info(moved)
        info.host = info.home = where
        info.state = pb.APP_STATE_RUNNING if was_running else pb.APP_STATE_CLOSED
        return info

    async def relayed(self, method_name: str, data: bytes) -> AsyncIterator[bytes]:
        """Serve a call a paired host relayed here (``Peer.Relay``) as this host's ``mig`` would: its replies (the
        composition root gives the peer port a control service whose routes never relay further)."""
        called = method(method_name) if method_name in RELAYABLE else None
        if called is None:
            raise UsageError(f"{method_name!r} cannot be asked of another host; run it there")
        request = called.request.FromString(data)
        handler = getattr(self, method_name)
        if called.streaming:
            async for reply in handler(request):
                yield reply.SerializeToString()
        else:
            yield (await handler(request)).SerializeToString()

    async def PingPeer(self, request: pb.PingPeerRequest) -> pb.PingPeerReply:
        row, rtts = await self.peers.ping(request.host, request.count)
        return pb.PingPeerReply(peer=_peer_info(row), rtt_ms=rtts)


def _state(record: AppRecord) -> pb.AppState.ValueType:
    """Its state here, or, while it runs away, as its host last said."""
    if record.state is State.AWAY and record.remote.state:
        try:
            return _STATES[State(record.remote.state)]
        except ValueError:
            pass
    return _STATES[record.state]


def _progress(update: MoveProgress) -> pb.MoveProgress:
    return pb.MoveProgress(
        phase=update.phase,
        bytes_sent=update.bytes_sent,
        bytes_total=update.bytes_total,
        chunks_sent=update.chunks_sent,
        chunks_skipped=update.chunks_skipped,
        downtime=update.downtime,
    )


def _peer_info(row: PeerRow) -> pb.PeerInfo:
    return pb.PeerInfo(
        name=row.name,
        address=row.address,
        device_id=row.device_id,
        paired=row.paired,
        reachable=row.reachable,
        version=row.version,
        apps_running=row.apps_running,
        load=row.load,
        sources=sorted(row.sources),
        last_seen=row.last_seen,
        paired_at=row.paired_at,
    )


def _spec(request: pb.RunRequest) -> AppSpec:
    kind = "repl" if request.kind == pb.APP_KIND_REPL else "script"
    if kind == "script" and not request.file:
        raise UsageError("no app file was given; mig run FILE.py")
    if kind == "script" and not os.path.isabs(request.file):
        raise AppFileError(f"{request.file} is not an absolute path; the command line sends absolute paths")
    name = request.name or (os.path.splitext(os.path.basename(request.file))[0] if request.file else "")
    if not name:
        raise UsageError("a repl needs a name; mig repl NAME")
    return AppSpec(
        name=name,
        kind=kind,
        file=request.file,
        app_class=request.app_class,
        cwd=request.cwd or os.getcwd(),
        args=tuple(request.args),
        autosave=request.autosave,
        keep=request.keep,
        restart=request.restart or "on-crash",
    )


def _version(info: VersionInfo) -> pb.VersionEntry:
    return pb.VersionEntry(
        app=info.app,
        version=info.version,
        parent=info.parent,
        created=info.created,
        kind=str(info.kind),
        message=info.message,
        bytes_added=info.bytes_added,
        total_bytes=info.total_bytes,
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
