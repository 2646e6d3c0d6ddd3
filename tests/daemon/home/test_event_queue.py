"""The home's event queue: numbered in order, kept until handled, replayed from any copy's cursor."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from migrated.daemon.home._queue import Event, EventQueue
from migrated.runtime._wire import Frame, Kind


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


def test_events_are_numbered_in_order_and_carry_their_header_and_bytes() -> None:
    queue = EventQueue("s1")
    first = queue.add("input", {}, b"hello")
    second = queue.add("data", {"conn": "c1"}, b"\x00\x01")
    assert (first.seq, second.seq) == (1, 2)
    header, data = Frame(Kind.EVENT, second.payload).io()
    assert header == {"conn": "c1", "session": "s1", "seq": 2, "type": "data"} and data == b"\x00\x01"


def test_handled_events_are_forgotten_and_the_rest_replayed_from_a_cursor() -> None:
    queue = EventQueue("s1")
    for n in range(5):
        queue.add("input", {}, str(n).encode())
    queue.ack("s1", 2)
    assert seqs(queue.after("s1", 2)) == [3, 4, 5]
    assert seqs(queue.after("s1", 4)) == [5]
    assert seqs(queue.after("s0", 99)) == [3, 4, 5], "a cursor of another session sees every event kept"
    queue.ack("s0", 5)
    assert seqs(queue.after("s1", 0)) == [3, 4, 5], "an ack of another session forgets nothing"


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=60))
def test_what_is_kept_is_exactly_what_no_ack_covered(script: list[tuple[bool, bytes]]) -> None:
    queue = EventQueue("s")
    acked = 0
    for ack, data in script:
        if ack and queue.next_seq > 1:
            acked = max(acked, queue.next_seq - 1)
            queue.ack("s", acked)
        else:
            queue.add("data", {"conn": "c"}, data)
    kept = seqs(queue.after("s", 0))
    assert kept == list(range(acked + 1, queue.next_seq))
    assert queue.bytes == sum(len(event.payload) for event in queue.after("s", 0))
