"""The limits around pairing, as pure logic on a fake clock: tries per code, attempts per address, open calls."""

from __future__ import annotations

import pytest

from migrated.errors import PairingError
from migrated.transport._auth import OpenCalls
from migrated.transport._pairing import TRIES, AttemptLimit, CodeBook


def test_looking_at_the_code_spends_no_try() -> None:
    book = CodeBook()
    code, _ = book.issue(0.0, 60.0)
    for _ in range(3 * TRIES):
        assert book.current(1.0, "alpha") == code
    for _ in range(TRIES):
        assert book.take_try(1.0, "alpha") == code
    for spend in (book.current, book.take_try):
        with pytest.raises(PairingError, match="tried too often"):
            spend(1.0, "alpha")


def test_looking_at_a_missing_or_expired_code_says_why() -> None:
    book = CodeBook()
    with pytest.raises(PairingError, match="shows no pairing code"):
        book.current(0.0, "alpha")
    book.issue(0.0, 60.0)
    with pytest.raises(PairingError, match="expired"):
        book.current(60.0, "alpha")
    assert not book.active(60.0)


def test_an_address_gets_a_burst_then_one_attempt_per_interval() -> None:
    limit = AttemptLimit(burst=3, interval=2.0)
    for _ in range(3):
        limit.take(100.0, "10.0.0.2")
    with pytest.raises(PairingError) as refused:
        limit.take(100.5, "10.0.0.2")
    assert str(refused.value) == "too many pairing attempts came from 10.0.0.2; wait 2 s and try again"
    limit.take(100.0, "10.0.0.3")  # another address has its own attempts
    limit.take(102.0, "10.0.0.2")  # refused attempts cost nothing: one interval after the burst, one more
    with pytest.raises(PairingError, match="wait 2 s"):
        limit.take(102.0, "10.0.0.2")
    for _ in range(3):
        limit.take(200.0, "10.0.0.2")  # idle long enough: the whole burst again, never more


def test_five_tries_from_one_address_take_seconds() -> None:
    limit = AttemptLimit()
    taken: list[float] = []
    now = 0.0
    while len(taken) < TRIES:
        try:
            limit.take(now, "10.0.0.2")
            taken.append(now)
        except PairingError:
            pass
        now += 0.1
    assert taken[-1] - taken[0] >= 4.0 - 1e-9


def test_the_attempt_limit_remembers_a_bounded_number_of_addresses() -> None:
    limit = AttemptLimit(burst=1, interval=10.0, max_addresses=100)
    limit.take(0.0, "10.0.0.1")
    for n in range(10_000):
        limit.take(1.0, f"fd00::{n:x}")
    assert len(limit) == 100
    limit.take(2.0, "10.0.0.1")  # forgotten, so it starts again like any new address


def test_open_calls_are_few_per_address_and_few_in_all() -> None:
    calls = OpenCalls(per_host=1, total=3)
    assert calls.enter("10.0.0.2")
    assert not calls.enter("10.0.0.2")
    assert calls.enter("10.0.0.3") and calls.enter("10.0.0.4")
    assert not calls.enter("10.0.0.5")
    calls.leave("10.0.0.2")
    assert calls.enter("10.0.0.5")
    for host in ("10.0.0.3", "10.0.0.4", "10.0.0.5"):
        calls.leave(host)
    assert len(calls) == 0 and calls.enter("10.0.0.2")
