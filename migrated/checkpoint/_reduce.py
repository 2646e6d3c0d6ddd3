"""Reductions the pickler uses beyond its defaults: the app itself, NumPy arrays and their views, memoryviews,
functions that cannot be pickled by name (lambdas, closures, nested functions), locks (recreated free, so a
``queue.Queue`` or a ``threading.Event`` saves too), and the types we refuse.

Some kinds the C pickler refuses only for want of a reducer get one here, so that one of them does not send
the whole state through dill's pure-Python pickler: modules (by name, as dill saves an importable module),
code objects (marshal) and mapping proxies (a copy of the mapping, as dill saves them).

``Reductions.reduce`` is the pickler's ``reducer_override``. It is called for every object that is not a
builtin container or scalar, so the per-type decision is cached.
"""

from __future__ import annotations

import _thread
import importlib
import io
import marshal
import os
import pickle
import stat
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from migrated.checkpoint import _rebuild

__all__ = ["OUT_OF_BAND_MIN", "Reductions", "Refused"]

OUT_OF_BAND_MIN = 64 * 1024
"""Buffers from this size go out of band; smaller ones stay in the stream."""

_Reducer = Callable[["Reductions", Any], Any]

# (module, qualname) of classes whose instances are refused, with what to call them and how to bring them back.
_REFUSED: dict[tuple[str, str], tuple[str, str]] = {
    ("threading", "Thread"): ("a thread", "start it again"),
    ("socket", "socket"): ("a socket", "reopen it"),
    ("subprocess", "Popen"): ("a subprocess", "start it again"),
    ("sqlite3", "Connection"): ("a sqlite3.Connection", "reopen it"),
    ("sqlite3", "Cursor"): ("a sqlite3.Cursor", "reopen it"),
    ("_io", "_IOBase"): ("an open file", "reopen it"),
    ("mmap", "mmap"): ("a memory map", "reopen it"),
    ("selectors", "BaseSelector"): ("a selector", "create it again"),
    ("asyncio.events", "AbstractEventLoop"): ("an event loop", "create it again"),
}
# In-memory files are plain values.
_ALLOWED: frozenset[tuple[str, str]] = frozenset({("_io", "BytesIO"), ("_io", "StringIO")})


class Refused(Exception):
    """The state holds an object we refuse to save (a thread, a socket, an open file, ...)."""

    def __init__(self, obj: object, what: str, fix: str) -> None:
        super().__init__(what)
        self.obj = obj
        self.what = what
        self.fix = fix


class _Root:
    """Stands for the memory behind one or more arrays, so that pickle memoizes it once: ``flat`` is that
    memory as a flat uint8 array."""

    __slots__ = ("flat",)

    def __init__(self, flat: Any) -> None:
        self.flat = flat


class Reductions:
    """The reductions of one pickling run: ``reduce`` is its ``reducer_override``."""

    def __init__(self, app: object | None = None, transient: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._app: object = _UNKNOWN if app is None else app
        self.transient = transient
        self._roots: dict[int, _Root] = {}
        self.last_seen: object = None

    def reset(self) -> None:
        """Forget the run so far, to pickle again."""
        self._roots.clear()

    def see(self, obj: object) -> None:
        """A ``persistent_id`` that saves nothing but remembers the object the pickler was given last: when
        pickling fails, the object that failed."""
        self.last_seen = obj

    def reduce(self, obj: Any) -> Any:
        """A reduction for ``obj``, or ``NotImplemented`` for the pickler's own."""
        if obj is self._app:
            return self._reduce_app(obj)
        cls = type(obj)
        reducer = _CACHE.get(cls, _UNKNOWN)
        if reducer is _UNKNOWN:
            reducer = _CACHE[cls] = _reducer_for(cls)
        return NotImplemented if reducer is None else reducer(self, obj)

    def root(self, owner: object, flat: Any) -> _Root:
        """The one stand-in for the memory of ``owner`` (``flat``: that memory as uint8) in this run."""
        token = self._roots.get(id(owner))
        if token is None:
            token = self._roots[id(owner)] = _Root(flat)
        return token

    def _reduce_app(self, app: Any) -> Any:
        state = {key: value for key, value in vars(app).items() if key not in self.transient}
        return (_rebuild.make_app, (type(app),), state, None, None, _rebuild.set_app_state)


_UNKNOWN: Any = object()
_CACHE: dict[type, _Reducer | None] = {}


def _reducer_for(cls: type) -> _Reducer | None:
    special = _SPECIAL.get(cls)
    if special is not None:
        return special
    if getattr(cls, "_migrated_reopen", False) is True:  # a file open at the app's home (runtime._files)
        return _reduce_file
    if _is_ndarray(cls):
        return _reduce_ndarray
    for base in cls.__mro__:
        key = (base.__module__, base.__qualname__)
        if key in _ALLOWED:
            return None
        if key in _REFUSED:
            return _refuser(*_REFUSED[key])
    return None


def _is_ndarray(cls: type) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and cls is numpy.ndarray


def _refuser(what: str, fix: str) -> _Reducer:
    def refuse(reductions: Reductions, obj: Any) -> Any:
        raise Refused(obj, what, fix)

    return refuse


def _reduce_root(reductions: Reductions, root: _Root) -> Any:
    return (_rebuild.memory, (pickle.PickleBuffer(root.flat),))


def _reduce_memoryview(reductions: Reductions, view: memoryview) -> Any:
    if view.contiguous:
        return (_rebuild.make_memoryview, (pickle.PickleBuffer(view), view.format, view.shape))
    return (_rebuild.make_memoryview, (view.tobytes(), view.format, view.shape))


def _reduce_cell(reductions: Reductions, cell: types.CellType) -> Any:
    try:
        contents = cell.cell_contents
    except ValueError:  # an empty cell: a variable not assigned yet
        return (_rebuild.make_cell, ())
    return (_rebuild.make_cell, (), (contents,), None, None, _rebuild.set_cell)


def _reduce_function(reductions: Reductions, function: types.FunctionType) -> Any:
    module = sys.modules.get(function.__module__)
    if _importable(function, module) or module is None or vars(module) is not function.__globals__:
        return NotImplemented
    extra = {"__qualname__": function.__qualname__, "__kwdefaults__": function.__kwdefaults__}
    if function.__dict__:
        extra["__dict__"] = function.__dict__
    if function.__annotations__:
        extra["__annotations__"] = function.__annotations__
    code = marshal.dumps(function.__code__)
    args = (code, function.__module__, function.__name__, function.__defaults__, function.__closure__, extra)
    return (_rebuild.make_function, args)


def _importable(function: types.FunctionType, module: types.ModuleType | None) -> bool:
    """Whether pickle can save ``function`` by name: it is what its module and qualified name point to."""
    target: Any = module
    for part in function.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is function


def _reduce_ndarray(reductions: Reductions, array: Any) -> Any:
    """Arrays go out of band as a view over the memory that owns them, so views stay views."""
    if array.dtype.hasobject or array.size == 0:
        return NotImplemented
    found = _memory_owner(array)
    if found is None:
        return NotImplemented
    owner, flat, offset = found
    token = reductions.root(owner, flat)
    args = (token, offset, array.shape, array.strides, array.dtype, bool(array.flags.writeable))
    return (_rebuild.make_view, args)


def _memory_owner(array: Any) -> tuple[object, Any, int] | None:
    """The object that owns ``array``'s memory, that memory as flat uint8, and the array's offset in it;
    ``None`` when it cannot be used."""
    numpy = sys.modules["numpy"]
    owner = array
    while isinstance(owner.base, numpy.ndarray):
        owner = owner.base
    if owner.base is not None:
        owner = owner.base.obj if isinstance(owner.base, memoryview) else owner.base
    flat = _flat_memory(owner, numpy)
    if flat is None:
        return None
    offset = array.__array_interface__["data"][0] - flat.__array_interface__["data"][0]
    low, high = _extent(array)
    if offset + low < 0 or offset + high > flat.nbytes:
        return None
    return owner, flat, offset


def _flat_memory(owner: object, numpy: Any) -> Any:
    """``owner``'s memory as a flat uint8 array (no copy), if it is one contiguous buffer we may save."""
    if type(owner).__name__ == "mmap":
        return None  # a mapped file: save only what the array shows of it
    if isinstance(owner, numpy.ndarray):
        if owner.dtype.hasobject or not (owner.flags.c_contiguous or owner.flags.f_contiguous):
            return None
        return owner.ravel(order="A").view(numpy.uint8)
    try:
        return numpy.frombuffer(owner, dtype=numpy.uint8)
    except (TypeError, ValueError, BufferError):
        return None


def _extent(array: Any) -> tuple[int, int]:
    """Lowest and highest byte (exclusive) an array touches, relative to its first element."""
    low = sum((n - 1) * s for n, s in zip(array.shape, array.strides, strict=True) if s < 0)
    high = sum((n - 1) * s for n, s in zip(array.shape, array.strides, strict=True) if s > 0)
    return low, high + array.itemsize


def _reduce_lock(reductions: Reductions, lock: Any) -> Any:
    """A lock comes back new and free: between two events nothing of the app may hold one."""
    if lock.locked():
        raise Refused(lock, "a lock held between events", "recreate it")
    return (_thread.allocate_lock, ())


def _reduce_rlock(reductions: Reductions, lock: Any) -> Any:
    return (threading.RLock, ())


def _reduce_module(reductions: Reductions, module: types.ModuleType) -> Any:
    """An importable module by its name; ``__main__`` and modules not in ``sys.modules`` are left to dill."""
    name = module.__name__
    if name == "__main__" or sys.modules.get(name) is not module:
        return NotImplemented
    return (importlib.import_module, (name,))


def _reduce_code(reductions: Reductions, code: types.CodeType) -> Any:
    return (marshal.loads, (marshal.dumps(code),))


def _reduce_mappingproxy(reductions: Reductions, proxy: types.MappingProxyType[Any, Any]) -> Any:
    return (_rebuild.make_mappingproxy, (dict(proxy),))


_STD_NAMES = frozenset({"<stdin>", "<stdout>", "<stderr>"})


def _reduce_file(reductions: Reductions, file: Any) -> Any:
    """An open file on a regular file comes back open on the same path (absolute, at the app's home), in the
    same mode, at the same position; a closed one comes back closed. Pipes, sockets, the standard streams and
    files in memory are refused."""
    text = isinstance(file, io.TextIOWrapper)
    raw = _raw_of(file)
    name = getattr(raw, "name", None)
    mode = _file_mode(file, raw, text)
    if file.closed:
        return (_rebuild.closed_file, (name if isinstance(name, str | bytes) else None, mode, text))
    path = _reopen_path(raw, name)
    if path is None:
        raise Refused(file, "an open file", "reopen it")
    try:
        file.flush()
        position = file.tell()
    except OSError as exc:  # a text file read with next() cannot tell its position
        raise Refused(file, f"an open file whose position cannot be told ({exc})", "reopen it") from None
    buffering = 0 if raw is file else 1 if text and file.line_buffering else -1
    encoding, errors = (file.encoding, file.errors) if text else (None, None)
    newline = getattr(file, "_migrated_newline", None)
    args = (path, mode, position, encoding, errors, newline)
    return (_rebuild.reopen_file, (*args, buffering) if buffering != -1 else args)


def _raw_of(file: Any) -> Any:
    """The raw file under a text or buffered file (itself for a raw one)."""
    inner = file.buffer if isinstance(file, io.TextIOWrapper) else file
    return getattr(inner, "raw", inner)


def _file_mode(file: Any, raw: Any, text: bool) -> str:
    """The mode to reopen with: what ``open`` was given for a text file, the raw file's for a binary one."""
    raw_mode = getattr(raw, "mode", "rb")
    raw_mode = raw_mode if isinstance(raw_mode, str) else "rb"
    if not text:
        return raw_mode
    mode = getattr(file, "mode", None)
    return mode if isinstance(mode, str) else raw_mode.replace("b", "")


def _reopen_path(raw: Any, name: object) -> str | bytes | None:
    """The absolute path at home of a regular file to reopen, or ``None`` when it is no such file."""
    home_path = getattr(raw, "home_path", None)
    if getattr(type(raw), "_migrated_reopen", False) is True and isinstance(home_path, str):
        return home_path if getattr(raw, "regular", False) else None
    if type(raw) is not io.FileIO or not isinstance(name, str | bytes) or name in _STD_NAMES:
        return None
    if not raw.closefd or not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
        return None
    return os.path.abspath(name)


_SPECIAL: dict[type, _Reducer] = {
    _Root: _reduce_root,
    memoryview: _reduce_memoryview,
    types.CellType: _reduce_cell,
    types.FunctionType: _reduce_function,
    types.ModuleType: _reduce_module,
    types.CodeType: _reduce_code,
    types.MappingProxyType: _reduce_mappingproxy,
    _thread.LockType: _reduce_lock,
    type(threading.RLock()): _reduce_rlock,
    io.TextIOWrapper: _reduce_file,
    io.BufferedReader: _reduce_file,
    io.BufferedWriter: _reduce_file,
    io.BufferedRandom: _reduce_file,
    io.FileIO: _reduce_file,
}
