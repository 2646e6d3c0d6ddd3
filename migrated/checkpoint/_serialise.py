"""Serialise an app's state into one pickle stream with out-of-band buffers, and back.

Two attempts, fastest first; an app class starts at the attempt its last capture needed:

1. the C pickler with our ``reducer_override`` (``_reduce``): arrays out of band as views of their memory,
   memoryviews, the app itself, and lambdas, closures and nested functions, which plain pickle refuses. The
   override costs one Python call per object of a class; measured on 200k dataclasses and 200k strings it is
   within noise of a ``dispatch_table`` (0.438 s against 0.436 s; ``pickle.dumps`` 0.392 s), so there is no
   separate attempt without it;
2. dill's pure-Python pickler, ~20x slower, for what the C pickler cannot save (a class defined inside a
   function, a lock, ...). Its streams load with the C unpickler as fast as any other.

Threads, sockets, open files and the like are refused in every attempt, with the attribute path to them.
"""

from __future__ import annotations

import functools
import gc
import io
import pickle
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from migrated.checkpoint import _diagnose
from migrated.checkpoint._reduce import OUT_OF_BAND_MIN, Reductions, Refused
from migrated.checkpoint._snapshot import Bytes, OutOfBand, Segment, Snapshot
from migrated.checkpoint._stream import FrameStripper, FramingMismatch, PlainSink
from migrated.errors import UnserialisableStateError
from migrated.runtime._app import App

__all__ = ["capture", "deserialise", "restore", "serialise"]

PROTOCOL = 5

TakeBuffer = Callable[[pickle.PickleBuffer], bool]


class _Sink(Protocol):
    def write(self, data: Bytes) -> int: ...

    def finish(self) -> list[Segment]: ...


def capture(app: App, name: str) -> Snapshot:
    """Serialise ``app``: its attributes, except those named in ``transient``.

    Buffers in the result may be the app's live memory: keep the app paused until the snapshot is chunked,
    or ``detach()`` it first. Raises ``UnserialisableStateError`` naming the attribute, its type and the fix.
    """
    transient = frozenset(getattr(app, "transient", ()))
    return _serialise(app, app, transient, name)


def serialise(obj: object, name: str = "state") -> Snapshot:
    """Serialise any object graph (``name`` is used in error messages)."""
    return _serialise(obj, None, frozenset(), name)


def restore(snapshot: Snapshot) -> App:
    """The app a ``capture`` saved, with every attribute back; the caller then calls ``on_restore``.

    The app's module must be importable under the name it had when captured (``app_module`` in the manifest).
    """
    app = deserialise(snapshot)
    if not isinstance(app, App):
        raise TypeError(f"the snapshot holds a {type(app).__name__}, not an App")
    return app


def deserialise(snapshot: Snapshot) -> Any:
    """Rebuild what ``serialise`` saved. Arrays are views of the snapshot's buffers (no copy)."""
    buffers = [buffer.data for buffer in snapshot.buffers]
    collecting = gc.isenabled()
    gc.disable()  # the unpickler allocates objects by the million; the collector would rescan them in vain
    try:
        return pickle.loads(snapshot.stream_bytes(), buffers=buffers)
    finally:
        if collecting:
            gc.enable()


# The attempt each app class needed last time, and how many more captures start there before the fastest is
# tried again: a state with a lambda does not fail the fast attempt every time, nor stays slow for ever.
_START: weakref.WeakKeyDictionary[type, tuple[int, int]] = weakref.WeakKeyDictionary()
_RETRY_FASTEST_AFTER = 16


def _serialise(obj: object, app: object | None, transient: frozenset[str], name: str) -> Snapshot:
    start, left = _START.get(type(app), (0, 0)) if app is not None else (0, 0)
    start = start if left > 0 else 0
    for level in range(start, len(_ATTEMPTS)):
        reductions = Reductions(app, transient)
        try:
            snapshot = _ATTEMPTS[level](obj, reductions)
        except Refused as exc:
            raise _explain(obj, reductions, name, exc, exc.obj) from None
        except RecursionError as exc:
            raise _explain(obj, reductions, name, exc, None) from None
        except Exception as exc:  # the next attempt may save it
            if level == len(_ATTEMPTS) - 1:
                raise _explain(obj, reductions, name, exc, reductions.last_seen) from None
            continue
        if app is not None:
            _START[type(app)] = (level, left - 1 if level == start and left > 0 else _RETRY_FASTEST_AFTER)
        return snapshot
    raise AssertionError("unreachable")


def _with_c_pickler(obj: object, reductions: Reductions) -> Snapshot:
    return _stripped(obj, reductions, functools.partial(_CPickler, override=reductions.reduce))


def _with_dill(obj: object, reductions: Reductions) -> Snapshot:
    return _dump(obj, PlainSink(), functools.partial(_dill_pickler, reductions))


_ATTEMPTS: tuple[Callable[[object, Reductions], Snapshot], ...] = (_with_c_pickler, _with_dill)


def _stripped(obj: object, reductions: Reductions, make: Callable[..., pickle.Pickler]) -> Snapshot:
    """A C pickler's stream without frames, or with them should ``FrameStripper`` meet anything unexpected."""
    try:
        return _dump(obj, FrameStripper(), make)
    except FramingMismatch:
        reductions.reset()
        return _dump(obj, _Framed(), make)


def _dump(obj: object, sink: _Sink, make: Callable[..., pickle.Pickler]) -> Snapshot:
    buffers: list[OutOfBand] = []

    def take_buffer(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(OutOfBand(raw, raw.readonly))
        return False

    pickler = make(sink, take_buffer)
    pickler.dump(obj)
    serializer = "dill" if type(pickler).__module__.startswith("dill") else "pickle"
    return Snapshot(tuple(sink.finish()), tuple(buffers), serializer)


class _CPickler(pickle.Pickler):
    """The C pickler with our ``reducer_override``, set before init: the C code looks it up once, there."""

    def __init__(self, sink: _Sink, take_buffer: TakeBuffer, override: Callable[[Any], Any]) -> None:
        self.reducer_override = override  # type: ignore[method-assign]
        super().__init__(sink, protocol=PROTOCOL, buffer_callback=take_buffer)


def _dill_pickler(reductions: Reductions, sink: _Sink, take_buffer: TakeBuffer) -> Any:
    import dill  # 100 ms to import: only when the C pickler cannot save the state

    pickler = dill.Pickler(sink, protocol=PROTOCOL, buffer_callback=take_buffer)
    pickler.reducer_override = reductions.reduce
    pickler.persistent_id = reductions.see  # remembers the object that fails, for the error message
    pickler.framer.start_framing = lambda: None  # unframed, as FrameStripper makes the C pickler's stream
    return pickler


class _Framed:
    """Keeps the C pickler's stream as it is, frames and all (the fallback of ``FrameStripper``)."""

    def __init__(self) -> None:
        self._file = io.BytesIO()

    def write(self, data: Bytes) -> int:
        return self._file.write(data)

    def finish(self) -> list[Segment]:
        return [Segment(self._file.getvalue())]


def _explain(
    obj: object, reductions: Reductions, name: str, exc: BaseException, culprit: object
) -> UnserialisableStateError:
    message = _diagnose.explain(obj, reductions.app, reductions.transient, name, culprit, exc)
    return UnserialisableStateError(message)
