"""Moving apps between two hosts of the namespace test bed: downtime and total time of ``mig move`` with
pre-copy, beside stop-and-copy (freeze, send everything, thaw) measured in the same run; the bytes a move back
sends; and the transfer rate beside a raw gRPC stream between the same namespaces.

States of 1 KiB, 64 MiB and 256 MiB (random bytes in a NumPy array, so nothing compresses), with 0 %, 1 % and
10 % of the state rewritten per second (a contiguous region at a random place, in ten steps a second). Each
configuration is moved h0 -> h1 with pre-copy, back h1 -> h0 (what a move back sends), then h0 -> h1 with
``--stop-and-copy``, and back. Needs root.

Run: ``python -m bench.move [--sizes 1024 67108864 268435456] [--rates 0 0.01 0.1]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench._common import write_results
from tests.netbed import BedDaemon, NetBed, netbed_available

APP = textwrap.dedent(
    """
    import sys

    import numpy as np

    import migrated


    class Churn(migrated.App):
        def start(self):
            self.size = int(self.args[0])
            self.rate = float(self.args[1])
            self.state = np.frombuffer(np.random.bytes(self.size), dtype=np.uint8).copy()
            self.steps = 0

        def step(self):
            part = int(self.size * self.rate / 10)
            if part:
                at = np.random.randint(0, self.size - part + 1)
                self.state[at : at + part] = np.frombuffer(np.random.bytes(part), dtype=np.uint8)
            self.steps += 1
            if self.steps % 10 == 0:
                print(self.steps, flush=True)
            return 0.1
    """
)

_PRECOPY = re.compile(
    r"(\S+): pre-copy of \d+ chunks \(\d+ skipped\), ([\d.]+) MiB: asked (\d+) ms, read, sent and stored (\d+) ms"
)
_MOVED = re.compile(r"moved \S+ to \S+ in ([\d.]+) s: frozen (\d+) ms; sent ([\d.]+) (B|KiB|MiB|GiB) in (\d+) chunks")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 2**20, "GiB": 2**30}


def _move(daemon: BedDaemon, app: str, host: str, *flags: str) -> dict[str, float]:
    start = time.perf_counter()
    out = daemon.mig("move", app, host, *flags, timeout=600).stdout.strip().splitlines()[-1]
    wall = time.perf_counter() - start
    match = _MOVED.search(out)
    if match is None:
        raise RuntimeError(f"unexpected mig move output: {out}")
    return {
        "total_s": float(match.group(1)),
        "command_s": wall,
        "downtime_ms": float(match.group(2)),
        "sent_bytes": float(match.group(3)) * _UNITS[match.group(4)],
        "chunks_sent": int(match.group(5)),
    }


def _pair(shows: BedDaemon, types: BedDaemon) -> None:
    code = json.loads(shows.mig("pair", "--json").stdout)["code"]
    types.mig("pair", shows.address, code)


def run(sizes: list[int], rates: list[float]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    app_file = Path(tempfile.mkdtemp(prefix="migbench")) / "churn.py"
    app_file.write_text(APP)
    with NetBed(2) as bed:
        h0, h1 = bed.start_daemon(bed[0], "--no-mdns"), bed.start_daemon(bed[1], "--no-mdns")
        _pair(h0, h1)
        for size in sizes:
            for rate in rates:
                entry: dict[str, Any] = {"size": size, "rewritten_per_s": rate}
                # Two instances with their own random state, so that each first move finds none of its chunks
                # at the destination: one moved with pre-copy (and back), one with stop-and-copy.
                for mode, flags in (("precopy", ()), ("stop_and_copy", ("--stop-and-copy",))):
                    name = f"{mode[:4]}-{size}-{int(rate * 100)}"
                    h0.mig("run", str(app_file), "--name", name, "--", str(size), str(rate), timeout=120)
                    time.sleep(1.5)  # a few steps of churn first
                    entry[mode] = _move(h0, name, "h1", *flags)
                    time.sleep(1.0)
                    entry[f"{mode}_back"] = _move(h1, name, "h0", *flags)
                    h0.mig("kill", "--force", name)
                    h0.mig("rm", name)
                entry["downtime_vs_stop_and_copy"] = (
                    entry["precopy"]["downtime_ms"] / entry["stop_and_copy"]["downtime_ms"]
                )
                entry["cold_transfer_mb_per_s"] = _cold_rate(h0, f"prec-{size}-{int(rate * 100)}")
                results.append(entry)
                print(
                    f"{size:>10} B {rate * 100:>4.0f}%/s  pre-copy: frozen {entry['precopy']['downtime_ms']:>6.0f} ms, "
                    f"total {entry['precopy']['total_s']:.2f} s, sent {entry['precopy']['sent_bytes'] / 2**20:.1f} MiB"
                    f" | stop-and-copy: frozen {entry['stop_and_copy']['downtime_ms']:>6.0f} ms,"
                    f" total {entry['stop_and_copy']['total_s']:.2f} s"
                    f" | back: sent {entry['precopy_back']['sent_bytes'] / 2**20:.2f} MiB"
                    f" | cold transfer {entry['cold_transfer_mb_per_s']:.0f} MB/s",
                    flush=True,
                )
        raw = _raw_stream(bed)
    for entry in results:
        entry["cold_transfer_vs_raw_grpc_mtls"] = entry["cold_transfer_mb_per_s"] / raw["mb_per_s"]["median"]
    return {"moves": results, "raw_grpc_mtls_1MiB": raw}


def _cold_rate(daemon: BedDaemon, app: str) -> float:
    """MB/s of the first pre-copy of ``app`` (the destination had none of it): read, sent, received and stored."""
    for found in _PRECOPY.finditer(daemon.stderr_log()):
        if found.group(1) == app:
            return float(found.group(2)) * 2**20 / 1e6 / (max(1, int(found.group(4))) / 1000)
    raise RuntimeError(f"no pre-copy of {app} in the log of {daemon.host.name}")


def _raw_stream(bed: NetBed) -> dict[str, Any]:
    """The raw mutual-TLS gRPC stream between the same two namespaces (bench.grpc_stream), 1 MiB messages."""
    from bench import grpc_stream
    from migrated.transport._identity import load_identity

    args = argparse.Namespace(sizes_kib=[1024], total_mib=256, warmup_mib=32, repeats=3, pin=False)
    identities = Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))
    load_identity(identities / "server", "server")
    load_identity(identities / "client", "client")
    placement = grpc_stream._placement("netns", bed[1].popen, bed[0].popen, bed[1].addr, args, identities)
    return dict(placement["grpc_mtls"][str(1 << 20)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 64 * 2**20, 256 * 2**20])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.01, 0.1])
    args = parser.parse_args()
    ok, reason = netbed_available()
    if not ok:
        sys.exit(f"bench.move needs network namespaces: {reason}")
    results = run(args.sizes, args.rates)
    raw = results["raw_grpc_mtls_1MiB"]["mb_per_s"]["median"]
    for entry in results["moves"]:
        print(
            f"{entry['size']:>10} B {entry['rewritten_per_s'] * 100:>4.0f}%/s: frozen "
            f"{entry['precopy']['downtime_ms']:.0f} ms = {entry['downtime_vs_stop_and_copy'] * 100:.0f} % of "
            f"stop-and-copy ({entry['stop_and_copy']['downtime_ms']:.0f} ms); cold transfer "
            f"{entry['cold_transfer_mb_per_s']:.0f} MB/s = {entry['cold_transfer_vs_raw_grpc_mtls'] * 100:.0f} % of "
            f"the raw mutual-TLS gRPC stream ({raw:.0f} MB/s)"
        )
    path = write_results("move", {"sizes": args.sizes, "rates": args.rates, **results})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
