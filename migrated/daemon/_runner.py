"""A runner process seen from the daemon: spawn it, load the app, pump its console, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from migrated.checkpoint._chunks import Piece
from migrated.checkpoint._manifest import chunk_hashes
from migrated.daemon._console import Console
from migrated.daemon._tasks import owned
from migrated.errors import RunnerError, error_class
from migrated.runtime import _wire
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = ["Busy", "Captured", "Outcome", "Runner", "stack_place"]

_REPLIES = frozenset({_wire.Kind.MANIFEST, _wire.Kind.CHUNK, _wire.Kind.CAPTURED, _wire.Kind.CAPTURE_FAILED})
_HOME_IO = frozenset({_wire.Kind.IO, _wire.Kind.OUT, _wire.Kind.ACK})

Missing = Callable[[list[bytes]], Awaitable[list[bytes]]]
Flush = Callable[[pb.CheckpointManifest, dict[bytes, Piece]], Awaitable[None]]
QUEUE_BYTES = 16 * 1024 * 1024
QUEUE_WAIT = 30.0
FLUSH_BYTES = 256 * 1024 * 1024
"""Chunks handed to ``flush`` (stored) at a time while the runner sends, so a version larger than this is never
held whole. Not smaller: the runner then waits for the disk. Measured with 64 MiB batches on a 256 MiB app
(bench/memory.py): the daemon's peak RSS went from 424 to 184 MiB, but each new-content checkpoint paused the
app for 1.9 s instead of 0.75 s."""
_FRAME = re.compile(r'^\s*File "(.*)", line (\d+) in (\S+)', re.M)
_RUNTIME_DIR = os.path.dirname(os.path.abspath(_wire.__file__))
_STDLIB = sysconfig.get_paths()["stdlib"]
LOAD_TIMEOUT = 60.0
PIPE_DRAIN = 2.0
SAFE_POINT_WAIT = 10.0  # seconds a checkpoint waits for the app to finish its handler (migrated --safe-point-wait)
REPLY_MARGIN = 1.0  # past the deadline, for an answer already on its way
OUTPUT_WAIT = 2.0  # seconds a checkpoint waits at most for the output its state printed to reach the console
STACK_POLLS = 50


@dataclass(frozen=True, slots=True)
class Captured:
    """A checkpoint as the runner sent it: its manifest and the chunks the store lacked."""

    manifest: pb.CheckpointManifest
    chunks: dict[bytes, Piece]
    pause: float
    capture: float
    error: Exception | None = None  # ``flush`` failed: the chunks after it were dropped
    output: int = 0  # bytes the runner had written to its output when it captured


class Busy(Exception):
    """The app ran a handler past the bound: no safe point came. ``where`` names the handler and line."""

    def __init__(self, where: str, within: float) -> None:
        super().__init__(where)
        self.where = where
        self.within = within


def stack_place(dump: str) -> str:
    """``step() at app.py line 9`` from a faulthandler stack (most recent call first): the handler the runtime
    called, and the innermost line of the app's own code ("" when the dump names neither)."""
    frames = _FRAME.findall(dump)  # (path, line, function), innermost first
    runtime = [i for i, (path, _, _) in enumerate(frames) if path.startswith(_RUNTIME_DIR)]
    if not frames or not runtime:
        return ""
    handler = frames[runtime[0] - 1][2] if runtime[0] > 0 else ""
    own = [frame for frame in frames[: runtime[0]] if not frame[0].startswith(_STDLIB)]
    if not handler:
        return ""
    path, line, function = own[0] if own else frames[runtime[0] - 1]
    inner = f" (in {function})" if function != handler else ""
    return f"{handler}() at {os.path.basename(path)} line {line}{inner}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a runner ended, as it reported it (or as its exit status shows)."""

    crashed: bool
    exit_code: int
    reason: str


class Runner:
    """One runner process and the daemon's end of its socket."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stacks: int = -1,
    ) -> None:
        self.proc = proc
        self._stacks = stacks  # read end of the pipe where the runner writes its stack on SIGUSR2
        self._reader = reader
        self._writer = writer
        self._decoder = _wire.FrameDecoder()
        self._frames: list[_wire.Frame] = []
        self._last_report: _wire.Frame | None = None
        self._pump: asyncio.Task[None] | None = None
        self._malformed = ""
        self._replies: asyncio.Queue[_wire.Frame | None] = asyncio.Queue()
        self._queued = 0  # bytes of chunks read from the runner and not yet taken by the checkpoint
        self._drained = asyncio.Event()
        self._on_frame: Callable[[_wire.Frame], None] | None = None
        self._on_end: list[Callable[[], None]] = []
        self._conversation = asyncio.Lock()  # one checkpoint exchange at a time, abandoned ones included
        self._reading = asyncio.Lock()  # a read-ahead, then the load
        self._pumped = 0  # bytes of output copied into the console
        self._pumped_more = asyncio.Event()
        self._abandoned: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        """The runner's process id."""
        return self.proc.pid

    @classmethod
    async def spawn(cls, cwd: str, spare: bool = False) -> Runner:
        """Start a runner process in ``cwd``; a ``spare`` one readies what a thaw imports while it waits (the
        app's load tells it where the app runs)."""
        parent, child = socket.socketpair()
        stacks, stacks_child = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "migrated.runtime._runner",
                str(child.fileno()),
                str(stacks_child),
                *(["spare"] if spare else []),
                pass_fds=(child.fileno(), stacks_child),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                env=_runner_env(),
            )
        except OSError as exc:
            parent.close()
            os.close(stacks)
            raise RunnerError(f"cannot start a runner process in {cwd}: {exc.strerror or exc}") from None
        finally:
            child.close()
            os.close(stacks_child)
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        return cls(proc, reader, writer, stacks)

    @property
    def ready(self) -> bool:
        """No read-ahead is under way: a load would start at once."""
        return not self._reading.locked()

    async def read_ahead(self, request: dict[str, Any]) -> None:
        """Have a spare import an arriving app's modules and read its pre-copied version (``Kind.AHEAD``); return
        when it has (a ``load`` meanwhile waits)."""
        async with self._reading:
            await self._send(_wire.encode_json(_wire.Kind.AHEAD, request))
            try:
                frame = await asyncio.wait_for(self._next_frame(), LOAD_TIMEOUT)
            except TimeoutError:
                frame = None
            if frame is None or frame.kind is not _wire.Kind.AHEAD:
                self.kill()
                raise RunnerError(f"the runner readied for an arriving app ({self.pid}) did not read ahead")

    async def load(
        self, spec: dict[str, Any], console: Console, home_io: Callable[[_wire.Frame], None] | None = None
    ) -> dict[str, Any]:
        """Send the app to load; return what the runner reported, or raise the error it reported. ``home_io``
        takes the runner's home I/O frames (also while it loads: a thaw reopens files)."""
        async with self._reading:
            return await self._load(spec, console, home_io)

    async def _load(
        self, spec: dict[str, Any], console: Console, home_io: Callable[[_wire.Frame], None] | None
    ) -> dict[str, Any]:
        self._on_frame = home_io
        self._writer.write(_wire.encode_json(_wire.Kind.LOAD, spec))
        await self._writer.drain()
        pump = owned(self.pump(console), f"console pump {self.pid}")
        try:
            frame = await asyncio.wait_for(self._next_frame(), LOAD_TIMEOUT)
        except TimeoutError:
            self.kill()
            raise RunnerError(f"the app took more than {LOAD_TIMEOUT:.0f} s to load; check its imports") from None
        if frame is not None and frame.kind is _wire.Kind.LOADED:
            self._pump = pump
            return _body(frame)
        self.kill()
        await pump
        code = await self.proc.wait()
        if frame is not None and frame.kind is _wire.Kind.FAILED:
            body = _body(frame)
            raise error_class(str(body.get("error")))(str(body.get("message")))
        try:
            console.log.flush()
            tail = b"".join(data for _, data in console.log.read(console.log.tail_start(5)).lines)
        except (KeyError, OSError):  # the app was forgotten meanwhile, its console with it
            tail = b""
        detail = tail.decode(errors="replace").strip().replace("\n", " | ")
        raise RunnerError(
            f"the runner for {spec.get('file') or spec.get('name')} ended while loading the app "
            f"(exit status {code})" + (f": {detail}" if detail else "") + "; fix the app's module-level code"
        )

    async def pump(self, console: Console) -> None:
        """Copy the runner's output into the console until the runner closes it."""
        assert self.proc.stdout is not None
        while data := await self.proc.stdout.read(65536):
            await console.write(data)
            self._pumped += len(data)
            self._pumped_more.set()

    async def output_kept(self, count: int, within: float = OUTPUT_WAIT) -> None:
        """Wait until the console holds the first ``count`` bytes of the runner's output (what the state of a
        checkpoint has printed), ``within`` seconds at most: the output comes on a pipe of its own, so it can
        lag behind the checkpoint's frames."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._pumped < count:
                    self._pumped_more.clear()
                    await self._pumped_more.wait()

    async def wait(self) -> Outcome:
        """Wait for the runner to end (its output drained) and say how it ended."""
        while (frame := await self._next_frame()) is not None:
            if frame.kind in _REPLIES:
                self._replies.put_nowait(frame)
                if frame.kind is _wire.Kind.CHUNK:
                    await self._backpressure(len(frame.payload))
            elif frame.kind in (_wire.Kind.EXITED, _wire.Kind.CRASHED):
                try:
                    frame.json()
                except _wire.FrameError as exc:
                    self._malformed = str(exc)
                    self.kill()
                    continue
                self._last_report = frame
        self._replies.put_nowait(None)
        for callback in self._on_end:
            callback()
        # Processes the app started die with it, as under a service manager. They also hold the console pipe,
        # and until Python 3.12 Process.wait() returns only once that pipe is closed.
        try:
            code = await asyncio.wait_for(asyncio.shield(self.proc.wait()), PIPE_DRAIN)
        except TimeoutError:
            self._kill_group()
            code = await self.proc.wait()
        self._kill_group()
        if self._pump is not None:
            # A descendant that left the process group may keep the pipe open: stop reading it then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pump, PIPE_DRAIN)
        self._writer.close()
        return self._outcome(code)

    def _outcome(self, code: int) -> Outcome:
        report = self._last_report
        if self._malformed:
            return Outcome(True, code, f"the runner sent a malformed message ({self._malformed}) and was killed")
        if report is not None and report.kind is _wire.Kind.EXITED:
            body = _body(report)
            exit_code = body.get("code", code)
            return Outcome(False, exit_code if isinstance(exit_code, int) else code, str(body.get("reason", "exited")))
        if report is not None:
            return Outcome(True, code, str(_body(report).get("reason", "crashed")))
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals.__members__.values() else str(-code)
            return Outcome(True, code, f"the runner process was killed by {name}")
        if code == 0:
            return Outcome(False, 0, "the runner process ended with status 0")
        return Outcome(True, code, f"the runner process ended with status {code} without a report")

    async def checkpoint(
        self,
        kind: str,
        message: str,
        missing: Missing,
        hold: bool = False,
        within: float = SAFE_POINT_WAIT,
        flush: Flush | None = None,
    ) -> Captured:
        """Have the runner capture its app between two events and send the chunks ``missing`` says are new;
        ``flush`` takes them ``FLUSH_BYTES`` at a time as they come (the rest are in the result).

        With ``hold`` the app stays frozen afterwards until ``request_stop`` or ``resume``. A handler that runs
        past ``within`` seconds raises ``Busy`` (naming where the app is); the runner answers later, unseen.
        """
        deadline = time.monotonic() + within
        try:
            async with asyncio.timeout(within):
                await self._conversation.acquire()
        except TimeoutError:
            raise Busy(await self.where(), within) from None
        try:
            request = {"kind": kind, "message": message, "hold": hold, "deadline": deadline, "urgent": kind == "move"}
            await self._send(_wire.encode_json(_wire.Kind.CHECKPOINT, request))
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + REPLY_MARGIN):
                    frame = await self._reply()
            except TimeoutError:
                self._abandoned = owned(self._finish_abandoned(hold), f"abandoned checkpoint {self.pid}")
                raise Busy(await self.where(), within) from None
            return await self._captured(frame, missing, flush)
        finally:
            if self._abandoned is None or self._abandoned.done():
                self._conversation.release()

    async def _captured(self, frame: _wire.Frame, missing: Missing, flush: Flush | None) -> Captured:
        if frame.kind is _wire.Kind.CAPTURE_FAILED:
            body = _body(frame)
            if body.get("expired"):  # the handler ended just past the bound
                raise Busy("", 0.0)
            raise error_class(str(body.get("error")))(str(body.get("message")))
        if frame.kind is not _wire.Kind.MANIFEST:
            raise RunnerError(f"the runner answered a checkpoint with {frame.kind.name}; try again")
        try:
            manifest = pb.CheckpointManifest.FromString(frame.payload)
        except DecodeError:
            raise RunnerError("the runner sent a manifest that does not decode; try again") from None
        need = await missing(chunk_hashes(manifest))
        await self._send(_wire.encode(_wire.Kind.NEED, b"".join(need)))
        chunks: dict[bytes, Piece] = {}
        received: set[bytes] = set()
        size = 0
        error: Exception | None = None
        while (frame := await self._reply()).kind is _wire.Kind.CHUNK:
            received.add(frame.payload[:32])
            if error is not None:
                continue  # read to the end of the conversation, keeping nothing
            chunks[frame.payload[:32]] = Piece(memoryview(frame.payload)[33:], frame.payload[32])
            size += len(frame.payload)
            if flush is not None and size >= FLUSH_BYTES:
                try:
                    await flush(manifest, chunks)
                except Exception as exc:  # said once the runner has finished sending
                    error = exc
                chunks, size = {}, 0
        body = _body(frame)
        if frame.kind is not _wire.Kind.CAPTURED or set(need) - received:
            raise RunnerError("the runner did not send every chunk of the checkpoint; try again")
        pause, capture, output = float(body.get("pause", 0.0)), float(body.get("capture", 0.0)), body.get("output", 0)
        return Captured(manifest, chunks, pause, capture, error, output if isinstance(output, int) else 0)

    async def _finish_abandoned(self, hold: bool) -> None:
        """Answer the runner for a checkpoint nobody waits for any more: it takes nothing, and the app goes on."""
        try:
            frame = await self._reply()
            if frame.kind is _wire.Kind.MANIFEST:
                await self._send(_wire.encode(_wire.Kind.NEED))
                while (frame := await self._reply()).kind is _wire.Kind.CHUNK:
                    pass
                if hold and frame.kind is _wire.Kind.CAPTURED:
                    await self.resume()
        except RunnerError:
            pass  # the runner ended
        finally:
            self._conversation.release()

    async def where(self) -> str:
        """Where the app is now, as the handler and the line it runs ("" when the runner cannot say)."""
        if self._stacks < 0 or self.proc.returncode is not None:
            return ""
        with contextlib.suppress(OSError):
            while os.read(self._stacks, 65536):  # what an earlier question left
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.proc.pid, signal.SIGUSR2)
        text = b""
        for _ in range(STACK_POLLS):
            await asyncio.sleep(0.02)
            with contextlib.suppress(BlockingIOError):
                more = os.read(self._stacks, 65536)
                text += more
                if not more or (text.endswith(b"\n") and b"File" in text):
                    break
        return stack_place(text.decode(errors="replace"))

    async def _backpressure(self, size: int) -> None:
        """Read no further while ``QUEUE_BYTES`` of chunks wait to be taken (the runner then waits to send), so
        a checkpoint that stores as it goes never has the whole version in memory; never longer than
        ``QUEUE_WAIT``, so a checkpoint nobody takes does not stop the runner for good."""
        self._queued += size
        if self._queued > QUEUE_BYTES:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), QUEUE_WAIT)

    async def _reply(self) -> _wire.Frame:
        frame = await self._replies.get()
        if frame is not None and frame.kind is _wire.Kind.CHUNK:
            self._queued -= len(frame.payload)
            if self._queued <= QUEUE_BYTES:
                self._drained.set()
        if frame is None:
            self._replies.put_nowait(None)
            raise RunnerError("the app's runner ended during the checkpoint; see mig logs")
        return frame

    def push(self, frame: bytes) -> None:
        """Send encoded frames now, in the order of the calls (home I/O answers and events)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._writer.write(frame)

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the runner's socket closes."""
        self._on_end.append(callback)

    async def resume(self) -> None:
        """Let an app held frozen after a checkpoint go on."""
        await self._send(_wire.encode(_wire.Kind.RESUME))

    async def request_stop(self, reason: str) -> None:
        """Ask the app to run ``on_stop`` and end."""
        await self._send(_wire.encode_json(_wire.Kind.STOP, {"reason": reason}))

    def kill(self) -> None:
        """Kill the runner's whole process group at once."""
        if self.proc.returncode is None:
            self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._writer.write(data)
            await self._writer.drain()

    async def _next_frame(self) -> _wire.Frame | None:
        while not self._frames:
            try:
                data = await self._reader.read(65536)
            except ConnectionError:
                data = b""
            if not data:
                return None
            try:
                frames = self._decoder.feed(data)
                for frame in frames:
                    if frame.kind in _HOME_IO and self._on_frame is not None:
                        self._on_frame(frame)
                    else:
                        self._frames.append(frame)
            except (_wire.FrameError, ValueError) as exc:
                self._malformed = str(exc)
                self.kill()
                return None
        return self._frames.pop(0)


def _body(frame: _wire.Frame) -> dict[str, Any]:
    """A report's JSON object, or an empty one when the runner sent something else."""
    try:
        return frame.json()
    except (_wire.FrameError, ValueError):
        return {}


def _runner_env() -> dict[str, str]:
    env = dict(os.environ)
    # The runner line-buffers stdout itself; -u would cost a write per print call.
    env.pop("PYTHONUNBUFFERED", None)
    env["MIG_DAEMON_PID"] = str(os.getpid())
    return env
