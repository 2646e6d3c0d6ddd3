"""Constructors the unpickler calls to rebuild what ``_reduce`` took apart.

Stored checkpoints name these functions (``migrated.checkpoint._rebuild.make_view``, ...), so their names and
signatures are part of the checkpoint format: never rename them or change what their arguments mean; add new
ones instead. This module imports nothing heavy: a runner that restores an app loads it first.
"""

from __future__ import annotations

import importlib
import marshal
import sys
import types
from typing import Any

__all__ = [
    "closed_file",
    "make_app",
    "make_cell",
    "make_function",
    "make_mappingproxy",
    "make_memoryview",
    "make_view",
    "memory",
    "reopen_file",
    "set_app_state",
    "set_cell",
]


def make_app(cls: Any) -> Any:
    """A bare instance of the app's class; its state follows."""
    return cls.__new__(cls)


def set_app_state(app: Any, state: dict[str, Any]) -> None:
    """Put the saved attributes back, bypassing any ``__setstate__``."""
    app.__dict__.update(state)


def memory(buffer: Any) -> Any:
    """The memory that one or more arrays are views of (an out-of-band buffer)."""
    return buffer


def make_view(
    root: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: Any, writeable: bool
) -> Any:
    """A NumPy array over ``root``'s memory, so arrays that shared memory share it again."""
    numpy = sys.modules.get("numpy") or importlib.import_module("numpy")
    array = numpy.ndarray(shape, dtype, buffer=root, offset=offset, strides=strides)
    if not writeable and array.flags.writeable:
        array.flags.writeable = False
    return array


def make_mappingproxy(mapping: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    """A read-only view of ``mapping`` (a copy of the one saved, as dill brings one back)."""
    return types.MappingProxyType(mapping)


def make_memoryview(buffer: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    """A memoryview with the saved format and shape over ``buffer``."""
    view: Any = memoryview(buffer).cast("B")
    cast: memoryview = view.cast(fmt, shape) if shape else view.cast(fmt)
    return cast


def make_function(code: bytes, module: str, name: str, defaults: Any, closure: Any, extra: dict[str, Any]) -> Any:
    """A function rebuilt from its marshalled code, its module's globals and its closure cells."""
    namespace = sys.modules.get(module) or importlib.import_module(module)
    function = types.FunctionType(marshal.loads(code), namespace.__dict__, name, defaults, closure)
    for attribute, value in extra.items():
        setattr(function, attribute, value)
    return function


def make_cell() -> types.CellType:
    """An empty closure cell; its contents follow, so a function can sit in its own closure."""
    return types.CellType()


def set_cell(cell: types.CellType, state: tuple[Any]) -> None:
    """Fill a closure cell."""
    cell.cell_contents = state[0]


def reopen_file(
    path: str | bytes,
    mode: str,
    position: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    buffering: int = -1,
) -> Any:
    """An open file again: ``path`` (absolute, at the app's home) in ``mode``, never truncated, at ``position``
    (a text file's ``tell`` cookie). One that cannot be reopened comes back closed, with a warning."""
    from migrated.runtime import _files

    try:
        return _files.reopen(path, mode, position, encoding, errors, newline, buffering)
    except OSError as exc:
        import warnings

        warnings.warn(f"the app's file {path!r} could not be reopened ({exc}); it is closed", stacklevel=2)
        return _files.closed_file(path, mode, "b" not in mode)


def closed_file(name: Any, mode: str, text: bool) -> Any:
    """A file that was closed when saved: closed again, with its name and mode."""
    from migrated.runtime import _files

    return _files.closed_file(name, mode, text)
