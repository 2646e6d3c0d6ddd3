"""The network-namespace test bed itself: its layout, multicast and unicast between hosts, isolation from the
root namespace, cable cuts, teardown (also of beds whose creator died), and daemons inside it.

No test sends a packet from the root namespace: a packet to a bed address would follow the root's default
route out of the machine. Isolation is shown from the links and routes instead.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, mig, pid_alive, wait_until
from tests.netbed import (
    PREFIX,
    RECORD_DIR,
    BedDaemon,
    Host,
    NetBed,
    NetBedError,
    list_netns,
    netbed_available,
    require_netbed,
)

pytestmark = pytest.mark.integration  # every test builds beds of network namespaces

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
ECHO_PORT = 7000

# Joins the group on ADDR's interface, says so, prints the first datagram and its source.
RECEIVER = """
import socket, sys
group, port, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(addr))
s.settimeout(10)
print("joined", flush=True)
data, source = s.recvfrom(2048)
print(data.decode(), source[0], flush=True)
"""

# Sends TEXT to the group every 50 ms (no IP_MULTICAST_IF: the route picks eth0) until killed.
SENDER = """
import socket, sys, time
group, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(400):
    s.sendto(text.encode(), (group, port))
    time.sleep(0.05)
"""

# Answers each TCP connection with what it sent, upper-cased, then the caller's address.
ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    conn, source = server.accept()
    with conn:
        conn.sendall(conn.recv(100).upper() + b" " + source[0].encode())
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as conn:
    conn.sendall(b"hello")
    print(conn.recv(100).decode())
"""


@pytest.fixture(scope="module", autouse=True)
def _no_beds_left() -> Iterator[None]:
    """After the module, nothing of this process's beds is left: no namespace, no record."""
    yield
    if not netbed_available()[0]:
        return
    mine = f"{PREFIX}{os.getpid()}-"
    left = [ns for ns in list_netns() if ns.startswith(mine)]
    records = [path.name for path in RECORD_DIR.glob(f"{mine}*")]
    if left or records:
        pytest.fail(f"beds left behind: namespaces {left}, records {records}", pytrace=False)


def ip_json(*args: str) -> Any:
    """``ip -j ARGS``, parsed."""
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout)


def python(host: Host, code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Run a snippet of Python in ``host``'s namespace, its stdout a pipe."""
    return host.popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, **kwargs)


def connect(client: Host, server: Host, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    """One TCP exchange from ``client`` to the echo server on ``server``."""
    return client.run(
        [sys.executable, "-c", CLIENT, server.addr, str(ECHO_PORT), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )


def echo_server(host: Host) -> subprocess.Popen[str]:
    """Start the echo server on ``host`` and wait until it listens (the bed kills it at close)."""
    proc = python(host, ECHO_SERVER, host.addr, str(ECHO_PORT))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "listening\n"
    return proc


def multicast(sender: Host, receivers: list[Host], text: str) -> dict[str, str]:
    """Send ``text`` to the mDNS group from ``sender``; return what each receiver got, by host name."""
    listening = [python(host, RECEIVER, MDNS_GROUP, str(MDNS_PORT), host.addr) for host in receivers]
    for proc in listening:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "joined\n"
    sending = sender.popen([sys.executable, "-c", SENDER, MDNS_GROUP, str(MDNS_PORT), text])
    try:
        return {
            host.name: proc.communicate(timeout=15)[0].strip() for host, proc in zip(receivers, listening, strict=True)
        }
    finally:
        sending.kill()
        sending.wait()


def test_unavailable_without_root_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    netbed_available.cache_clear()
    try:
        assert netbed_available() == (False, "the network-namespace test bed needs root (ip netns add)")
    finally:
        netbed_available.cache_clear()


def test_layout(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(3)
    assert bed.prefix.startswith(f"{PREFIX}{os.getpid()}-")
    assert set(bed.namespaces) <= set(list_netns())
    assert bed.subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
    assert [host.name for host in bed] == ["h0", "h1", "h2"]
    assert len({host.addr for host in bed}) == 3

    hub = {link["ifname"]: link for link in ip_json("-n", bed.hub, "link")}
    assert set(hub) == {"lo", "br0", "h0", "h1", "h2"}
    assert "UP" in hub["lo"]["flags"]
    bridge = ip_json("-n", bed.hub, "-d", "link", "show", "br0")[0]["linkinfo"]["info_data"]
    assert bridge["mcast_snooping"] == 0
    hub_peers = {entry["nsid"]: entry["name"] for entry in ip_json("-n", bed.hub, "netns", "list-id")}
    for host in bed:
        links = {link["ifname"]: link for link in ip_json("-n", host.ns, "link")}
        assert set(links) == {"lo", "eth0"}
        eth0, port = links["eth0"], hub[host.bridge_port]
        assert {"UP", "LOWER_UP", "MULTICAST"} <= set(eth0["flags"])
        assert "UP" in links["lo"]["flags"]
        # eth0 and its bridge port are the two ends of one veth, and the port is on the bridge.
        assert (eth0["link_index"], port["link_index"]) == (port["ifindex"], eth0["ifindex"])
        assert hub_peers[port["link_netnsid"]] == host.ns
        assert port["master"] == "br0"
        assert {"MULTICAST", "UP"} <= set(port["flags"])
        addrs = [a for link in ip_json("-n", host.ns, "-4", "addr", "show", "eth0") for a in link["addr_info"]]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [(host.addr, 24)]
        routes = {route["dst"] for route in ip_json("-n", host.ns, "-4", "route")}
        assert routes == {str(bed.subnet), "224.0.0.0/4"}


def test_multicast_reaches_every_other_host(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(3)
    got = multicast(bed[1], [bed[0], bed[2]], "hello from h1")
    assert got == {"h0": f"hello from h1 {bed[1].addr}", "h2": f"hello from h1 {bed[1].addr}"}


def test_tcp_between_hosts(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(2)
    echo_server(bed[1])
    result = connect(bed[0], bed[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"HELLO {bed[0].addr}"


def test_root_namespace_has_no_way_in(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(2)
    for link in ip_json("-4", "addr"):
        for addr in link.get("addr_info", []):
            assert ipaddress.ip_address(addr["local"]) not in bed.subnet, link["ifname"]
    for route in ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "default")
        assert dst == "default" or not ipaddress.ip_network(dst, strict=False).overlaps(bed.subnet)
    for host in bed:
        # Only the default route (off the machine, where nothing leads back here) would take a packet.
        lookup = subprocess.run(["ip", "-j", "-4", "route", "get", host.addr], capture_output=True, text=True)
        if lookup.returncode == 0:
            assert "gateway" in json.loads(lookup.stdout)[0], lookup.stdout
    # Every end of every bed link is inside the bed (test_layout): nothing of it is in the root namespace.
    hub_peers = {entry["name"] for entry in ip_json("-n", bed.hub, "netns", "list-id")}
    assert hub_peers == {host.ns for host in bed}
    for host in bed:
        assert {entry["name"] for entry in ip_json("-n", host.ns, "netns", "list-id")} == {bed.hub}


def test_hosts_have_no_way_out(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(1)
    # A route lookup only: TEST-NET-2 is unreachable from the host, so no packet could leave for it.
    lookup = bed[0].run(["ip", "route", "get", "198.51.100.1"], capture_output=True, text=True)
    assert lookup.returncode != 0
    assert "unreachable" in lookup.stderr


@pytest.mark.parametrize("carrier_only", [False, True], ids=["link-down", "carrier-only"])
def test_cut_and_heal(netbeds: Callable[[int], NetBed], carrier_only: bool) -> None:
    bed = netbeds(3)
    echo_server(bed[0])
    echo_server(bed[1])
    bed[0].cut(carrier_only=carrier_only)
    assert connect(bed[1], bed[0], timeout=0.5).returncode != 0
    assert connect(bed[0], bed[1], timeout=0.5).returncode != 0
    assert connect(bed[2], bed[1]).returncode == 0, "the other hosts still reach each other"

    bed[0].heal()
    wait_until(lambda: connect(bed[1], bed[0], timeout=1).returncode == 0, 10, what="h1 to reach h0 again")
    assert connect(bed[0], bed[1]).returncode == 0
    # Multicast from the healed host still finds its way out (its multicast route is back).
    assert multicast(bed[0], [bed[2]], "back") == {"h2": f"back {bed[0].addr}"}


def test_close_removes_everything_and_is_idempotent(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(2)
    sleeper = bed[1].popen(["sleep", "60"])
    record = RECORD_DIR / f"{bed.prefix}.json"
    assert record.exists()
    assert bed.close() == []
    assert bed.close() == []
    assert sleeper.poll() == -signal.SIGKILL
    assert not set(bed.namespaces) & set(list_netns())
    assert not record.exists()


def test_context_manager_closes() -> None:
    require_netbed()
    with NetBed(1) as bed:
        assert bed.hub in list_netns()
    assert not set(bed.namespaces) & set(list_netns())


def test_stale_beds_of_dead_processes_are_removed(netbeds: Callable[[int], NetBed]) -> None:
    # A process builds a bed, starts a daemon and another process in it, and dies without closing it.
    child = """
import os, subprocess, sys
from tests.netbed import NetBed
bed = NetBed(1)
daemon = bed.start_daemon(bed[0], "--no-mdns")
sleeper = bed[0].popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print(bed.prefix, bed[0].ns, daemon.dir, daemon.pid, sleeper.pid, flush=True)
sys.stdin.read()
os._exit(0)
"""
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    prefix, ns, state_dir, *pids = proc.stdout.readline().decode().split()
    assert ns in list_netns()
    assert Path(state_dir).is_dir()
    assert all(pid_alive(int(pid)) for pid in pids)
    assert (RECORD_DIR / f"{prefix}.json").exists()
    proc.stdin.close()
    assert proc.wait(10) == 0

    netbeds(1)  # building a bed removes stale ones
    assert ns not in list_netns()
    assert not Path(state_dir).exists()
    assert not (RECORD_DIR / f"{prefix}.json").exists()
    wait_until(lambda: not any(pid_alive(int(pid)) for pid in pids), 5, what="the processes in the stale bed to die")


def test_a_bed_is_fast() -> None:
    require_netbed()
    start = time.monotonic()
    with NetBed(3):
        built = time.monotonic()
    done = time.monotonic()
    assert built - start < 2.0
    assert done - built < 2.0


# Daemons in the bed.


def test_daemon_runs_in_its_namespace(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(1)
    daemon = bed.start_daemon(bed[0])
    assert bed[0].daemon is daemon
    # ip netns exec execs: the pid we hold is the daemon's own, inside the host's namespace.
    assert "migrated" in Path(f"/proc/{daemon.pid}/cmdline").read_text()
    identify = subprocess.run(["ip", "netns", "identify", str(daemon.pid)], capture_output=True, text=True)
    assert identify.stdout.strip() == bed[0].ns
    status = json.loads(daemon.mig("status", "--json").out)
    assert (status["host"], status["pid"], status["listen"]) == ("h0", daemon.pid, f"{bed[0].addr}:7464")
    assert len(str(daemon.dir / "control.sock")) < 107
    assert "serving h0" in daemon.stderr_log()


def test_daemon_stop_kill_restart(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(1)
    daemon = bed.start_daemon(bed[0])
    first = daemon.pid
    assert daemon.stop() == []
    assert not daemon.alive()
    daemon.restart()
    assert daemon.alive() and daemon.pid != first
    assert daemon.mig("status").code == 0
    daemon.kill()
    assert not daemon.alive()
    assert daemon.mig("status", check=None).code != 0
    daemon.restart()
    assert json.loads(daemon.mig("status", "--json").out)["pid"] == daemon.pid


def test_daemon_that_will_not_start_raises_with_its_stderr(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(1)
    with pytest.raises(NetBedError, match="no-such-flag"):
        bed.start_daemon(bed[0], "--no-such-flag")


def test_close_kills_daemons_and_their_state(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(2)
    daemons = bed.start_daemons("--no-mdns")
    bed.close()
    for daemon in daemons:
        assert not daemon.alive()
        assert not daemon.dir.exists()


def test_daemons_find_each_other_over_mdns(netbeds: Callable[[int], NetBed]) -> None:
    bed = netbeds(3)
    daemons = bed.start_daemons()

    def seen(daemon: BedDaemon) -> set[tuple[str, str]]:
        peers = json.loads(daemon.mig("peers", "--json").out)
        return {(peer["name"], peer["address"]) for peer in peers if "mdns" in peer["sources"]}

    def everyone_seen() -> bool:
        return all(seen(d) == {(h.name, f"{h.addr}:7464") for h in bed if h is not d.host} for d in daemons)

    wait_until(everyone_seen, 15, what="every daemon to see the other two")


def test_script_up_list_down() -> None:
    require_netbed()
    script = str(REPO / "scripts" / "netbed")
    up = subprocess.run([script, "up", "2"], capture_output=True, text=True, timeout=60, check=False)
    assert up.returncode == 0, up.stderr
    prefix = up.stdout.split()[0]
    dirs: list[str] = []
    try:
        assert prefix.startswith(PREFIX)
        dirs += re.findall(r"MIG_DIR=(\S+) ", up.stdout)
        assert len(dirs) == 2
        for state_dir in dirs:
            listen = json.loads(mig("status", "--json", dir=state_dir).out)["listen"].rpartition(":")[0]
            assert ipaddress.ip_address(listen) in ipaddress.ip_network(up.stdout.split()[1])
        listed = subprocess.run([script, "list"], capture_output=True, text=True, check=True).stdout
        assert prefix in listed
    finally:
        down = subprocess.run([script, "down", prefix], capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 0, down.stderr
    assert f"removed {prefix}" in down.stdout
    assert not [ns for ns in list_netns() if ns.startswith(prefix)]
    assert not any(Path(state_dir).exists() for state_dir in dirs)
