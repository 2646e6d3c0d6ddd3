"""Retention policies: parsing, and which versions a policy thins (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from migrated.checkpoint import RetentionPolicy, parse_policy, thin
from migrated.errors import RetentionPolicyError, UsageError

HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True)
class V:
    version: int
    created: float
    kind: str = "autosave"


def test_parse_the_documented_syntax() -> None:
    policy = parse_policy("last=20,hourly=24,daily=7")
    assert policy == RetentionPolicy(last=20, hourly=24, daily=7)
    assert str(policy) == "last=20,hourly=24,daily=7"
    assert parse_policy(" daily = 3 ") == RetentionPolicy(daily=3)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "'' is not NAME=COUNT"),
        ("last", "'last' is not NAME=COUNT"),
        ("weekly=3", "'weekly' is not a rule (the rules are daily, hourly, last)"),
        ("last=x", "last must be a whole number of versions, not 'x'"),
        ("last=-1", "last must be a whole number of versions, not '-1'"),
        ("last=2,last=3", "last is given twice"),
    ],
)
def test_parse_errors_say_what_is_wrong_and_show_the_syntax(text: str, problem: str) -> None:
    with pytest.raises(RetentionPolicyError) as caught:
        parse_policy(text)
    assert str(caught.value) == (
        f"cannot read the retention policy {text!r}: {problem}; write it like last=20,hourly=24,daily=7"
    )
    assert isinstance(caught.value, UsageError)


def test_last_keeps_the_newest_automatic_versions() -> None:
    versions = [V(n, n * 60.0) for n in range(1, 11)]
    assert thin(versions, RetentionPolicy(last=3)) == [1, 2, 3, 4, 5, 6, 7]


def test_manual_close_and_other_user_versions_are_never_thinned() -> None:
    kinds = ["manual", "autosave", "close", "autosave", "restore", "fork", "import", "crash", "move", "autosave"]
    versions = [V(n, n * 60.0, kind) for n, kind in enumerate(kinds, start=1)]
    assert thin(versions, RetentionPolicy(last=1)) == [2, 4, 8, 9]


def test_the_newest_version_is_kept_whatever_the_policy() -> None:
    versions = [V(1, 0.0, "manual"), V(2, 60.0)]
    assert thin(versions, RetentionPolicy(hourly=0, last=0, daily=1)) == []


def test_hourly_keeps_the_newest_of_each_recent_hour_that_has_versions() -> None:
    # four per hour over 5 hours: 20 versions, newest last
    versions = [V(n + 1, 10 * HOUR + n * HOUR / 4) for n in range(20)]
    kept = {v.version for v in versions} - set(thin(versions, RetentionPolicy(hourly=3)))
    assert kept == {20, 16, 12}


def test_daily_reaches_back_over_gaps() -> None:
    days = [0, 1, 5, 9, 10]  # days with versions; gaps do not count
    versions = [V(n + 1, d * DAY + 3600 * h) for n, (d, h) in enumerate((d, h) for d in days for h in (1, 2))]
    kept = {v.version for v in versions} - set(thin(versions, RetentionPolicy(daily=3)))
    assert kept == {10, 8, 6}


def test_rules_add_up() -> None:
    versions = [V(n + 1, n * HOUR / 2) for n in range(96)]  # two an hour over two days; hour h ends with 2h + 2
    dropped = thin(versions, RetentionPolicy(last=5, hourly=10, daily=2))
    kept = {v.version for v in versions} - set(dropped)
    newest, hourly, daily = set(range(92, 97)), set(range(78, 97, 2)), {48, 96}
    assert kept == newest | hourly | daily
    assert dropped == sorted(dropped)


def test_an_empty_policy_keeps_everything() -> None:
    assert thin([V(n, n) for n in range(1, 50)], RetentionPolicy()) == []
