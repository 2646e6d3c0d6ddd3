"""One system from any host, in the namespace bed: three hosts paired both ways, every command that names an app
typed on a host that neither runs it nor is its home (or on the one that wants it: a pull), and a daemon that
moves its apps away when it is stopped (``--evacuate-to``). Few tests, each checking a whole story, since every
multi-host test costs seconds."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import TICKER_WITH_INPUT, Background, contiguous, numbers, one_sentence, pair, wait_until
from tests.netbed import BedDaemon, NetBed, start_bed

TICK = ("0", "0.05")  # the ticker's args: a small state, a tick every 50 ms


@pytest.fixture(scope="module")
def hosts(module_netbeds: Callable[[int], NetBed]) -> Iterator[list[BedDaemon]]:
    bed = module_netbeds(3)
    daemons = start_bed(bed, args={"h1": ("--evacuate-to", "h2", "--evacuate-timeout", "30")})
    h0, h1, h2 = daemons
    pair(h0, h1)
    pair(h0, h2)
    pair(h1, h2)
    yield daemons


def start(daemon: BedDaemon, name: str) -> None:
    path = daemon.dir.parent / f"{daemon.dir.name}-{name}.py"
    path.write_text(TICKER_WITH_INPUT)
    daemon.mig("run", str(path), "--name", name, "--", *TICK)
    daemon.wait_logs(name, "tick 3")


def ticks_past(daemon: BedDaemon, name: str, beyond: int, timeout: float = 20.0) -> list[int]:
    """Wait until ``daemon`` (the app's home) shows a tick past ``beyond``; return every tick it shows."""

    def further() -> list[int] | None:
        seen = numbers(daemon.logs(name))
        return seen if seen and seen[-1] > beyond else None

    return wait_until(further, timeout, what=f"{name}'s ticks past {beyond} on {daemon.name}")


def test_every_command_from_any_paired_host(hosts: list[BedDaemon], background: Callable[..., Background]) -> None:
    h0, h1, h2 = hosts
    start(h0, "metro")
    follower = background(h2, "logs", "-f", "metro")  # on a third host, from before the first move

    pulled = h1.mig("move", "metro", "h1", timeout=60).out  # a pull: typed on the destination
    assert "moved metro to h1" in pulled and "frozen" in pulled, pulled
    assert h0.app("metro")["host"] == "h1"

    h2.mig("send", "metro", "hello from h2")  # input from a third host reaches the app, through its home
    h0.wait_logs("metro", "got hello from h2")
    assert "got hello from h2" in h2.logs("metro")  # and its console reads the same there
    attached = h2.mig("attach", "metro", input="typed in attach\n")  # lines typed, output shown, detached at EOF
    assert "got hello from h2" in attached.out and "detached from metro" in attached.err, attached
    h0.wait_logs("metro", "got typed in attach")
    checkpointed = h2.mig("checkpoint", "metro", "-m", "from h2").out  # a checkpoint, where it runs
    assert checkpointed.startswith("metro: version"), checkpointed
    assert [v["message"] for v in json.loads(h2.mig("history", "metro", "--json").out)] == [
        v["message"] for v in h0.history("metro")
    ]

    listed = h2.mig("ps", "--all", "--json")
    assert listed.err == ""
    rows = {(row["name"], row["home"]): row for row in json.loads(listed.out)}
    assert rows[("metro", "h0")]["host"] == "h1" and rows[("metro", "h0")]["epoch"] == 1
    assert set(rows[("metro", "h0")]) == set(h0.app("metro")), "--all rows carry the fields of mig ps --json"

    assert "moved metro to h2" in h0.mig("move", "metro", "h2", timeout=60).out  # from home, between two others
    assert "moved metro to h0" in h0.mig("move", "metro", "h0", timeout=60).out  # a pull home
    assert h0.app("metro")["host"] == "h0" and h0.app("metro")["epoch"] == 3
    last = numbers(h0.logs("metro"))[-1]
    contiguous(ticks_past(h0, "metro", last + 10))

    start(h0, "twin")  # two apps called twin, at home on h0 and on h2: a bare name is ambiguous on h1
    start(h2, "twin")
    refused = h1.mig("send", "twin", "x", check=2)
    assert one_sentence(refused.err) and "twin@h0" in refused.err and "twin@h2" in refused.err, refused.err
    h1.mig("send", "twin@h2", "to the other one")
    h2.wait_logs("twin", "got to the other one")
    assert "got to the other one" not in h0.logs("twin")
    h0.mig("kill", "twin")
    h2.mig("kill", "twin")

    h2.host.cut()  # a host that does not answer is named, never silently left out
    try:
        cut = h0.mig("ps", "--all", timeout=30)
        assert "h2 did not answer" in cut.err and len(cut.err.strip().splitlines()) == 1, cut.err
        assert any(line.split()[:5] == ["metro", "running", "h0", "h0", "3"] for line in cut.out.splitlines()), cut.out
        unknown = h1.mig("send", "twin@h2", "x", check=3)
        assert one_sentence(unknown.err) and "did not answer" in unknown.err, unknown.err
    finally:
        h2.host.heal()

    followed = numbers(follower.stop())
    contiguous(followed)
    assert len(followed) > last, "mig logs -f on a third host stopped following across the moves"
    assert "closed metro" in h1.mig("close", "metro@h0").out  # from a host that neither runs it nor is its home
    assert h0.app("metro")["state"] == "closed"
    h2.mig("open", "metro@h0")
    assert h0.wait_state("metro", "running")["host"] == "h0"
    refused = h1.mig("open", "metro@h0", check=5)  # refused at home: the same sentence and exit code as there
    assert one_sentence(refused.err) == one_sentence(h0.mig("open", "metro", check=5).err)
    h1.mig("kill", "metro@h0")
    assert h0.app("metro")["state"] == "exited"


def test_a_stopped_daemon_moves_its_apps_to_its_evacuation_host_first(hosts: list[BedDaemon]) -> None:
    h0, h1, h2 = hosts
    start(h0, "visitor")  # at home on h0, running on h1
    assert "moved visitor to h1" in h0.mig("move", "visitor", "h1", timeout=60).out
    start(h1, "local")  # at home on h1
    ticks_past(h0, "visitor", numbers(h0.logs("visitor"))[-1] + 5)

    h1.kill(signal.SIGTERM)
    wait_until(lambda: not h1.alive(), 60, what="h1's daemon to evacuate and exit")
    log = h1.log_tail(20000)
    assert "evacuate visitor: moved to h2" in log and "evacuate local: moved to h2" in log, log

    assert h0.app("visitor")["host"] == "h2"
    before = numbers(h0.logs("visitor"))[-1]
    seen = ticks_past(h0, "visitor", before + 10)
    contiguous(seen)  # every console line at home, exactly once, across the evacuation
    assert len(seen) == len(set(seen))
    local = h2.app("local")
    assert (local["state"], local["home"]) == ("running", "h1")
    h2.mig("kill", "local")
    h0.mig("kill", "visitor")
