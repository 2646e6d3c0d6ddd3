"""Peers across network namespaces: real mDNS on a bridge, pairing by name, mutual TLS, a spoofed record."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from tests.helpers import pair, wait_until
from tests.netbed import BedDaemon, NetBed

DISCOVERY_TIMEOUT = 15.0


def sees(daemon: BedDaemon, *names: str) -> Callable[[], dict[str, dict[str, Any]] | None]:
    """A predicate: the daemon lists every one of ``names`` as reachable."""

    def check() -> dict[str, dict[str, Any]] | None:
        rows = daemon.peers()
        return rows if all(rows.get(name, {}).get("reachable") for name in names) else None

    return check


def gone(daemon: BedDaemon, name: str) -> bool:
    return name not in daemon.peers()


def probed(daemon: BedDaemon, name: str) -> dict[str, Any] | None:
    """The peer's row once a ping told its running apps."""
    row = daemon.peers()[name]
    return row if row["apps_running"] is not None else None


def test_daemons_in_three_hosts_find_each_other_over_mdns(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(3)
    daemons = bed.start_daemons()
    for daemon in daemons:
        others = [d.host.name for d in daemons if d is not daemon]
        rows = wait_until(sees(daemon, *others), DISCOVERY_TIMEOUT, what=f"{daemon.host.name} to see {others}")
        assert sorted(rows) == sorted(others)  # never itself
        for other in daemons:
            if other is daemon:
                continue
            row = rows[other.host.name]
            assert row["address"] == f"{other.host.addr}:7464"
            assert row["device_id"] == other.status()["device_id"]
            assert row["version"] == "0.1.0" and row["sources"] == ["mdns"] and row["paired"] is False
    # A daemon that shuts down says goodbye and drops out of the others' lists.
    daemons[2].mig("shutdown")
    for daemon in daemons[:2]:
        wait_until(functools.partial(gone, daemon, "h2"), DISCOVERY_TIMEOUT, what="h2 to drop out")


def test_hosts_pair_by_name_and_ping_over_mutual_tls(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(3)
    h0, h1, h2 = bed.start_daemons()
    wait_until(sees(h1, "h0"), DISCOVERY_TIMEOUT, what="h1 to see h0")
    pair(h0, h1, by=h0.name)
    for daemon, other in ((h1, "h0"), (h0, "h1")):
        out = daemon.mig("ping", other, "-c", "3").out
        assert "TLS ok" in out and "paired both ways" in out
        row = wait_until(functools.partial(probed, daemon, other), 15, what=f"{other} probed")
        assert row["paired"] and row["reachable"] and row["load"] is not None
        assert sorted(row["sources"]) == ["mdns", "paired"]
    # h2 sees both, paired with neither: it is refused, and says how to pair.
    wait_until(sees(h2, "h0", "h1"), DISCOVERY_TIMEOUT, what="h2 to see h0 and h1")
    err = h2.mig("ping", "h0", check=11).err
    assert "not paired" in err and "mig pair" in err


def test_a_killed_daemon_drops_out_of_the_list(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(2)
    h0, h1 = bed.start_daemons()
    wait_until(sees(h0, "h1"), DISCOVERY_TIMEOUT, what="h0 to see h1")
    h1.kill()  # no goodbye: h0's probes stop getting answers
    wait_until(lambda: gone(h0, "h1"), 30, what="h1 to drop out after it stops answering")


SPOOF = """
import asyncio, socket, sys
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf
name, device_id, address, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    zc = AsyncZeroconf(interfaces=[address])
    info = ServiceInfo(
        "_migrated._tcp.local.", f"{name}-{device_id[:8]}._migrated._tcp.local.",
        addresses=[socket.inet_aton(address)], port=port, server=f"spoof-{name}.local.",
        properties={"n": name, "id": device_id, "v": "0.1.0", "p": "1"},
    )
    await zc.async_register_service(info, cooperating_responders=True, allow_name_change=True)
    print("registered", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_spoofed_record_for_a_paired_host_is_refused_by_the_tls_pin(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(3)
    h0, h1, h2 = bed.start_daemons()
    wait_until(sees(h1, "h0"), DISCOVERY_TIMEOUT, what="h1 to see h0")
    pair(h0, h1, by=h0.name)
    h0_id = h0.status()["device_id"]
    # h2 announces "h0" with h0's device id at its own address, where its own daemon answers.
    h0.stop()
    spoof = bed[2].popen(
        [sys.executable, "-c", textwrap.dedent(SPOOF), "h0", h0_id, bed[2].addr, "7464"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert spoof.stdout is not None and spoof.stdout.readline().strip() == "registered"
        wait_until(
            lambda: h1.peers().get("h0", {}).get("address") == f"{bed[2].addr}:7464",
            DISCOVERY_TIMEOUT,
            what="h1 to take in the spoofed record",
        )
        err = h1.mig("ping", "h0", check=11).err
        assert f"the machine at {bed[2].addr}:7464 does not hold h0's paired certificate" in err
        assert not h1.peers()["h0"]["reachable"]
        # Pairing with the spoofed "h0" by name is refused too: its certificate is not the advertised one.
        code = json.loads(h2.mig("pair", "--json").out)["code"]
        err = h1.mig("pair", "h0", code, check=11).err
        assert "is not the h0 that mDNS announced" in err
    finally:
        spoof.kill()
        spoof.wait()
    assert [p["name"] for p in json.loads(h1.mig("pair", "--list", "--json").out)] == ["h0"]


def test_static_peers_work_without_mdns(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(2)
    h0 = bed.start_daemon(bed[0], "--no-mdns")
    h1 = bed.start_daemon(bed[1], "--no-mdns", "--peer", f"{bed[0].addr}:7464")
    rows = wait_until(sees(h1, "h0"), DISCOVERY_TIMEOUT, what="h1 to probe its configured peer")
    assert rows["h0"]["sources"] == ["config"] and rows["h0"]["device_id"] == h0.status()["device_id"]
    time.sleep(0.5)
    assert h0.peers() == {}  # h0 has mDNS off and no peers configured
    code = json.loads(h0.mig("pair", "--json").out)["code"]
    h1.mig("pair", "h0", code)
    assert "paired both ways" in h1.mig("ping", "h0").out
    assert h0.peers()["h1"]["paired"]
