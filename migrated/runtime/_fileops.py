"""The file calls of an app away from home, once for both ends: the runner (``_files_proxy``, ``_files_raw``)
builds each request from a class here, the home (``migrated.daemon.home._files``) parses and dispatches it
through the same class.

A call travels in an ``IO`` frame (``_wire``): a JSON header ``{"id", "op", ...arguments}`` and raw bytes (the
bytes written by ``Write``, read by ``Read``). Each call is a class: ``op`` is its name on the wire, its annotated
fields are its arguments in the order they travel (each annotation says how the home checks the value),
``answer`` names the fields of the home's answer. A ``PathCall`` names paths, absolute or relative to the app's
working directory at home; a ``HandleCall`` acts on a file ``Open`` opened there. The runner keeps the working
directory and every position, so a call means the same whenever it runs. A failed call answers the ``OSError``.

The runner imports this module, so it imports nothing heavy: ``FileCall`` builds the call classes itself (made
with ``dataclasses``, they would cost an away runner some 15 ms at its start), typed for mypy as dataclasses are
(``dataclass_transform``).
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from collections.abc import Callable
    from typing import Any, ClassVar, Self, TypeAlias, dataclass_transform

    HomePath: TypeAlias = str  # a path at home: non-empty, without a null byte
    Handle: TypeAlias = int  # a file open at home, as ``Open`` numbered it
    Names: TypeAlias = list[str]
    Position: TypeAlias = int | None  # an offset in the file, or None: at its end
    Seconds: TypeAlias = tuple[float, float] | None  # left out of the call when None
    Nanoseconds: TypeAlias = tuple[int, int] | None  # left out of the call when None
else:

    def dataclass_transform(**_: object) -> Callable[[type], type]:
        return lambda cls: cls


__all__ = [
    "CALLS",
    "MAX_READ",
    "STAT_FIELDS",
    "Access",
    "Argument",
    "Chdir",
    "Chmod",
    "Close",
    "FileCall",
    "HandleCall",
    "Listdir",
    "Mkdir",
    "Open",
    "PathCall",
    "Read",
    "Readlink",
    "Rename",
    "Replace",
    "Rmdir",
    "Scandir",
    "Size",
    "Stat",
    "Truncate",
    "TruncatePath",
    "Unlink",
    "Utime",
    "Write",
    "stat_list",
    "stat_result",
]

MAX_READ = 16 * 1024 * 1024
"""The most one ``Read`` asks for and the home returns (a frame must stay well below ``_wire.MAX_FRAME``)."""

STAT_FIELDS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)
"""The order of a stat's fields as it travels (the three last may be null on some systems)."""
_STAT_EXTRAS = [name for name in STAT_FIELDS[7:] if hasattr(os.stat_result, name)]


def stat_list(result: os.stat_result) -> list[Any]:
    """A stat result as it travels."""
    return [getattr(result, name, None) for name in STAT_FIELDS]


def stat_result(values: list[Any]) -> os.stat_result:
    """A stat result from what travelled."""
    fields = dict(zip(STAT_FIELDS, values, strict=False))
    seconds = [int(fields[name]) // 1_000_000_000 for name in ("st_atime_ns", "st_mtime_ns", "st_ctime_ns")]
    visible = [int(fields[name]) for name in STAT_FIELDS[:7]]
    extras = {name: fields[name] for name in _STAT_EXTRAS if fields.get(name) is not None}
    return os.stat_result((*visible, *seconds), extras)


# -- how the home checks an argument: by its annotation; a malformed one is EINVAL


def _path(value: Any, key: str, op: str) -> Any:
    if not isinstance(value, str) or not value or "\0" in value:
        raise OSError(errno.EINVAL, f"malformed call: {key!r} must be a non-empty path")
    return value


def _integer(value: Any, key: str, op: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise OSError(errno.EINVAL, f"malformed call: {key!r} must be an integer")
    return value


def _boolean(value: Any, key: str, op: str) -> Any:
    if not isinstance(value, bool):
        raise OSError(errno.EINVAL, f"malformed call: {key!r} must be true or false")
    return value


def _names(value: Any, key: str, op: str) -> Any:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise OSError(errno.EINVAL, f"malformed {op}: {key!r} must be a list of names")
    return value


def _position(value: Any, key: str, op: str) -> Any:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise OSError(errno.EINVAL, f"malformed {op}: {key!r} must be a position or null")
    return value


def _pair(kinds: tuple[type, ...]) -> Callable[[Any, str, str], Any]:
    def check(value: Any, key: str, op: str) -> Any:
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
        ):
            raise OSError(errno.EINVAL, f"malformed {op}: times must be two numbers")
        return value[0], value[1]

    return check


_CHECKS: dict[str, Callable[[Any, str, str], Any]] = {
    "HomePath": _path,
    "Handle": _integer,
    "int": _integer,
    "bool": _boolean,
    "Names": _names,
    "Position": _position,
    "Seconds": _pair((int, float)),
    "Nanoseconds": _pair((int,)),
}
_LEFT_OUT_WHEN_NONE = frozenset({"Seconds", "Nanoseconds"})
_REQUIRED: Any = object()


class Argument:
    """One argument of a call: its name, its kind (the name of its annotation), its default."""

    __slots__ = ("check", "default", "kind", "name")

    def __init__(self, name: str, kind: str, default: Any) -> None:
        if kind not in _CHECKS:
            raise TypeError(f"a file call cannot take {name}: {kind}")
        self.name, self.kind, self.default = name, kind, default
        self.check = _CHECKS[kind]

    def __repr__(self) -> str:
        return f"Argument({self.name!r}, {self.kind!r})"


CALLS: dict[str, type[FileCall]] = {}
"""Every call, by its name on the wire."""


# -- the calls


@dataclass_transform(frozen_default=True)
class FileCall:
    """A file call: ``op`` names it on the wire, ``answer`` the fields the home answers; its annotated fields are
    its arguments. Immutable; every subclass that names an ``op`` is in ``CALLS``."""

    op: ClassVar[str]
    answer: ClassVar[tuple[str, ...]] = ()
    arguments: ClassVar[tuple[Argument, ...]] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063  # inspect would cost the runner milliseconds
        added = [Argument(name, kind, cls.__dict__.get(name, _REQUIRED)) for name, kind in own.items()]
        cls.arguments = (*cls.arguments, *added)
        if "op" in cls.__dict__:
            CALLS[cls.op] = cls

    def __init__(self, *values: Any, **named: Any) -> None:
        if len(values) > len(self.arguments):
            raise TypeError(f"{type(self).__name__}() takes {len(self.arguments)} arguments")
        for index, argument in enumerate(self.arguments):
            if index < len(values):
                value = values[index]
            else:
                value = named.pop(argument.name, argument.default)
                if value is _REQUIRED:
                    raise TypeError(f"{type(self).__name__}() needs {argument.name!r}")
            object.__setattr__(self, argument.name, value)
        if named:
            raise TypeError(f"{type(self).__name__}() takes no {', '.join(map(repr, named))}")

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        """The call ``args`` carry, each argument checked (``OSError`` EINVAL when one is malformed)."""
        call = object.__new__(cls)
        for argument in cls.arguments:
            default = None if argument.default is _REQUIRED else argument.default
            value = argument.check(args.get(argument.name, default), argument.name, cls.op)
            object.__setattr__(call, argument.name, value)
        return call

    def args(self) -> dict[str, Any]:
        """The call's arguments as they travel."""
        values = ((argument, getattr(self, argument.name)) for argument in self.arguments)
        return {
            argument.name: value
            for argument, value in values
            if value is not None or argument.kind not in _LEFT_OUT_WHEN_NONE
        }

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a file call cannot change: {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a file call cannot change: {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileCall) and type(other) is type(self) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{argument.name}={getattr(self, argument.name)!r}" for argument in self.arguments)
        return f"{type(self).__name__}({shown})"

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, argument.name) for argument in self.arguments)


class PathCall(FileCall):
    """A call on paths at home."""


class HandleCall(FileCall):
    """A call on a file open at home."""

    handle: Handle

    @staticmethod
    def handle_of(args: dict[str, Any]) -> int:
        """The handle ``args`` name, checked alone (the home looks it up before it checks the rest)."""
        handle: int = _integer(args.get("handle"), "handle", "")
        return handle


class Open(PathCall):
    """Open a file; ``flags`` from read, write, create, truncate, exclusive, append. Not a directory."""

    op = "file.open"
    answer = ("handle", "size", "regular", "path")  # path: absolute, normalised
    path: HomePath
    flags: Names
    perm: int = 0o666


class Read(HandleCall):
    """Up to ``size`` bytes at ``offset`` (``MAX_READ`` at most), in the answer's data: short only at the end."""

    op = "file.read"
    offset: int
    size: int


class Write(HandleCall):
    """Write the call's data at ``offset`` (None: append); ``end``: the offset after the data."""

    op = "file.write"
    answer = ("end",)
    offset: Position


class Truncate(HandleCall):
    """Cut or extend the open file to ``size``."""

    op = "file.truncate"
    size: int


class Size(HandleCall):
    """The open file's size now."""

    op = "file.size"
    answer = ("size",)


class Close(HandleCall):
    """Close the open file."""

    op = "file.close"


class Stat(PathCall):
    """``os.stat`` (``os.lstat`` unless ``follow``); ``stat``: a ``stat_list``."""

    op = "os.stat"
    answer = ("stat",)
    path: HomePath
    follow: bool = True


class Listdir(PathCall):
    """``os.listdir``."""

    op = "os.listdir"
    answer = ("names",)
    path: HomePath


class Scandir(PathCall):
    """``os.scandir``; ``entries``: ``[name, lstat, stat or None]`` each (stats as ``stat_list``, the second for a
    symbolic link whose target exists)."""

    op = "os.scandir"
    answer = ("entries",)
    path: HomePath


class Mkdir(PathCall):
    """``os.mkdir``."""

    op = "os.mkdir"
    path: HomePath
    perm: int = 0o777


class Rmdir(PathCall):
    """``os.rmdir``."""

    op = "os.rmdir"
    path: HomePath


class Unlink(PathCall):
    """``os.unlink`` (and ``os.remove``)."""

    op = "os.unlink"
    path: HomePath


class Rename(PathCall):
    """``os.rename``."""

    op = "os.rename"
    src: HomePath
    dst: HomePath


class Replace(PathCall):
    """``os.replace``."""

    op = "os.replace"
    src: HomePath
    dst: HomePath


class Access(PathCall):
    """``os.access``; ``ok``: the answer."""

    op = "os.access"
    answer = ("ok",)
    path: HomePath
    mode: int
    follow: bool = True
    effective: bool = False


class Utime(PathCall):
    """``os.utime`` with ``times``, or ``ns`` (when ``times`` is None), or neither: now."""

    op = "os.utime"
    path: HomePath
    follow: bool = True
    times: Seconds = None
    ns: Nanoseconds = None


class TruncatePath(PathCall):
    """``os.truncate``."""

    op = "os.truncate"
    path: HomePath
    size: int


class Readlink(PathCall):
    """``os.readlink``."""

    op = "os.readlink"
    answer = ("target",)
    path: HomePath


class Chdir(PathCall):
    """Check that ``path`` is a directory the app may enter; ``cwd``: its real path (the runner keeps the cwd)."""

    op = "os.chdir"
    answer = ("cwd",)
    path: HomePath


class Chmod(PathCall):
    """``os.chmod``."""

    op = "os.chmod"
    path: HomePath
    perm: int
    follow: bool = True
