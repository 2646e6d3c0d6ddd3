"""Discovery between real daemons: from a daemon's start until another host's daemon lists it, across network
namespaces joined by a bridge and on one namespace's loopback.

Each run starts a fresh daemon ("newcomer") while a watcher daemon runs, and polls the watcher's ``Peers`` over
its control socket every 2 ms until the newcomer is listed, then until it is listed as reachable (its certificate
was fetched over TLS). The newcomer's own time to ready (its ready pipe) is measured in the same run: what
discovery adds is the difference. Then ``mig shutdown`` of the newcomer, and the time until the watcher drops it
(mDNS goodbye). Needs root (network namespaces).

Run: ``python -m bench.discovery_daemons [--runs 10]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import summary, write_results
from client._connect import Daemon
from migrated.transport.v1 import control_pb2
from tests.netbed import BedDaemon, NetBed, netbed_available


def _watch(watcher: BedDaemon) -> Any:
    return Daemon(watcher.dir).stub


def _wait(stub: Any, name: str, want: str, deadline: float = 30.0) -> float:
    """Seconds until the watcher lists ``name`` (want="listed"), as reachable ("reachable") or not at all ("gone")."""
    start = time.perf_counter()
    while time.perf_counter() - start < deadline:
        rows = {peer.name: peer for peer in stub.Peers(control_pb2.PeersRequest(), timeout=5).peers}
        row = rows.get(name)
        if (
            (want == "listed" and row)
            or (want == "reachable" and row and row.reachable)
            or (want == "gone" and not row)
        ):
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"{name} not {want} within {deadline} s")


def _runs(bed: NetBed, watcher: BedDaemon, newcomer_host: int, extra: list[str], runs: int) -> dict[str, Any]:
    stub = _watch(watcher)
    ready, listed, reachable, gone = [], [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        newcomer = bed.start_daemon(bed[newcomer_host], *extra, "--name", "newcomer")
        ready_at = time.perf_counter()
        listed_at = _wait(stub, "newcomer", "listed")
        reachable_at = _wait(stub, "newcomer", "reachable")
        ready.append((ready_at - start) * 1000)
        listed.append((listed_at - start) * 1000)
        reachable.append((reachable_at - start) * 1000)
        stop = time.perf_counter()
        newcomer.mig("shutdown")
        gone.append((_wait(stub, "newcomer", "gone") - stop) * 1000)
        newcomer.stop()
        time.sleep(1.1)  # a responder repeats a record at most once a second; start each run from quiet
    return {
        "newcomer_ready_ms": summary(ready),
        "listed_after_start_ms": summary(listed),
        "reachable_after_start_ms": summary(reachable),
        "listed_after_ready_ms": summary([b - a for a, b in zip(ready, listed, strict=True)]),
        "gone_after_shutdown_ms": summary(gone),
    }


def run(runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with NetBed(2) as bed:
        watcher = bed.start_daemon(bed[0])
        results["across_namespaces"] = _runs(bed, watcher, 1, [], runs)
    with NetBed(1) as bed:
        lo = ["--mdns-interface", "127.0.0.1"]
        bed[0].run(["ip", "route", "replace", "224.0.0.0/4", "dev", "lo"], check=True)
        watcher = bed.start_daemon(bed[0], "--listen", "127.0.0.1:7464", *lo)
        results["loopback"] = _runs(bed, watcher, 0, ["--listen", "127.0.0.1:7465", *lo], runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    ok, reason = netbed_available()
    if not ok:
        sys.exit(f"bench.discovery_daemons needs network namespaces: {reason}")
    results = run(args.runs)
    path: Path = write_results("discovery_daemons", {"runs": args.runs, **results})
    json.dump(results, sys.stdout, indent=2)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
