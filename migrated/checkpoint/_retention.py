"""Retention: which automatic versions to thin, as a pure function of the version list and a policy.

``last=20,hourly=24,daily=7`` keeps the 20 newest thinnable versions, plus the newest one in each of the 24
most recent hours that have one, plus the newest one in each of the 7 most recent days that have one (as
restic's ``--keep-*``). Only automatic kinds (autosave, move, crash) are ever thinned: manual, close, restore,
fork and import versions are kept, and so is the newest version of all, whatever its kind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

from migrated.errors import RetentionPolicyError

__all__ = ["THINNED_KINDS", "RetentionPolicy", "parse_policy", "thin"]

THINNED_KINDS = frozenset({"autosave", "move", "crash"})
_EXAMPLE = "last=20,hourly=24,daily=7"


@dataclass(frozen=True)
class RetentionPolicy:
    """How many automatic versions to keep: the newest ``last``, and one per hour and per day back."""

    last: int = 0
    hourly: int = 0
    daily: int = 0

    def __str__(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name))

    @property
    def keeps_everything(self) -> bool:
        """An empty policy thins nothing."""
        return not (self.last or self.hourly or self.daily)


class VersionLike(Protocol):
    """What ``thin`` needs to know of a version."""

    @property
    def version(self) -> int: ...

    @property
    def created(self) -> float: ...

    @property
    def kind(self) -> str: ...


def parse_policy(text: str) -> RetentionPolicy:
    """Parse ``last=N,hourly=H,daily=D`` (any of them, in any order)."""
    values: dict[str, int] = {}
    names = {f.name for f in fields(RetentionPolicy)}
    for item in text.split(","):
        name, value = _parse_item(text, item.strip(), names)
        if name in values:
            raise _error(text, f"{name} is given twice")
        values[name] = value
    return RetentionPolicy(**values)


def _parse_item(text: str, item: str, names: set[str]) -> tuple[str, int]:
    name, equals, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not equals or not name:
        raise _error(text, f"{item!r} is not NAME=COUNT")
    if name not in names:
        raise _error(text, f"{name!r} is not a rule (the rules are {', '.join(sorted(names))})")
    if not value.isdigit():
        raise _error(text, f"{name} must be a whole number of versions, not {value!r}")
    return name, int(value)


def _error(text: str, problem: str) -> RetentionPolicyError:
    return RetentionPolicyError(f"cannot read the retention policy {text!r}: {problem}; write it like {_EXAMPLE}")


def thin(versions: Iterable[VersionLike], policy: RetentionPolicy, tz: dt.tzinfo = dt.UTC) -> list[int]:
    """The version numbers ``policy`` drops from ``versions``, oldest first (hours and days in ``tz``)."""
    ordered = sorted(versions, key=lambda v: v.version, reverse=True)
    if policy.keeps_everything or not ordered:
        return []
    candidates = [v for v in ordered[1:] if v.kind in THINNED_KINDS]
    automatic = [v for v in ordered if v.kind in THINNED_KINDS]
    kept = {v.version for v in automatic[: policy.last]}
    kept |= _newest_per_bucket(automatic, policy.hourly, lambda t: _bucket(t, tz, "%Y-%m-%d %H"))
    kept |= _newest_per_bucket(automatic, policy.daily, lambda t: _bucket(t, tz, "%Y-%m-%d"))
    return sorted(v.version for v in candidates if v.version not in kept)


def _newest_per_bucket(newest_first: Sequence[VersionLike], count: int, bucket: Callable[[float], str]) -> set[int]:
    kept: dict[str, int] = {}
    for version in newest_first:
        if len(kept) >= count:
            break
        kept.setdefault(bucket(version.created), version.version)
    return set(kept.values())


def _bucket(created: float, tz: dt.tzinfo, fmt: str) -> str:
    return dt.datetime.fromtimestamp(created, tz).strftime(fmt)
