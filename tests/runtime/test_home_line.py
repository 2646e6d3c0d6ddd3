"""The runner's line to its home: calls and their answers, numbered network output kept until acknowledged, the
event cursor, and what a checkpoint keeps of it. The daemon is a fake link that answers as the home would."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from migrated.runtime import _home
from migrated.runtime._wire import Frame, FrameDecoder, Kind, encode_io


class FakeLink:
    """What the runner's channel offers ``Home``; ``answer`` decides the home's reply to each frame sent."""

    def __init__(self, answer: Callable[[Frame], list[bytes]] = lambda frame: []) -> None:
        self.sent: list[Frame] = []
        self.pending: list[Frame] = []
        self.answer = answer

    def send_raw(self, frame: bytes) -> None:
        for decoded in FrameDecoder().feed(frame):
            self.sent.append(decoded)
            for reply in self.answer(decoded):
                self.pending.extend(FrameDecoder().feed(reply))

    def recv_reply(self, *kinds: Kind) -> Frame | None:
        for index, frame in enumerate(self.pending):
            if frame.kind in kinds:
                return self.pending.pop(index)
        return None


def ack_every(frame: Frame) -> list[bytes]:
    """A home that applies each output at once and answers each call with its arguments."""
    header, data = frame.io() if frame.kind is not Kind.ACK else (frame.json(), b"")
    if frame.kind is Kind.OUT:
        return [encode_io(Kind.OUT_ACK, {"out": header["out"]})]
    if frame.kind is Kind.IO:
        return [encode_io(Kind.OUT_ACK, {"out": 0}), encode_io(Kind.IO_REPLY, {**header, "ok": True}, data)]
    return []


def test_a_call_gets_its_answer_even_after_an_acknowledgement_of_output() -> None:
    home = _home.Home(FakeLink(ack_every), "/home/cwd", away=True)
    answer, data = home.call("os.stat", {"path": "x"}, b"payload")
    assert answer["ok"] is True and answer["path"] == "x" and data == b"payload"


def test_an_error_answer_raises_the_oserror_it_names() -> None:
    def refuse(frame: Frame) -> list[bytes]:
        header, _ = frame.io()
        return [encode_io(Kind.IO_REPLY, {"id": header["id"], "errno": errno.ENOENT, "error": "gone", "filename": "f"})]

    home = _home.Home(FakeLink(refuse), "/", away=True)
    with pytest.raises(FileNotFoundError) as caught:
        home.call("os.stat", {"path": "f"})
    assert caught.value.filename == "f" and caught.value.strerror == "gone"


def test_output_beyond_the_bound_waits_for_the_home_and_is_then_forgotten() -> None:
    held: list[bytes] = []

    def late(frame: Frame) -> list[bytes]:  # acknowledges only when the runner waits for it
        if frame.kind is Kind.OUT:
            held.append(encode_io(Kind.OUT_ACK, {"out": frame.io()[0]["out"]}))
        return []

    link = FakeLink(late)
    home = _home.Home(link, "/", away=False)
    piece = b"x" * (1 << 20)
    for _ in range(8):
        home.send_out("net.send", {"conn": "c1"}, piece)
    assert len(home.outbox) == 8, "nothing acknowledged yet, all kept"
    link.pending.extend(FrameDecoder().feed(held[3]))  # the home applied the first four
    home.send_out("net.send", {"conn": "c1"}, piece)
    home.send_out("net.send", {"conn": "c1"}, piece)  # over 8 MiB: it takes the acknowledgement first
    assert sorted(home.outbox) == [5, 6, 7, 8, 9, 10]
    assert [f.io()[0]["out"] for f in link.sent if f.kind is Kind.OUT] == list(range(1, 11))


def test_the_cursor_skips_what_was_handled_and_a_checkpoint_keeps_it_with_the_output() -> None:
    link = FakeLink()
    home = _home.Home(link, "/", away=False)
    assert home.fresh({"session": "s", "seq": 1})
    home.handled({"session": "s", "seq": 1})
    assert not home.fresh({"session": "s", "seq": 1}) and home.fresh({"session": "s", "seq": 2})
    assert home.fresh({"session": "other", "seq": 1}), "a new numbering at home is all new"
    assert link.sent[-1].json() == {"session": "s", "seq": 1}
    home.send_out("net.send", {"conn": "c"}, b"abc")
    saved: dict[str, Any] = home.state()
    copy = _home.Home(FakeLink(), "/", away=True)
    copy.restore(saved)
    assert (copy.session, copy.seq, copy.out) == ("s", 1, 1)
    assert copy.outbox == {1: ({"out": 1, "op": "net.send", "conn": "c"}, b"abc")}


def test_resume_resends_what_the_home_lacks_and_numbers_on_after_it() -> None:
    def answers(applied: int) -> Callable[[Frame], list[bytes]]:
        def answer(frame: Frame) -> list[bytes]:
            if frame.kind is Kind.IO:
                return [encode_io(Kind.IO_REPLY, {"id": frame.io()[0]["id"], "out": applied})]
            return []

        return answer

    home = _home.Home(FakeLink(), "/", away=True)
    for n in range(3):
        home.send_out("net.send", {"conn": "c"}, bytes([n]))
    link = FakeLink(answers(1))  # the home applied output 1 before the move
    home.link = link
    home.resume({"listeners": [], "conns": ["c"]})
    assert [f.io()[1] for f in link.sent if f.kind is Kind.OUT] == [b"\x01", b"\x02"]
    restored = _home.Home(FakeLink(answers(7)), "/", away=True)  # an older version than what the home applied
    restored.resume({})
    restored.send_out("net.close", {"conn": "c"})
    assert restored.out == 8


def test_home_io_outside_a_runner_is_one_clear_error() -> None:
    _home.set_current(None)
    with pytest.raises(Exception, match="only inside an app run by migrated"):
        _home.current()
