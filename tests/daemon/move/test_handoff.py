"""The hand-off state machines, and a simulation of both sides with lost messages and crashes."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from migrated.daemon._handoff import (
    Abort,
    Action,
    AskDecision,
    Commit,
    Destination,
    DestState,
    Drop,
    Prepare,
    Record,
    Refuse,
    Reply,
    Resume,
    Retire,
    Source,
    SourceState,
    Thaw,
)


def source() -> Source:
    return Source("m1", "sim", epoch=4)


def test_the_happy_path() -> None:
    s, actions = source().frozen(12)
    assert actions == [Record(SourceState.FROZEN), Prepare()] and s.version == 12
    d, actions = Destination("m1", "sim", 4).prepare(known_epoch=3)
    assert actions == [Record(DestState.PREPARED), Reply()]
    s, actions = s.prepared()
    assert actions == [Record(SourceState.HANDED_OFF), Commit()]
    d, actions = d.commit()
    assert actions == [Record(DestState.COMMITTED), Thaw(), Reply()]
    s, actions = s.committed()
    assert actions == [Record(SourceState.DONE), Retire()] and s.state is SourceState.DONE


def test_a_failure_before_the_decision_aborts_and_resumes_from_the_frozen_version() -> None:
    s, _ = source().frozen(12)
    s, actions = s.failed()
    assert actions == [Record(SourceState.ABORTED), Abort(), Resume(12)]
    s, actions = s.prepared()  # a late acknowledgement
    assert actions == [Abort()] and s.state is SourceState.ABORTED


def test_after_the_decision_the_source_only_ever_commits() -> None:
    s, _ = source().frozen(12)
    s, _ = s.prepared()
    for event in (s.failed, s.commit_failed, s.restarted):
        _, actions = event()
        assert actions == [Commit()]


def test_the_destination_is_idempotent_and_refuses_what_it_must() -> None:
    d = Destination("m1", "sim", 4)
    assert d.prepare(known_epoch=4)[1] == [Refuse("epoch 4 of sim is stale; this host has seen 4")]
    assert d.commit()[1] == [Refuse("migration m1 is not prepared here")]
    d, _ = d.prepare(known_epoch=3)
    assert d.prepare(known_epoch=3)[1] == [Reply()]
    assert d.restarted()[1] == [AskDecision()]
    committed, _ = d.commit()
    assert committed.commit()[1] == [Reply()]
    assert committed.abort()[1] == [Refuse("migration m1 committed; it cannot be aborted")]
    assert committed.restarted()[1] == [Thaw()]
    aborted, actions = d.abort()
    assert actions == [Record(DestState.ABORTED), Drop(), Reply()]
    assert aborted.prepare(known_epoch=0)[1] == [Refuse("migration m1 was aborted")]
    overtaken, actions = Destination("m1", "sim", 4).abort()
    assert actions == [Record(DestState.ABORTED), Reply()]
    assert isinstance(overtaken.prepare(known_epoch=0)[1][0], Refuse)


# -- the simulation: two daemons, a network that loses and delays messages, crashes and restarts


@dataclass
class World:
    src: Source = field(default_factory=source)
    dst: Destination = field(default_factory=lambda: Destination("m1", "sim", 4))
    src_alive: bool = True
    dst_alive: bool = True
    src_running: bool = True  # the app runs at the source (pre-copy runs it live)
    dst_running: bool = False
    to_dst: list[str] = field(default_factory=list)
    to_src: list[str] = field(default_factory=list)

    def apply_src(self, result: tuple[Source, list[Action]]) -> None:
        self.src, actions = result
        for action in actions:
            if isinstance(action, Prepare):
                self.to_dst.append("prepare")
            elif isinstance(action, Commit):
                self.to_dst.append("commit")
            elif isinstance(action, Abort):
                self.to_dst.append("abort")
            elif isinstance(action, Resume):
                self.src_running = True
            elif isinstance(action, Retire):
                assert not self.src_running

    def apply_dst(self, result: tuple[Destination, list[Action]], message: str) -> None:
        self.dst, actions = result
        for action in actions:
            if isinstance(action, Thaw):
                self.dst_running = True
            elif isinstance(action, Reply):
                self.to_src.append(f"{message}-ok")
            elif isinstance(action, Refuse):
                self.to_src.append(f"{message}-refused")
            elif isinstance(action, AskDecision):
                self.to_src.append("ask")

    def step(self, kind: int, pick: int) -> None:
        if kind == 0 and self.src_alive and self.src.state is SourceState.STARTED:
            self.src_running = False  # frozen at version 7
            self.apply_src(self.src.frozen(7))
        elif kind == 1 and self.src_alive:
            self.apply_src(self.src.failed())
        elif kind == 2 and self.dst_alive and self.to_dst:
            self.deliver_to_dst(self.to_dst.pop(pick % len(self.to_dst)))
        elif kind == 3 and self.src_alive and self.to_src:
            self.deliver_to_src(self.to_src.pop(pick % len(self.to_src)))
        elif kind == 4 and (self.to_dst or self.to_src):
            queue = self.to_dst if (pick % 2 and self.to_dst) or not self.to_src else self.to_src
            queue.pop(pick % len(queue))  # lost
        elif kind == 5 and self.src_alive:
            self.timeout_src()
        elif kind == 6 and self.dst_alive and self.dst.state is DestState.PREPARED:
            self.to_src.append("ask")
        elif kind == 7:
            self.crash_src() if self.src_alive else self.restart_src()
        elif kind == 8:
            self.crash_dst() if self.dst_alive else self.restart_dst()
        assert not (self.src_running and self.dst_running), f"two copies run: {self}"

    def deliver_to_dst(self, message: str) -> None:
        if message == "prepare":
            self.apply_dst(self.dst.prepare(known_epoch=3), message)
        elif message == "commit":
            self.apply_dst(self.dst.commit(), message)
        else:
            self.apply_dst(self.dst.abort(), message)

    def deliver_to_src(self, message: str) -> None:
        if message == "prepare-ok":
            self.apply_src(self.src.prepared())
        elif message == "prepare-refused":
            self.apply_src(self.src.failed())
        elif message == "commit-ok":
            self.apply_src(self.src.committed())
        elif message == "ask":
            decision = self.src.decision()
            if decision in (SourceState.HANDED_OFF, SourceState.DONE):
                self.to_dst.append("commit")
            elif decision is SourceState.ABORTED:
                self.to_dst.append("abort")

    def timeout_src(self) -> None:
        if self.src.state is SourceState.FROZEN:
            self.apply_src(self.src.failed())
        elif self.src.state is SourceState.HANDED_OFF:
            self.apply_src(self.src.commit_failed())

    def crash_src(self) -> None:
        self.src_alive, self.src_running = False, False  # its runner dies with it

    def restart_src(self) -> None:
        self.src_alive = True
        if self.src.state is SourceState.ABORTED:
            self.src_running = True  # crash recovery brings the app back from its last version
        self.apply_src(self.src.restarted())

    def crash_dst(self) -> None:
        self.dst_alive, self.dst_running = False, False

    def restart_dst(self) -> None:
        self.dst_alive = True
        self.apply_dst(self.dst.restarted(), "restart")

    def heal(self) -> None:
        """Everything comes back and no message is lost any more: run until nothing moves."""
        if not self.src_alive:
            self.restart_src()
        if not self.dst_alive:
            self.restart_dst()
        for _ in range(100):
            if self.to_dst:
                self.deliver_to_dst(self.to_dst.pop(0))
            elif self.to_src:
                self.deliver_to_src(self.to_src.pop(0))
            elif self.src.state in (SourceState.FROZEN, SourceState.HANDED_OFF):
                self.timeout_src()
            elif self.dst.state is DestState.PREPARED:
                self.to_src.append("ask")
            elif self.src.state is SourceState.STARTED:
                self.src_running = False
                self.apply_src(self.src.frozen(7))
            else:
                return
            assert not (self.src_running and self.dst_running), f"two copies run: {self}"
        raise AssertionError(f"the hand-off did not settle: {self}")


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 1000)), max_size=60))
def test_never_two_copies_and_exactly_one_once_healed(events: list[tuple[int, int]]) -> None:
    world = World()
    for kind, pick in events:
        world.step(kind, pick)
    world.heal()
    assert world.src_running != world.dst_running, f"not exactly one copy: {world}"
    if world.dst_running:
        assert world.src.state is SourceState.DONE and world.dst.state is DestState.COMMITTED
    else:
        assert world.src.state is SourceState.ABORTED and world.dst.state in (DestState.ABORTED, None)


HAPPY_PATH = [(0, 0), (2, 0), (3, 0), (2, 0), (3, 0)]  # freeze, PREPARE, its ack, COMMIT, its ack


def test_a_crash_of_either_side_at_every_step_of_the_happy_path() -> None:
    for crash_at in range(len(HAPPY_PATH) + 1):
        for side in (7, 8):
            for lose_messages in (False, True):
                world = World()
                for kind, pick in HAPPY_PATH[:crash_at]:
                    world.step(kind, pick)
                if lose_messages:
                    world.to_dst.clear()
                    world.to_src.clear()
                world.step(side, 0)
                world.heal()
                assert world.src_running != world.dst_running, (crash_at, side, lose_messages, world)
