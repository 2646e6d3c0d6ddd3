"""The daemon's end of a checkpoint: chunks handed on in batches as they come, the conversation read to its end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from migrated.checkpoint import Piece
from migrated.daemon import _runner
from migrated.daemon._runner import Runner
from migrated.runtime._wire import Frame, Kind
from migrated.transport.v1 import checkpoint_pb2 as pb

NEED = [bytes([i]) * 32 for i in range(5)]


def conversation() -> tuple[Runner, Frame]:
    """A runner whose socket already holds five chunks of 64 bytes and the end of a checkpoint."""
    runner = Runner(None, None, None)  # type: ignore[arg-type]

    async def send(data: bytes) -> None:
        pass

    runner._send = send  # type: ignore[method-assign]
    for digest in NEED:
        runner._replies.put_nowait(Frame(Kind.CHUNK, digest + b"\x00" + b"x" * 64))
    runner._replies.put_nowait(Frame(Kind.CAPTURED, json.dumps({"pause": 0.5, "capture": 0.1}).encode()))
    return runner, Frame(Kind.MANIFEST, pb.CheckpointManifest(app="a").SerializeToString())


async def missing(hashes: list[bytes]) -> list[bytes]:
    return NEED


def test_chunks_beyond_the_batch_size_are_handed_on_as_they_come(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runner, "FLUSH_BYTES", 200)
    runner, manifest = conversation()
    batches: list[list[bytes]] = []

    async def flush(manifest: pb.CheckpointManifest, chunks: dict[bytes, Piece]) -> None:
        batches.append(sorted(chunks))

    captured = asyncio.run(runner._captured(manifest, missing, flush))
    assert batches == [NEED[:3]]  # 3 frames of 97 bytes reach 200
    assert sorted(captured.chunks) == NEED[3:] and captured.error is None and captured.pause == 0.5


def test_a_failed_batch_is_reported_once_the_runner_has_sent_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runner, "FLUSH_BYTES", 200)
    runner, manifest = conversation()

    async def flush(manifest: pb.CheckpointManifest, chunks: Any) -> None:
        raise OSError("the disk is full")

    captured = asyncio.run(runner._captured(manifest, missing, flush))
    assert isinstance(captured.error, OSError) and captured.chunks == {}
    assert runner._replies.empty() and runner._queued <= 0  # the next conversation starts clean
