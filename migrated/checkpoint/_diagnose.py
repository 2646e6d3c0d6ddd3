"""Say what in a state cannot be saved, where it is, and how to fix it, in one sentence.

The pickler tells us which object failed (the last one it was given); this module finds the attribute path
that leads to it from the app, walking attributes, items, closures and slots by identity.
"""

from __future__ import annotations

import collections
import re
import types
from collections.abc import Iterator
from typing import Any

from migrated.checkpoint._reduce import Refused

__all__ = ["explain", "find_path"]

_MAX_VISITS = 2_000_000
_MEMBER = "{…}"  # a member of a set: "a member of self.peers", or "self.peers{…}.sock" further in
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), range, type, types.ModuleType)


def explain(
    state: object, app: object | None, transient: frozenset[str], name: str, culprit: object, exc: BaseException
) -> str:
    """The error message for ``state`` (the app, when ``app`` is set), in which ``culprit`` failed with ``exc``."""
    head = f"cannot checkpoint {name!r}"
    if isinstance(exc, RecursionError):
        return (
            f"{head}: its state is nested too deeply for pickle (a long linked chain of objects); "
            "keep long chains in a list or dict instead"
        )
    roots = _roots(state, app, transient)
    path = find_path(roots, culprit)
    what, fix = (exc.what, exc.fix) if isinstance(exc, Refused) else (_a(culprit), "rebuild it")
    reason = "" if isinstance(exc, Refused) else f", which cannot be saved ({_reason(exc)})"
    if isinstance(exc, Refused) and what != _a(culprit):
        what = f"{what} ({_type_name(type(culprit))})"
    if path is None:
        where = "self" if app is not None else "the state"
        return f"{head}: {where} holds {what}{reason}; {_remedy(app, None, fix)}"
    shown = f"a member of {path.removesuffix(_MEMBER)}" if path.endswith(_MEMBER) else path
    return f"{head}: {shown} is {what}{reason}; {_remedy(app, path, fix)}"


def find_path(roots: list[tuple[str, object]], target: object) -> str | None:
    """The shortest path from one of ``roots`` to ``target`` (by identity), breadth first."""
    queue = collections.deque(roots)
    seen = {id(value) for _, value in roots}
    visits = 0
    while queue and visits < _MAX_VISITS:
        path, value = queue.popleft()
        visits += 1
        if value is target:
            return path
        for label, child in _children(value):
            if id(child) not in seen:
                seen.add(id(child))
                queue.append((path + label, child))
    return None


def _roots(state: object, app: object | None, transient: frozenset[str]) -> list[tuple[str, object]]:
    if app is None:
        return [("state", state)]
    return [(f"self.{key}", value) for key, value in vars(app).items() if key not in transient]


def _children(value: Any) -> Iterator[tuple[str, object]]:
    if isinstance(value, _ATOMS):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"[{_short(key)}]", item
    elif isinstance(value, list | tuple | collections.deque):
        for index, item in enumerate(value):
            yield f"[{index}]", item
    elif isinstance(value, set | frozenset):
        for item in value:
            yield _MEMBER, item
    elif isinstance(value, types.FunctionType | types.MethodType):
        yield from _function_children(value)
    else:
        yield from _attribute_children(value)


def _function_children(value: Any) -> Iterator[tuple[str, object]]:
    if isinstance(value, types.MethodType):
        yield ".__self__", value.__self__
        return
    names = value.__code__.co_freevars
    for var, cell in zip(names, value.__closure__ or (), strict=False):
        try:
            yield f" (closure variable {var})", cell.cell_contents
        except ValueError:
            continue


def _attribute_children(value: Any) -> Iterator[tuple[str, object]]:
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        for key, item in attributes.items():
            yield f".{key}", item
    for cls in type(value).__mro__:
        for slot in _slots(cls):
            if hasattr(value, slot):
                yield f".{slot}", getattr(value, slot)


def _slots(cls: type) -> tuple[str, ...]:
    slots = cls.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(s for s in slots if s not in ("__dict__", "__weakref__"))


def _remedy(app: object | None, path: str | None, fix: str) -> str:
    if app is None:
        return "leave it out of what is saved"
    if path is None:
        return f"list the attribute that holds it in transient and {fix} in on_restore"
    attribute = re.split(r"[.\[{ ]", path[len("self.") :])[0]
    if path == f"self.{attribute}":
        return f"list it in transient and {fix} in on_restore"
    return f"list {attribute!r} in transient and {fix} in on_restore"


def _a(value: object) -> str:
    name = _type_name(type(value))
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _type_name(cls: type) -> str:
    module = {"builtins": "", "_io": "io", "_socket": "socket"}.get(cls.__module__, cls.__module__)
    return f"{module}.{cls.__qualname__}" if module else cls.__qualname__


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 120 else text[:117] + "..."


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
