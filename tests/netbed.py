"""A multi-host test bed built from Linux network namespaces: hosts on one bridge, one daemon per host.

One bed, for ``NetBed(3)``::

    migbed-<pid>-<id>-hub   lo; br0 (no address, multicast snooping off) with ports h0, h1, h2
    migbed-<pid>-<id>-h0    lo; eth0 10.A.B.1/24, the other end of h0; route 224.0.0.0/4 dev eth0
    migbed-<pid>-<id>-h1    lo; eth0 10.A.B.2/24 ...

The /24 is picked at random inside 10.200.0.0-10.250.255.0 and checked against the root namespace's routes and
addresses. The root namespace gets no interface and no route to the bed: every veth is created directly in its
namespaces, so bed traffic never leaves them. ``<pid>`` is the creating process; a bed whose creator died is
removed (its processes killed, its namespaces deleted, its state directories removed) the next time a bed is
built, or by ``cleanup_stale()``. Each bed keeps a record in ``/run/migbed/`` for that and for ``scripts/netbed
list``.

A daemon of a bed is a ``BedDaemon``: what a test does with it is ``tests.helpers.BaseDaemon``'s, as for the
loopback daemons of ``tests/conftest.py``; what is its own here is the namespace (and a mount namespace, a fault
point). ``start_bed`` starts the bed most multi-host tests use, ``HomeBed`` the one of the home I/O tests.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    MIG,
    MIGRATED,
    START_TIMEOUT,
    STOP_TIMEOUT,
    BaseDaemon,
    pair,
    pid_alive,
    wait_until,
)

__all__ = [
    "MIG",
    "MIGRATED",
    "PEER_PORT",
    "PREFIX",
    "RECORD_DIR",
    "BedDaemon",
    "HomeBed",
    "Host",
    "NetBed",
    "NetBedError",
    "bed_factory",
    "bed_records",
    "cleanup_stale",
    "list_netns",
    "module_netbeds",
    "netbed_available",
    "netbeds",
    "pid_alive",
    "require_netbed",
    "start_bed",
]

PREFIX = "migbed-"
PEER_PORT = 7464
RECORD_DIR = Path("/run/migbed")
FAULT = "MIGRATED_FAULT_PAUSE"


class NetBedError(Exception):
    """The bed could not be built, or a daemon in it would not start."""


def _ip(*args: str, input: str | None = None) -> str:
    """Run ``ip ARGS``; return its output, or raise with its error."""
    proc = subprocess.run(["ip", *args], input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetBedError(f"ip {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _batch(lines: Sequence[str], ns: str | None = None, *, force: bool = False) -> None:
    """Run ``ip`` commands in one process, inside ``ns`` when given."""
    _ip(*(["-n", ns] if ns else []), *(["-force"] if force else []), "-batch", "-", input="\n".join(lines) + "\n")


def list_netns() -> list[str]:
    """Every named network namespace."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _owner(name: str) -> int | None:
    """The pid in a bed name (``migbed-<pid>-...``), or None for other names."""
    if not name.startswith(PREFIX):
        return None
    pid = name[len(PREFIX) :].partition("-")[0]
    return int(pid) if pid.isdigit() else None


def _kill_netns_pids(names: Sequence[str], timeout: float = 5.0) -> None:
    """SIGKILL every process in the namespaces until none is left (a dying one may still fork)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = set()
        for ns in names:
            with contextlib.suppress(NetBedError):
                pids |= {int(pid) for pid in _ip("netns", "pids", ns).split()}
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _delete_netns(names: Sequence[str]) -> None:
    """Kill what runs in the namespaces, then delete them; missing ones are ignored."""
    if names:
        _kill_netns_pids(names)
        with contextlib.suppress(NetBedError):
            _batch([f"netns del {ns}" for ns in names], force=True)


def _remove_dirs(dirs: Sequence[str]) -> None:
    for path in dirs:
        if path.startswith("/tmp/mig"):  # only what start_daemon made, whatever a record says
            shutil.rmtree(path, ignore_errors=True)


def bed_records() -> list[dict[str, Any]]:
    """Every bed record in RECORD_DIR (unreadable ones are skipped)."""
    found = []
    for path in sorted(RECORD_DIR.glob(f"{PREFIX}*.json")):
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text()))
    return found


def cleanup_stale() -> list[str]:
    """Remove the beds whose creating process is gone; return the namespaces deleted."""
    for record in bed_records():
        if not pid_alive(record["pid"]):
            _remove_dirs([path for host in record["hosts"] for path in host["dirs"]])
            (RECORD_DIR / f"{record['prefix']}.json").unlink(missing_ok=True)
    stale = [ns for ns in list_netns() if (pid := _owner(ns)) is not None and not pid_alive(pid)]
    _delete_netns(stale)
    return stale


@functools.cache
def netbed_available() -> tuple[bool, str]:
    """Whether beds can be built here: root, ``ip netns``, veth and bridge; if not, why not."""
    if os.geteuid() != 0:
        return False, "the network-namespace test bed needs root (ip netns add)"
    if shutil.which("ip") is None:
        return False, "the network-namespace test bed needs the ip command (iproute2)"
    ns = f"{PREFIX}{os.getpid()}-probe-{secrets.token_hex(2)}"
    try:
        _batch([f"netns add {ns}"])
        _batch(["link add br0 type bridge", "link add v0 type veth peer name v1"], ns)
    except NetBedError as exc:
        return False, f"the network-namespace test bed cannot work here: {exc}"
    finally:
        with contextlib.suppress(NetBedError):
            _batch([f"netns del {ns}"], force=True)
    return True, ""


def _taken_networks() -> list[ipaddress.IPv4Network]:
    """Networks the root namespace routes or holds addresses in (not its default route), and other beds' ones."""
    taken = [
        ipaddress.ip_network(route["dst"], strict=False)
        for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]")
        if route.get("dst", "default") != "default"
    ]
    for link in json.loads(_ip("-j", "-4", "addr") or "[]"):
        for addr in link.get("addr_info", []):
            taken.append(ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network)
    taken += [ipaddress.ip_network(record["subnet"]) for record in bed_records()]
    return [net for net in taken if isinstance(net, ipaddress.IPv4Network)]


def _pick_subnet() -> ipaddress.IPv4Network:
    """A random free /24 in 10.200.0.0 - 10.250.255.0."""
    taken = _taken_networks()
    rng = random.SystemRandom()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(200, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(other) for other in taken):
            return net
    raise NetBedError("no free /24 in 10.200.0.0/16-10.250.0.0/16: the root namespace routes all of them")


def _new_prefix() -> str:
    """``migbed-<pid>-<4 hex>``, not the prefix of any namespace there is."""
    existing = list_netns()
    while True:
        prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        if not any(ns.startswith(f"{prefix}-") for ns in existing):
            return prefix


class Host:
    """One host of a bed: a namespace with ``lo`` and ``eth0`` on the bed's bridge."""

    def __init__(self, bed: NetBed, index: int, addr: str) -> None:
        self.bed = bed
        self.name = f"h{index}"
        self.ns = f"{bed.prefix}-{self.name}"
        self.addr = addr
        self.bridge_port = self.name  # in the hub: the other end of eth0
        self.daemon: BedDaemon | None = None  # the daemon last started here
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} in {self.ns}>"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace."""
        kwargs.setdefault("check", False)
        return subprocess.run(self.argv(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace (``ip netns exec`` execs, so its pid is the program's)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def cut(self, *, carrier_only: bool = False) -> None:
        """Pull the cable: take eth0 and its bridge port down, both directions dead.

        With ``carrier_only`` only the bridge port goes down: eth0 stays up without carrier, keeps its routes, and
        packets vanish silently instead of failing at once with "network unreachable".
        """
        if not carrier_only:
            _batch(["link set eth0 down"], self.ns)
        _batch([f"link set {self.bridge_port} down"], self.bed.hub)

    def heal(self) -> None:
        """Plug the cable back in (taking eth0 down dropped its multicast route; it comes back too)."""
        _batch([f"link set {self.bridge_port} up"], self.bed.hub)
        _batch(["link set eth0 up", "route replace 224.0.0.0/4 dev eth0"], self.ns)

    def _reap(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
        self._procs.clear()


def _daemon_env(state_dir: Path) -> dict[str, str]:
    """The environment without MIGRATED_* settings (tests/conftest.py sets some), so flags alone decide."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MIGRATED_", "MIG_"))}
    return {**env, "MIG_DIR": str(state_dir)}


class BedDaemon(BaseDaemon):
    """A real ``migrated`` inside one host's namespace, listening on the host's address.

    With ``fault``, it starts with ``MIGRATED_FAULT_PAUSE=fault``: it logs ``paused at POINT`` when a move reaches
    that step and waits there for ever (``paused``), until it is killed; ``revive`` starts it again without. With
    ``private``, it sees that folder as an empty disk of its own (``ls``), in a mount namespace of its own.
    """

    stop_request = "SIGTERM"

    def __init__(
        self,
        bed: NetBed,
        host: Host,
        state_dir: Path,
        args: Sequence[str],
        *,
        fault: str = "",
        private: Path | None = None,
    ) -> None:
        super().__init__(state_dir, state_dir / "stderr.log")
        self.bed = bed
        self.host = host
        self.args = tuple(args)
        self.fault = fault
        self.private = private
        self._ready_fd = -1

    def __repr__(self) -> str:
        return f"<BedDaemon {self.host.name} pid {self.proc.pid if self.proc else None} {self.dir}>"

    @property
    def where(self) -> str:
        return self.host.name

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        """The peer port, ``ADDR:PORT``."""
        return f"{self.host.addr}:{PEER_PORT}"

    def _ask_to_stop(self) -> str:
        assert self.proc is not None
        self.proc.terminate()
        return ""

    def _env(self) -> dict[str, str]:
        env = _daemon_env(self.dir)  # stripped of MIGRATED_* variables; the fault point is added back
        if self.fault:
            env[FAULT] = self.fault
        return env

    def _command(self, argv: list[str]) -> list[str]:
        if self.private is None:
            return argv
        mount = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(self.private), *argv]

    def _spawn(self) -> None:
        argv = [MIGRATED, "--dir", str(self.dir), "--name", self.host.name, "--listen", self.address]
        read_fd, write_fd = os.pipe()
        try:
            with open(self.log, "ab") as log:
                self.proc = self.host.popen(
                    self._command([*argv, "--ready-fd", str(write_fd), *self.args]),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    env=self._env(),
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._ready_fd = read_fd

    def _wait_ready(self, timeout: float) -> None:
        """Wait for "ready" on the ready fd; raise with the daemon's stderr if it dies or stays silent."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        got = b""
        try:
            while b"ready" not in got:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._ready_fd], [], [], left)[0]:
                    self.proc.kill()
                    self.proc.wait()
                    raise NetBedError(
                        f"migrated on {self.host.name} was not ready after {timeout} s:\n{self.stderr_log()}"
                    )
                chunk = os.read(self._ready_fd, 64)
                if not chunk:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(STOP_TIMEOUT)
                    raise NetBedError(
                        f"migrated on {self.host.name} exited ({self.proc.returncode}) before it was ready:\n"
                        f"{self.stderr_log()}"
                    )
                got += chunk
        finally:
            os.close(self._ready_fd)
            self._ready_fd = -1

    def restart(self, *extra_args: str, timeout: float = START_TIMEOUT) -> BedDaemon:
        """Stop the daemon if it runs, start it again on the same state directory (with ``extra_args``, if given,
        instead of the first ones) and wait until it is ready."""
        self.stop()
        if extra_args:
            self.args = extra_args
        self._spawn()
        self.bed._save_record()
        self._wait_ready(timeout)
        return self

    def paused(self, point: str, timeout: float = 30.0) -> None:
        """Wait until the daemon stopped at the fault point ``point``."""
        wait_until(
            lambda: f"paused at {point}" in self.stderr_log(), timeout, what=f"{self.host.name} to pause at {point}"
        )

    def revive(self) -> None:
        """Start the daemon again on its state directory, without its fault point."""
        self.fault = ""
        self.restart()

    def ls(self, path: Path) -> list[str]:
        """What this daemon sees in ``path`` (in its own mount namespace)."""
        out = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "ls", "-A", str(path)], capture_output=True, text=True, check=True
        )
        return out.stdout.split()


class NetBed:
    """``n`` hosts on one bridge, each in its own network namespace; a context manager, or call ``close()``."""

    def __init__(self, n: int) -> None:
        if not 1 <= n <= 250:
            raise ValueError(f"a bed has 1 to 250 hosts, not {n}")
        cleanup_stale()
        self.prefix = _new_prefix()
        self.hub = f"{self.prefix}-hub"
        self.subnet = _pick_subnet()
        self.hosts = [Host(self, i, str(self.subnet[i + 1])) for i in range(n)]
        self.daemons: list[BedDaemon] = []
        self._closed = False
        self._owner = os.getpid()
        atexit.register(self.close)
        try:
            self._build()
            self._save_record()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<NetBed {self.prefix} {self.subnet} {len(self.hosts)} hosts>"

    def __enter__(self) -> NetBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    @property
    def namespaces(self) -> list[str]:
        """The hub's namespace and every host's."""
        return [self.hub, *(host.ns for host in self.hosts)]

    def _build(self) -> None:
        # Every veth is born in its namespaces, never in the root one.
        _batch(
            [f"netns add {ns}" for ns in self.namespaces]
            + [f"link add br0 netns {self.hub} type bridge mcast_snooping 0 forward_delay 0 stp_state 0"]
            + [f"link add {h.bridge_port} netns {self.hub} type veth peer name eth0 netns {h.ns}" for h in self.hosts]
        )
        _batch(
            ["link set lo up", "link set br0 multicast on up"]
            + [f"link set {h.bridge_port} multicast on master br0 up" for h in self.hosts],
            self.hub,
        )
        for host in self.hosts:
            _batch(
                [
                    "link set lo up",
                    f"addr add {host.addr}/{self.subnet.prefixlen} dev eth0",
                    "link set eth0 multicast on up",
                    "route add 224.0.0.0/4 dev eth0",
                ],
                host.ns,
            )

    def start_daemon(self, host: Host, *extra_args: str, timeout: float = START_TIMEOUT) -> BedDaemon:
        """Start ``migrated`` in ``host``'s namespace on a fresh state directory; wait until it is ready."""
        daemon = self._spawn_daemon(host, extra_args)
        daemon._wait_ready(timeout)
        return daemon

    def start_daemons(
        self,
        *extra_args: str,
        timeout: float = START_TIMEOUT,
        args: dict[str, Sequence[str]] | None = None,
        dirs: dict[str, Path] | None = None,
        faults: dict[str, str] | None = None,
        private: dict[str, Path] | None = None,
    ) -> list[BedDaemon]:
        """Start a daemon on every host at once, with ``extra_args``; wait until all are ready. By host name,
        ``args`` gives some more flags, ``dirs`` a state directory, ``faults`` a fault point and ``private`` a
        folder seen as an empty disk of their own (see ``BedDaemon``)."""
        started = [
            self._spawn_daemon(
                host,
                (*extra_args, *(args or {}).get(host.name, ())),
                (dirs or {}).get(host.name),
                fault=(faults or {}).get(host.name, ""),
                private=(private or {}).get(host.name),
            )
            for host in self.hosts
        ]
        for daemon in started:
            daemon._wait_ready(timeout)
        return started

    def _spawn_daemon(
        self,
        host: Host,
        extra_args: Sequence[str],
        state_dir: Path | None = None,
        *,
        fault: str = "",
        private: Path | None = None,
    ) -> BedDaemon:
        if self._closed:
            raise NetBedError(f"{self.prefix} is closed")
        state_dir = state_dir or Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))
        daemon = BedDaemon(self, host, state_dir, extra_args, fault=fault, private=private)
        self.daemons.append(daemon)
        host.daemon = daemon
        daemon._spawn()
        self._save_record()
        return daemon

    def describe(self) -> dict[str, Any]:
        """The bed as JSON-able data: what ``scripts/netbed`` prints and what the record holds."""
        return {
            "prefix": self.prefix,
            "pid": self._owner,
            "command": " ".join(sys.argv),
            "subnet": str(self.subnet),
            "hub": self.hub,
            "hosts": [
                {
                    "name": host.name,
                    "ns": host.ns,
                    "addr": host.addr,
                    "dir": str(host.daemon.dir) if host.daemon else None,
                    "daemon_pid": host.daemon.pid if host.daemon and host.daemon.proc else None,
                    "dirs": [str(d.dir) for d in self.daemons if d.host is host],  # every one, for cleanup
                }
                for host in self.hosts
            ],
        }

    def _save_record(self) -> None:
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        path = RECORD_DIR / f"{self.prefix}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=1))
        tmp.replace(path)

    def close(self) -> list[str]:
        """Kill every daemon and process in the bed, delete its namespaces and state directories; idempotent.

        Returns the problems seen: daemons that logged a traceback.
        """
        if self._closed or os.getpid() != self._owner:  # a forked child does not own the bed
            return []
        self._closed = True
        atexit.unregister(self.close)
        problems = [
            f"the daemon on {d.host.name} logged a traceback:\n{traceback}"
            for d in self.daemons
            if (traceback := d.traceback())
        ]
        _delete_netns(self.namespaces)
        for host in self.hosts:
            host._reap()
        _remove_dirs([str(d.dir) for d in self.daemons])
        (RECORD_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
        return problems


def start_bed(
    bed: NetBed,
    faults: dict[str, str] | None = None,
    dirs: dict[str, Path] | None = None,
    args: dict[str, Sequence[str]] | None = None,
) -> list[BedDaemon]:
    """A daemon on every host with mDNS off (its peers are paired by address), started at once; wait until all are
    ready. ``faults``, ``dirs`` and ``args`` give some hosts, by name, a fault point, a state directory, more flags."""
    return bed.start_daemons("--no-mdns", faults=faults, dirs=dirs, args=args)


class HomeBed:
    """Three hosts, paired both ways, for apps whose home is h0: h1 and h2 see an empty disk of their own where the
    home's ``folder`` is, so a file an app wrote on the disk of the host it runs on lands there, where nobody else
    sees it. An app's file or socket call waits 3 s for an unreachable home before it fails (``--home-timeout``)."""

    def __init__(self, bed: NetBed, folder: Path) -> None:
        self.bed = bed
        self.folder = folder
        away = {"h1": folder, "h2": folder}
        self.daemons = bed.start_daemons("--no-mdns", "--home-timeout", "3", private=away)
        home, h1, h2 = self.daemons
        pair(home, h1)
        pair(home, h2)
        pair(h1, h2)

    def host(self, name: str) -> BedDaemon:
        """The daemon of host ``name``."""
        return self.daemons[int(name[1:])]


def require_netbed() -> None:
    """Fail the calling test, saying why, unless beds can be built here (the suite runs as root)."""
    ok, reason = netbed_available()
    if not ok:
        pytest.fail(reason)


def bed_factory() -> Iterator[Callable[[int], NetBed]]:
    """The body of a bed fixture: fail where beds cannot be built, close every bed at teardown."""
    require_netbed()
    beds: list[NetBed] = []

    def make(n: int) -> NetBed:
        beds.append(NetBed(n))
        return beds[-1]

    try:
        yield make
    finally:
        problems = [problem for bed in beds for problem in bed.close()]
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def netbeds() -> Iterator[Callable[[int], NetBed]]:
    """Build beds of network namespaces, ``netbeds(3)``; needs root; all are torn down after the test."""
    yield from bed_factory()


@pytest.fixture(scope="module")
def module_netbeds() -> Iterator[Callable[[int], NetBed]]:
    """Like ``netbeds``, for beds that the tests of one module share."""
    yield from bed_factory()
