"""Real zeroconf, real sockets: daemons' ``Mdns`` find each other on loopback inside a throwaway network namespace.

Test traffic stays off the machine's real interfaces: each test runs its scenario in a child process started with
``unshare --net`` (a namespace of its own, only ``lo``, which this file brings up); the scenario may start more
processes, all inside it. Such a namespace lives exactly as long as its processes, so the fixture that starts the
child kills its whole process group at teardown, also on failure, and checks that nothing is left.

Run as ``python tests/discovery/test_mdns.py SCENARIO ARGS...`` (inside a namespace) to play one scenario; it prints
its observations as one JSON line, and the test asserts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

SCENARIO_TIMEOUT = 60.0
LOOPBACK = ["127.0.0.1"]
SERVICE_TYPE = "_migrated._tcp.local."


# -- the test side


def _unshare_problem() -> str | None:
    """Why this machine cannot run the tests, or None."""
    if os.geteuid() != 0:
        return "needs root, to create a network namespace (unshare --net)"
    try:
        subprocess.run(["unshare", "--net", "true"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace with unshare --net: {exc}"
    return None


_PROBLEM = _unshare_problem() if __name__ != "__main__" else None
pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    if _PROBLEM is not None:
        pytest.fail(_PROBLEM)


class Namespaces:
    """Runs scenarios of this file in fresh network namespaces; kills every process of them at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, scenario: str, *args: str, timeout: float = SCENARIO_TIMEOUT) -> dict[str, Any]:
        """Play ``scenario`` in a new namespace; return what it observed."""
        proc = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, __file__, scenario, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: teardown kills everything it started
        )
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, err = proc.communicate()
            raise AssertionError(f"scenario {scenario} ran over {timeout:.0f} s: {err[-3000:]}") from None
        if proc.returncode != 0 or not out.strip():
            raise AssertionError(f"scenario {scenario} failed ({proc.returncode}):\n{err[-5000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["stderr"] = err
        return result

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> list[str]:
        """Kill what is left of every scenario; return the process groups that would not go."""
        left = []
        for proc in self.procs:
            self.kill(proc)
            proc.wait(timeout=10)
            deadline = time.monotonic() + 5
            while True:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                if time.monotonic() > deadline:
                    left.append(str(proc.pid))
                    break
                time.sleep(0.02)
        return left


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    """Scenario runner; fails the test if a process of a scenario outlives it."""
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        left = spaces.close()
    assert not left, f"process groups {left} of the scenarios outlived them"


def device_id(seed: str) -> str:
    """A device id as the daemon makes them: 64 hex."""
    return hashlib.sha256(seed.encode()).hexdigest()


def _txt(*items: bytes) -> bytes:
    return b"".join(bytes((len(item),)) + item for item in items)


_ID = b"id=" + hashlib.sha256(b"hostile").hexdigest().encode()
_HOSTILE: dict[str, tuple[bytes, int, list[str], str]] = {  # label: TXT, port, addresses, why it is ignored
    "bad-id": (_txt(b"n=evil", b"id=nothex", b"v=1", b"p=1"), 1, LOOPBACK, "device id"),
    "no-id": (_txt(b"n=evil", b"v=1", b"p=1"), 1, LOOPBACK, "no value for 'id'"),
    "garbage": (b"\xff\x00\x13garbage", 1, LOOPBACK, "past the end"),
    "latin1": (_txt(b"n=\xe9vil", _ID, b"v=1", b"p=1"), 1, LOOPBACK, "not utf-8"),
    "huge": (_txt(b"n=evil", _ID, b"v=1", b"p=1", *[b"x" * 250] * 8), 1, LOOPBACK, "over 512"),
    "future": (_txt(b"n=evil", _ID, b"v=1", b"p=7"), 1, LOOPBACK, "peer protocol 7"),
    "port-zero": (_txt(b"n=evil", _ID, b"v=1", b"p=1"), 0, LOOPBACK, "port 0"),
    "v6-only": (_txt(b"n=evil", _ID, b"v=1", b"p=1"), 1, ["::1"], "no usable IPv4 address"),
    "me": (_txt(b"n=me", b"id=" + hashlib.sha256(b"observer").hexdigest().encode(), b"v=1", b"p=1"), 1, LOOPBACK, ""),
}


def test_three_daemons_see_each_other_but_never_themselves(netns: Namespaces) -> None:
    result = netns.run("three")
    ids = {name: device_id(name) for name in ("alpha", "twin-1", "twin-2")}
    names = {ids["alpha"]: "alpha", ids["twin-1"]: "twin", ids["twin-2"]: "twin"}
    ports = {ids["alpha"]: 1001, ids["twin-1"]: 1002, ids["twin-2"]: 1003}
    for own, seen in result["seen"].items():
        assert set(seen) == set(ids.values()) - {own}
        for other, advert in seen.items():
            assert advert == {
                "name": names[other],
                "device_id": other,
                "port": ports[other],
                "addresses": ["127.0.0.1"],
                "version": "0.1.0",
                "proto": 1,
            }
    assert result["self_seen"] == 0, "an Mdns reported its own advert"
    assert result["converged"] < 3.0


def test_a_closed_daemon_says_goodbye(netns: Namespaces) -> None:
    result = netns.run("goodbye")
    gone = device_id("leaver")
    assert gone not in result["seen_after"]["stayer-1"] and gone not in result["seen_after"]["stayer-2"]
    assert device_id("stayer-2") in result["seen_after"]["stayer-1"]
    assert result["gone_after"] < 3.0  # goodbye packets, not expiry


def test_an_update_is_seen(netns: Namespaces) -> None:
    result = netns.run("update")
    mover = device_id("mover")
    assert result["after_port"][mover]["port"] == 2002
    assert result["port_seen_after"] < 3.0
    # A new name is a new instance name: the old one says goodbye, the peer stays one peer with the new name.
    assert result["after_rename"][mover]["name"] == "renamed"
    assert result["after_rename"][mover]["port"] == 2002
    assert result["names_seen"] == ["mover", "renamed"]
    assert not result["vanished"], "the peer dropped out of seen() while it changed its name"


def test_hostile_records_are_ignored_and_browsing_goes_on(netns: Namespaces) -> None:
    result = netns.run("hostile")
    assert set(result["seen"]) == {device_id("good"), device_id("late")}  # not "me", which claims the observer's id
    assert result["seen"][device_id("good")]["port"] == 1002
    for label, (_, _, _, why) in _HOSTILE.items():
        if why:
            assert why in result["ignored"].get(f"{label}.{SERVICE_TYPE}", ""), (label, result["ignored"])
    assert result["problems"] == [], "migrated logged warnings or errors"


def test_same_name_two_device_ids_are_two_peers(netns: Namespaces) -> None:
    result = netns.run("three")
    seen = result["seen"][device_id("alpha")]
    twins = [advert for advert in seen.values() if advert["name"] == "twin"]
    assert sorted(advert["port"] for advert in twins) == [1002, 1003]


def test_a_peer_in_another_process_stays_while_it_answers_and_expires_after_kill_9(netns: Namespaces) -> None:
    result = netns.run("expiry")
    # Multicast answers (QM): with zeroconf's default unicast-response first question the answer goes to
    # whichever process's socket on port 5353 the kernel picks, and the peer waits for the next question (1.1 s).
    assert result["peer_found_watcher"] < 0.9
    assert result["found_after"] < 3.0
    assert result["stayed_for"] >= 3 * result["ttl"], "a live peer dropped out when its records reached their TTL"
    assert result["gone_after_kill"] <= result["ttl"] + 1.5


def test_without_cooperating_responders_it_probes_before_it_announces(netns: Namespaces) -> None:
    result = netns.run("probing")
    assert result["start_returned_after"] > 1.0  # three probes 500 ms apart after a random 150-250 ms
    assert 1.0 < result["found_after"] < 5.0


def test_all_interfaces_announce_this_hosts_addresses_but_loopback(netns: Namespaces) -> None:
    result = netns.run("all_interfaces")
    assert result["addresses"] == ["10.77.0.1"]


def test_a_bad_interface_or_name_is_a_config_error(netns: Namespaces) -> None:
    result = netns.run("config_errors")
    assert "is not an IPv4 address" in result["interface"]
    assert "cannot start mDNS on 10.1.2.3" in result["absent_interface"]
    assert "choose another --name" in result["name"]
    assert result["left_open"] == 0


# -- the scenario side: runs inside the namespace


Scenario = Callable[..., Coroutine[Any, Any, dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(func: Scenario) -> Scenario:
    SCENARIOS[func.__name__.removeprefix("play_")] = func
    return func


class Watcher:
    """What one Mdns reported through ``on_change``, with a way to wait for a condition on it."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.seen: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.calls = 0
        self.self_seen = 0
        self._changed = asyncio.Event()

    def __call__(self, seen: dict[str, Any]) -> None:
        self.seen = seen
        self.history.append(seen)
        self.calls += 1
        self.self_seen += self.own in seen
        self._changed.set()

    async def until(self, predicate: Callable[[dict[str, Any]], bool], within: float = 5.0) -> float:
        """Seconds until ``predicate(seen)`` held; fail after ``within`` seconds."""
        start = time.monotonic()
        async with asyncio.timeout(within):
            while not predicate(self.seen):
                self._changed.clear()
                await self._changed.wait()
        return time.monotonic() - start


def advert(name: str, seed: str, port: int, addresses: tuple[str, ...] = ("127.0.0.1",)) -> Any:
    from migrated.discovery import Advert

    return Advert(name, device_id(seed), port, addresses, "0.1.0")


def as_json(seen: dict[str, Any]) -> dict[str, Any]:
    return {key: dataclasses.asdict(value) for key, value in seen.items()}


class Daemons:
    """Mdns instances started in this process, closed on the way out."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    async def start(self, name: str, seed: str, port: int, **kwargs: Any) -> tuple[Any, Watcher]:
        from migrated.discovery import Mdns

        watcher = Watcher(device_id(seed))
        interfaces = kwargs.pop("interfaces", LOOPBACK)
        addresses = kwargs.pop("addresses", ("127.0.0.1",))
        mdns = Mdns(watcher, interfaces, **kwargs)
        self.started.append(mdns)
        await mdns.start(advert(name, seed, port, addresses))
        return mdns, watcher

    async def __aenter__(self) -> Daemons:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for mdns in self.started:
            await mdns.close()


@scenario
async def play_three() -> dict[str, Any]:
    async with Daemons() as daemons:
        start = time.monotonic()
        watchers = [
            (await daemons.start(name, seed, port))[1]
            for name, seed, port in [("alpha", "alpha", 1001), ("twin", "twin-1", 1002), ("twin", "twin-2", 1003)]
        ]
        for watcher in watchers:
            await watcher.until(lambda seen: len(seen) == 2)
        converged = time.monotonic() - start
        return {
            "seen": {watcher.own: as_json(watcher.seen) for watcher in watchers},
            "self_seen": sum(watcher.self_seen for watcher in watchers),
            "converged": converged,
        }


@scenario
async def play_goodbye() -> dict[str, Any]:
    async with Daemons() as daemons:
        _, one = await daemons.start("stayer", "stayer-1", 1001)
        _, two = await daemons.start("stayer", "stayer-2", 1002)
        leaver, _ = await daemons.start("leaver", "leaver", 1003)
        for watcher in (one, two):
            await watcher.until(lambda seen: len(seen) == 2)
        start = time.monotonic()
        await leaver.close()
        gone = device_id("leaver")
        for watcher in (one, two):
            await watcher.until(lambda seen: gone not in seen)
        return {
            "gone_after": time.monotonic() - start,
            "seen_after": {"stayer-1": as_json(one.seen), "stayer-2": as_json(two.seen)},
        }


@scenario
async def play_update() -> dict[str, Any]:
    async with Daemons() as daemons:
        _, watcher = await daemons.start("watcher", "watcher", 1001)
        mover, _ = await daemons.start("mover", "mover", 1002)
        moved = device_id("mover")
        names: list[str] = []
        await watcher.until(lambda seen: moved in seen)
        names.append(watcher.seen[moved].name)
        start = time.monotonic()
        await mover.update(advert("mover", "mover", 2002))
        port_seen_after = await watcher.until(lambda seen: seen[moved].port == 2002)
        after_port = as_json(watcher.seen)
        renaming = len(watcher.history)
        await mover.update(advert("renamed", "mover", 2002))
        await watcher.until(lambda seen: moved in seen and seen[moved].name == "renamed")
        names.append(watcher.seen[moved].name)
        vanished = any(moved not in seen for seen in watcher.history[renaming:])
        return {
            "port_seen_after": port_seen_after,
            "after_port": after_port,
            "after_rename": as_json(watcher.seen),
            "names_seen": names,
            "vanished": vanished,
            "took": time.monotonic() - start,
        }


class Collect(logging.Handler):
    """Keeps the messages migrated logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logged = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.logged.set()  # migrated logs on the event loop

    async def until_ignored(self, count: int) -> None:
        """Wait until ``count`` instances were ignored."""
        while len(self.ignored()) < count:
            self.logged.clear()
            await self.logged.wait()

    def ignored(self) -> dict[str, str]:
        """Instance name -> why its advert was ignored."""
        found = {}
        for record in self.records:
            match = re.fullmatch(r"mDNS: ignoring (\S+): (.*)", record.getMessage())
            if match:
                found[match[1]] = match[2]
        return found


def _hostile_infos() -> list[Any]:
    from zeroconf import ServiceInfo

    return [
        ServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=port,
            properties=text,
            server=f"{label}.local.",
            parsed_addresses=addresses,
        )
        for label, (text, port, addresses, _) in _HOSTILE.items()
    ]


def _send_garbage() -> None:
    """Random and truncated datagrams to the mDNS group, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        for payload in [os.urandom(200), b"\x00" * 5, b"\x00\x00\x84\x00\x00\x00\x00\x05\x00\x00\x00\x00", b""]:
            sock.sendto(payload, ("224.0.0.251", 5353))


@scenario
async def play_hostile() -> dict[str, Any]:
    from zeroconf.asyncio import AsyncZeroconf

    collect = Collect()
    logging.getLogger("migrated").addHandler(collect)
    logging.getLogger("migrated").setLevel(logging.DEBUG)
    evil = AsyncZeroconf(interfaces=LOOPBACK)
    try:
        async with Daemons() as daemons:
            _, watcher = await daemons.start("observer", "observer", 1001)
            for info in _hostile_infos():
                await evil.async_register_service(info, cooperating_responders=True)
            _send_garbage()
            await daemons.start("good", "good", 1002)
            await watcher.until(lambda seen: device_id("good") in seen)
            await daemons.start("late", "late", 1003)  # browsing still works after all that
            await watcher.until(lambda seen: device_id("late") in seen)
            hostile = len(_HOSTILE) - 1  # "me" is not ignored as bad but as ourselves
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await collect.until_ignored(hostile)
            return {
                "seen": as_json(watcher.seen),
                "ignored": collect.ignored(),
                "problems": [r.getMessage() for r in collect.records if r.levelno >= logging.WARNING],
            }
    finally:
        await evil.async_close()


@scenario
async def play_expiry() -> dict[str, Any]:
    from migrated.discovery import _mdns

    ttl = 2
    _mdns.SWEEP_INTERVAL = 0.25
    async with Daemons() as daemons:
        _, watcher = await daemons.start("watcher", "watcher", 1001)
        # A responder multicasts a record at most once a second (RFC 6762 §6): let the watcher's announcements
        # pass, or the peer's first question waits out that second and its time to find the watcher says nothing.
        await asyncio.sleep(1.0)
        peer = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "peer", "faraway", "faraway", "1002", str(ttl), stdout=subprocess.PIPE
        )
        try:
            assert peer.stdout is not None
            ready = await asyncio.wait_for(peer.stdout.readline(), 20)
            peer_found_watcher = float(ready.split()[1])
            found_after = await watcher.until(lambda seen: device_id("faraway") in seen)
            start = time.monotonic()
            calls = watcher.calls
            with contextlib.suppress(TimeoutError):
                await watcher.until(lambda seen: device_id("faraway") not in seen, within=3.5 * ttl)
            stayed_for = time.monotonic() - start
            assert watcher.calls == calls, f"the live peer changed or dropped out: {watcher.seen}"
            peer.kill()
            await peer.wait()
            killed = time.monotonic()
            await watcher.until(lambda seen: device_id("faraway") not in seen, within=ttl + 5)
            return {
                "ttl": ttl,
                "peer_found_watcher": peer_found_watcher,
                "found_after": found_after,
                "stayed_for": stayed_for,
                "gone_after_kill": time.monotonic() - killed,
            }
        finally:
            if peer.returncode is None:
                peer.kill()
                await peer.wait()


async def play_peer(name: str, seed: str, port: str, ttl: str) -> None:
    """A daemon's Mdns alone in this process, with records of ``ttl`` seconds, until killed.

    Says ``ready SECONDS`` once it sees the watcher, SECONDS after its start.
    """
    from migrated.discovery import _mdns

    _mdns.RECORD_TTL = int(ttl)
    async with Daemons() as daemons:
        start = time.monotonic()
        _, watcher = await daemons.start(name, seed, int(port))
        await watcher.until(lambda seen: device_id("watcher") in seen)
        print(f"ready {time.monotonic() - start}", flush=True)
        await asyncio.Event().wait()


@scenario
async def play_probing() -> dict[str, Any]:
    async with Daemons() as daemons:
        _, watcher = await daemons.start("watcher", "watcher", 1001)
        start = time.monotonic()
        await daemons.start("careful", "careful", 1002, cooperating=False)
        returned = time.monotonic() - start
        await watcher.until(lambda seen: device_id("careful") in seen)
        return {"start_returned_after": returned, "found_after": time.monotonic() - start}


@scenario
async def play_all_interfaces() -> dict[str, Any]:
    for command in [  # a second interface, as on a host on a LAN (veth: dummy may be missing from the kernel)
        "ip link add mdnstest0 type veth peer name mdnstest1",
        "ip addr add 10.77.0.1/24 dev mdnstest0",
        "ip link set mdnstest0 up",
        "ip link set mdnstest1 up",
    ]:
        proc = await asyncio.create_subprocess_exec(*command.split())
        assert await proc.wait() == 0, command
    async with Daemons() as daemons:
        _, watcher = await daemons.start("watcher", "watcher", 1001)
        await daemons.start("everywhere", "everywhere", 1002, interfaces=None, addresses=())
        await watcher.until(lambda seen: device_id("everywhere") in seen)
        return {"addresses": list(watcher.seen[device_id("everywhere")].addresses)}


@scenario
async def play_config_errors() -> dict[str, Any]:
    from migrated.discovery import Mdns
    from migrated.errors import ConfigError

    result: dict[str, Any] = {}
    try:
        Mdns(print, ["eth0"])
    except ConfigError as exc:
        result["interface"] = str(exc)
    mdns = Mdns(print, ["10.1.2.3"])
    try:
        await mdns.start(advert("fine", "fine", 1001))
    except ConfigError as exc:
        result["absent_interface"] = str(exc)
    mdns = Mdns(print, LOOPBACK)
    try:
        await mdns.start(advert("tab\there", "tab", 1001))
    except ConfigError as exc:
        result["name"] = str(exc)
    result["left_open"] = sum(1 for fd in os.listdir("/proc/self/fd") if _is_udp_5353(int(fd)))
    return result


def _is_udp_5353(fd: int) -> bool:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with sock:
        try:
            return bool(sock.type == socket.SOCK_DGRAM and sock.getsockname()[1] == 5353)
        except OSError:
            return False


def main() -> None:
    """Play the scenario named on the command line, inside the network namespace this process is in."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    name, *args = sys.argv[1:]
    if name == "peer":
        asyncio.run(play_peer(*args))
        return
    result = asyncio.run(SCENARIOS[name](*args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
