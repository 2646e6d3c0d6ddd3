"""The runner: the OS process that hosts one app and drives its events.

Started by the daemon as ``python -m migrated.runtime._runner FD`` with one end of a Unix socket pair as
``FD``; stdout and stderr are a pipe the daemon reads as the app's console. The runner holds the only call
stack: it calls one handler at a time, so between two events the app is quiescent.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import io
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from migrated.errors import AppFileError, MigError
from migrated.runtime import _home, _wire
from migrated.runtime._app import App
from migrated.runtime._loader import load_app_class

__all__ = ["main"]


class Channel:
    """Blocking frame I/O on the runner's end of the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = _wire.FrameDecoder()
        self._frames: list[_wire.Frame] = []

    def send(self, kind: _wire.Kind, value: dict[str, Any]) -> None:
        """Send a JSON frame; a daemon that went away is ignored here and noticed by ``recv``."""
        self.send_raw(_wire.encode_json(kind, value))

    def send_raw(self, frame: bytes) -> None:
        """Send encoded frames."""
        with contextlib.suppress(OSError):
            self.sock.sendall(frame)

    def recv_reply(self, *kinds: _wire.Kind) -> _wire.Frame | None:
        """Block for the next frame of one of ``kinds``; frames of other kinds stay queued, in order."""
        for index, frame in enumerate(self._frames):
            if frame.kind in kinds:
                return self._frames.pop(index)
        while True:
            data = self.sock.recv(65536)
            if not data:
                return None
            frames = self._decoder.feed(data)
            for index, frame in enumerate(frames):
                if frame.kind in kinds:
                    self._frames.extend(frames[index + 1 :])
                    return frame
                self._frames.append(frame)

    def recv(self) -> _wire.Frame | None:
        """Block for the next frame; ``None`` when the daemon closed its end."""
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)

    def has_frame(self) -> bool:
        """Whether a frame is already decoded and waiting."""
        return bool(self._frames)

    def urgent(self) -> _wire.Frame | None:
        """A checkpoint request marked urgent (a move's) that has arrived, taken ahead of the frames that came
        before it (they stay queued, in order). Reads what the socket holds first, a bounded amount."""
        for _ in range(URGENT_READS):
            if not _readable(self.sock, 0):
                break
            data = self.sock.recv(65536)
            if not data:
                break  # the daemon went away: recv() says so once the queue is empty
            self._frames.extend(self._decoder.feed(data))
        for index, frame in enumerate(self._frames):
            if frame.kind is _wire.Kind.CHECKPOINT and frame.json().get("urgent"):
                return self._frames.pop(index)
        return None


class _Stop(Exception):
    """The daemon asked the app to stop, or went away."""


class Driver:
    """Calls the app's handlers: start, then steps on their timer, with input and stop between them."""

    def __init__(self, channel: Channel, spec: dict[str, Any], home: _home.Home) -> None:
        self.channel = channel
        self.spec = spec
        self.home = home
        self.app = App()
        self.next_step: float | None = None

    def run(self, make_app: Callable[[], App], first_run: bool = True) -> int:
        """Build the app with ``make_app`` and drive it until it ends; return the runner's exit status."""
        try:
            self.app = self._call(make_app)
            self._resume_home()
            if type(self.app).step is not App.step and (first_run or getattr(self.app, _STEPPING, True)):
                self.next_step = time.monotonic()
            self._call(self.app.start if first_run else self.app.on_restore)
            while True:
                self._wait_and_dispatch()
        except _Stop as stop:
            return self._stop(str(stop) or "stopped")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
            return self._stop(f"the app exited with code {code}", code)
        except BaseException as exc:
            return self._crash(exc)

    def _wait_and_dispatch(self) -> None:
        timeout = None if self.next_step is None else max(0.0, self.next_step - time.monotonic())
        if self.channel.has_frame() or _readable(self.channel.sock, timeout):
            # A move's checkpoint goes ahead of queued input and network events: the state it captures says which
            # of them were handled, and the home delivers the rest to the copy thawed from it, so a move waits for
            # the handler that runs, not for a queue. (A close still handles the queue first.)
            self._dispatch(self.channel.urgent() or self.channel.recv())
        elif self.next_step is not None:
            self._step()

    def _dispatch(self, frame: _wire.Frame | None) -> None:
        if frame is None:
            raise _Stop("the daemon went away")
        if frame.kind is _wire.Kind.EVENT:
            self._event(*frame.io())
        elif frame.kind is _wire.Kind.OUT_ACK:
            self.home.acknowledged(int(frame.io()[0].get("out", 0)))
        elif frame.kind is _wire.Kind.STOP:
            raise _Stop(frame.json().get("reason", "stopped"))
        elif frame.kind is _wire.Kind.CHECKPOINT:
            self._checkpoint(frame.json())

    def _event(self, header: dict[str, Any], data: bytes) -> None:
        """Input or a network event, once each. The cursor moves on before the handler runs: an event that
        kills the app (even with ``os._exit``) is not delivered again to the copy brought back."""
        if not self.home.fresh(header):
            return
        self.home.handled(header)
        if header.get("type") == "input":
            self._call(self.app.on_input, data.decode("utf-8", errors="replace"))
        else:
            from migrated.runtime import _net

            self._call(_net.dispatch, self.app, header, data)

    def _resume_home(self) -> None:
        """Take up the home line where the checkpoint left it, and tell the home (also on a first run)."""
        from migrated.runtime import _net

        saved = self.app.__dict__.pop(_HOME_STATE, None)
        if isinstance(saved, dict):
            self.home.restore(saved)
        reply = self.home.resume(_net.resume_state())
        for message in _net.resumed(reply):
            print(f"[migrated] {message}", file=sys.stderr)

    def _step(self) -> None:
        delay = self._call(self.app.step)
        if delay is None:
            self.next_step = None
        else:
            self.next_step = time.monotonic() + max(0.0, float(delay))

    def _checkpoint(self, request: dict[str, Any]) -> None:
        """Capture the state between two events and send the chunks the daemon lacks; the app waits. A request
        that came too late (a handler ran past the daemon's bound) is answered without a capture."""
        started = time.perf_counter()
        if time.monotonic() > float(request.get("deadline", "inf")):
            self.channel.send(_wire.Kind.CAPTURE_FAILED, {"error": "AppBusyError", "message": "", "expired": True})
            return
        try:
            from migrated.runtime import _net

            setattr(self.app, _HOME_STATE, {**self.home.state(), "net": _net.held()})
            try:
                draft = _capture(self.app, self.spec, request, stepping=self.next_step is not None)
            finally:
                self.app.__dict__.pop(_HOME_STATE, None)
        except MigError as exc:
            self.channel.send(_wire.Kind.CAPTURE_FAILED, {"error": type(exc).__name__, "message": exc.message})
            return
        captured = time.perf_counter()
        self.channel.send_raw(_wire.encode(_wire.Kind.MANIFEST, draft.manifest.SerializeToString()))
        need = self.channel.recv_reply(_wire.Kind.NEED)
        if need is None:
            raise _Stop("the daemon went away")
        for start in range(0, len(need.payload), 32):
            digest = need.payload[start : start + 32]
            piece = draft.pieces[digest]
            self.channel.send_raw(_wire.encode(_wire.Kind.CHUNK, digest + bytes([piece.level]) + bytes(piece.data)))
        done = time.perf_counter()
        captured_at = {"pause": done - started, "capture": captured - started, "output": _OUTPUT.count}
        self.channel.send(_wire.Kind.CAPTURED, captured_at)
        if request.get("hold"):
            verdict = self.channel.recv_reply(_wire.Kind.STOP, _wire.Kind.RESUME)
            if verdict is None or verdict.kind is _wire.Kind.STOP:
                raise _Stop(verdict.json().get("reason", "stopped") if verdict else "the daemon went away")

    def _call(self, handler: Callable[..., Any], *args: Any) -> Any:
        try:
            return handler(*args)
        finally:
            _flush()

    def _stop(self, reason: str, code: int = 0) -> int:
        try:
            self._call(self.app.on_stop)
        except SystemExit:
            pass
        except BaseException as exc:
            return self._crash(exc)
        self.channel.send(_wire.Kind.EXITED, {"code": code, "reason": reason})
        return code

    def _crash(self, exc: BaseException) -> int:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
            tb = tb.tb_next
        app_frames = traceback.extract_tb(tb)
        where = f" at {os.path.basename(app_frames[-1].filename)} line {app_frames[-1].lineno}" if app_frames else ""
        traceback.print_exception(type(exc), exc, tb)
        _flush()
        reason = f"{type(exc).__name__}: {exc}{where}"
        self.channel.send(_wire.Kind.CRASHED, {"reason": reason})
        return 1


_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
_STACKS: Any = None  # the pipe SIGUSR2 writes the app's stack to: kept open while the runner lives
URGENT_READS = 16  # socket reads at most while looking for a checkpoint request among queued frames
_AHEAD: list[Any] = []  # the version a spare read ahead (AHEAD), for the LOAD that thaws a later one
_STEPPING = "_mig_stepping"  # saved with the state: whether step() still runs after a thaw
_HOME_STATE = "_mig_home"  # saved with the state: the home line's cursor and unacknowledged output


def _capture(app: App, spec: dict[str, Any], request: dict[str, Any], stepping: bool) -> Any:
    """A draft checkpoint of ``app`` (imported here: a runner that never checkpoints never pays for it)."""
    from migrated import checkpoint

    setattr(app, _STEPPING, stepping)
    snapshot = checkpoint.capture(app, spec["name"])
    with _runtime_files():
        code = checkpoint.code_files(spec["file"]) if spec.get("file") else []
        packages = checkpoint.package_versions()
        modules = checkpoint.imported_modules()
    return checkpoint.make_draft(
        spec["name"],
        snapshot,
        kind=request.get("kind", "manual"),
        message=request.get("message", ""),
        code=code,
        app_module=type(app).__module__,
        app_class=type(app).__qualname__,
        runtime=checkpoint.runtime_fingerprint(),
        packages=packages,
        modules=modules,
        memo=_memo(),
    )


@functools.cache
def _memo() -> Any:
    """The runner's ``HashMemo``: each capture hashes only the chunks that changed since the one before."""
    from migrated import checkpoint

    return checkpoint.HashMemo()


def _runtime_files() -> contextlib.AbstractContextManager[None]:
    """The runtime's own files (the app's code, installed packages) are this host's, never the home's."""
    if "migrated.runtime._files" not in sys.modules:
        return contextlib.nullcontext()
    from migrated.runtime import _files

    return _files.suspended() if _files.installed() else contextlib.nullcontext()


def _thaw(spec: dict[str, Any]) -> tuple[App, dict[str, Any]]:
    """The app of a stored version (the latest good one when none is named), and what the daemon should know."""
    from migrated import checkpoint

    restore = spec["restore"]
    with _runtime_files(), checkpoint.Store(restore["store"], readonly=True) as store:
        notes: list[str] = []
        if restore.get("version"):
            loaded = store.load(spec["name"], int(restore["version"]), _AHEAD.pop() if _AHEAD else None)
        else:
            loaded, damaged = store.load_last_good(spec["name"])
            notes = [error.message for error in damaged]
    app = checkpoint.restore(loaded.snapshot)  # open files reopen at home
    return app, {"version": loaded.info.version, "damaged": notes}


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _load(spec: dict[str, Any]) -> type[App]:
    if spec.get("kind") == "repl":
        from migrated.runtime._repl import Repl

        return Repl
    return load_app_class(spec["file"], spec.get("app_class", ""))


class _Output(io.RawIOBase):
    """The runner's stdout and stderr (one pipe to the daemon), counting the bytes written: a checkpoint says how
    far the output had gone, and the daemon keeps those lines before it stores the version."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = os.write(1, data)
        self.count += written
        return written

    def fileno(self) -> int:
        return 1


_OUTPUT = _Output()


def _count_output() -> None:
    """Print and the app's writes to stdout and stderr go through ``_OUTPUT``, line by line."""
    for name in ("stdout", "stderr"):
        stream = io.TextIOWrapper(
            io.BufferedWriter(_OUTPUT), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        setattr(sys, name, stream)


def _tie_to_daemon() -> None:
    """Die with the daemon (a runner must never outlive it) and be the OOM killer's first choice."""
    daemon_pid = int(os.environ.get("MIG_DAEMON_PID", "0"))
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if daemon_pid and os.getppid() != daemon_pid:
        os._exit(3)  # the daemon died before the death signal was armed
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("500")


def main(argv: list[str]) -> int:
    """Run one app; ``argv[1]`` is the file descriptor of the socket to the daemon, ``argv[2]`` (if given) a
    pipe where SIGUSR2 writes the stack the app is in (the daemon asks when a handler runs past its bound)."""
    _tie_to_daemon()
    faulthandler.enable()
    if len(argv) > 2:
        os.set_inheritable(int(argv[2]), False)
        global _STACKS
        _STACKS = os.fdopen(int(argv[2]), "w")
        faulthandler.register(signal.SIGUSR2, file=_STACKS, all_threads=False)
    sock = socket.socket(fileno=int(argv[1]))
    channel = Channel(sock)
    _count_output()
    if argv[3:4] == ["spare"]:
        _name_process("mig-spare")
        _warm()
    frame = channel.recv()
    while frame is not None and frame.kind is _wire.Kind.AHEAD:
        _read_ahead(frame.json())
        channel.send(_wire.Kind.AHEAD, {})
        frame = channel.recv()
    if frame is None or frame.kind is not _wire.Kind.LOAD:
        return 2
    spec = frame.json()
    _name_process(f"mig:{spec.get('name', '')}")
    try:
        _enter(str(spec.get("cwd") or os.getcwd()))
        home = _start_home(channel, spec)
        cls = _load(spec)
        thawed, loaded = _thaw(spec) if spec.get("restore") else (None, {})
    except MigError as exc:
        channel.send(_wire.Kind.FAILED, {"error": type(exc).__name__, "message": exc.message})
        return 2
    args = [str(arg) for arg in spec.get("args", [])]
    channel.send(_wire.Kind.LOADED, {"app_class": cls.__qualname__, **loaded})

    def make_app() -> App:
        if thawed is not None:
            return thawed
        app = cls()
        app.args = args
        return app

    return Driver(channel, spec, home).run(make_app, first_run=thawed is None)


def _warm() -> None:
    """Import what a thaw and a checkpoint need (a spare runner does it while it waits for an app)."""
    from migrated import checkpoint
    from migrated.runtime import _files  # noqa: F401  (an app away from home needs it)

    for name in ("Store", "restore", "capture", "make_draft", "code_files", "runtime_fingerprint", "HashMemo"):
        getattr(checkpoint, name)  # the package resolves its names lazily
    checkpoint.package_versions()  # reads what is installed once, for the first capture


def _read_ahead(ahead: dict[str, Any]) -> None:
    """Import what an arriving app had imported and read its pre-copied version, while its move goes on. Only
    a shortcut: what fails here is done again, or fails for good, in the thaw."""
    from migrated import checkpoint

    for name in ahead.get("modules", []):
        if isinstance(name, str) and name.isidentifier():  # a top-level module, nothing else
            with contextlib.suppress(Exception):
                __import__(name)
    with contextlib.suppress(Exception), checkpoint.Store(str(ahead["store"]), readonly=True) as store:
        _AHEAD[:] = [store.read_ahead(str(ahead["app"]), int(ahead["version"]))]


def _enter(cwd: str) -> None:
    """Run in ``cwd`` (a spare runner learns it with the app), as if started there: ``sys.path[0]`` too."""
    started = os.getcwd()
    if cwd == started:
        return
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise AppFileError(
            f"cannot run the app in {cwd}: {exc.strerror or exc}; give a directory that exists"
        ) from None
    if sys.path and sys.path[0] == started:
        sys.path[0] = cwd


def _name_process(name: str) -> None:
    """The process name ``ps`` and ``top`` show (15 bytes at most): a spare runner, or the app it runs."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_name = 15
        ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


def _start_home(channel: Channel, spec: dict[str, Any]) -> _home.Home:
    """The line to the app's home; when the app runs away from home, its files resolve there."""
    where = spec.get("home") or {}
    home = _home.Home(channel, str(where.get("cwd") or os.getcwd()), bool(where.get("away")))
    _home.set_current(home)
    if home.away:
        from migrated.runtime import _files

        code_dir = os.path.dirname(os.path.abspath(spec["file"])) if spec.get("file") else os.getcwd()
        local = [str(path) for path in where.get("local", [])]  # the daemon's state directory: its store
        _files.install(home, _files.default_local_roots(code_dir) + local)
    return home


if __name__ == "__main__":
    sys.exit(main(sys.argv))
