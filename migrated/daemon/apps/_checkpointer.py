"""Taking checkpoints of running apps: capture at a safe point (bounded), store, autosave with retention."""

from __future__ import annotations

import asyncio
import logging

from migrated import _heap
from migrated.checkpoint import Piece, Store, VersionInfo, parse_policy
from migrated.checkpoint._store import Pending
from migrated.daemon._records import AppRecord, State
from migrated.daemon._runner import SAFE_POINT_WAIT, Busy, Captured, Runner
from migrated.errors import AppBusyError, AppStateError, MigError, StorageError
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = ["Checkpointer"]

log = logging.getLogger("migrated.daemon")

_OUTCOME = {"close": "it was not closed", "move": "it was not moved"}


class Checkpointer:
    """Checkpoints of the apps running here, into ``store``."""

    def __init__(self, store: Store, safe_point_wait: float = SAFE_POINT_WAIT) -> None:
        self.store = store
        self.safe_point_wait = safe_point_wait

    async def take(
        self, record: AppRecord, kind: str, message: str, hold: bool = False
    ) -> tuple[VersionInfo, Captured]:
        """Capture ``record``'s app between two events and store it as a new version; with ``hold`` it stays
        frozen afterwards (until stopped or resumed), unless storing fails. The caller holds ``record.lock``."""
        if record.state is State.AWAY:
            raise AppStateError(f"{record.not_here()}; its checkpoints are taken there")
        if record.state is not State.RUNNING or record.runner is None:
            raise AppStateError(
                f"{record.name!r} is not running (it {record.state.value}); only a running app can be checkpointed"
            )
        runner = record.runner
        with self.store.pending() as pending:
            captured = await self._capture(record, runner, kind, message, hold, pending)
            await runner.output_kept(captured.output)  # the lines the state printed are in the console first
            try:
                info = await self._store(record, captured, pending)
            except BaseException as exc:
                if isinstance(exc, StorageError):
                    record.save_error = exc.message
                if hold:
                    await runner.resume()  # not stored: the app must not stop
                raise
            finally:
                received = pending.received + sum(memoryview(piece.data).nbytes for piece in captured.chunks.values())
                captured.chunks.clear()  # stored (or not): nobody needs them any more
                if received >= _heap.LARGE:
                    await asyncio.to_thread(_heap.trim)
        record.version, record.save_error = info.version, ""
        log.info("%s: version %d (%s), paused %.1f ms", record.name, info.version, kind, captured.pause * 1000)
        return info, captured

    async def _store(self, record: AppRecord, captured: Captured, pending: Pending) -> VersionInfo:
        if captured.error is not None:  # a batch stored ahead failed
            raise captured.error
        manifest = captured.manifest
        manifest.parent = record.version
        manifest.console_cursor = record.console.log.next_seq - 1
        return await asyncio.to_thread(self.store.put_version, manifest, captured.chunks, pending)

    async def _capture(
        self, record: AppRecord, runner: Runner, kind: str, message: str, hold: bool, pending: Pending
    ) -> Captured:
        async def missing(hashes: list[bytes]) -> list[bytes]:
            lacking = await asyncio.to_thread(self.store.missing, hashes)
            return [digest for digest in dict.fromkeys(hashes) if digest in lacking]

        async def flush(manifest: pb.CheckpointManifest, chunks: dict[bytes, Piece]) -> None:
            await asyncio.to_thread(pending.put, manifest, chunks)
            chunks.clear()

        try:
            return await runner.checkpoint(kind, message, missing, hold, self.safe_point_wait, flush)
        except Busy as busy:
            where = f"in {busy.where}" if busy.where else "in a handler"
            raise AppBusyError(
                f"{record.name!r} is busy {where} and reached no safe point within {self.safe_point_wait:g} s, so "
                f"{_OUTCOME.get(kind, 'no version was taken')}; try again once it is done, or stop it with "
                f"mig kill --force {record.name}"
            ) from None

    async def autosave(self, record: AppRecord, runner: Runner) -> None:
        """Checkpoint every ``autosave`` seconds while this runner lives; thin autosaves by the policy. A failed
        autosave is said once and tried again after a pause that doubles with each failure."""
        policy = parse_policy(record.spec.keep) if record.spec.keep else None
        failures, said = 0, ""
        while True:
            await asyncio.sleep(backoff(record.spec.autosave, failures))
            if record.runner is not runner or not record.running:
                return
            if record.state is not State.RUNNING:
                continue
            try:
                async with record.lock:
                    info, _ = await asyncio.shield(self.take(record, "autosave", ""))
                if policy is not None:
                    await asyncio.to_thread(self.store.apply_retention, record.name, policy)
            except MigError as exc:
                failures += 1
                if exc.message != said:  # say it once, not every period
                    again = backoff(record.spec.autosave, failures)
                    await record.console.note(
                        f"autosave of {record.name} failed: {exc.message} (again in {again:.0f} s)"
                    )
                said = exc.message
                continue
            if failures:
                await record.console.note(f"autosave of {record.name} works again (version {info.version})")
            failures, said = 0, ""


def backoff(period: float, failures: int) -> float:
    """Seconds before the next autosave: the period, doubled with each failure in a row, up to a minute (or the
    period, when it is longer)."""
    return float(min(max(period, 60.0), period * 2**failures))
