"""One system from any host, in the namespace test bed (three hosts, paired both ways): ``mig ps --all`` beside
``mig ps`` on one host, and the freeze of a pull (``mig move NAME HERE`` typed on the destination, relayed to the
host that runs the app) beside a push (typed on the host that runs it), measured in the same run.

Each host runs five idle apps. ``mig ps`` and ``mig ps --all`` on h0 run in turn, ``--runs`` times each; the cost of
``--all`` is one relayed List per paired host, asked at once. Then an app of ``--size`` bytes that rewrites 1 % of
its state per second moves h0 -> h1 and back, alternately pushed (``mig move`` on the host that runs it) and
pulled (``mig move`` on the host it goes to), ``--moves`` times each: the freeze and the command's wall time of
each. Needs root.

Run: ``python -m bench.any_host [--runs 21] [--moves 5] [--size 1024 67108864]``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import summary, write_results
from tests.helpers import pair
from tests.netbed import BedDaemon, NetBed, netbed_available

IDLE = """\
import migrated


class Idle(migrated.App):
    def step(self):
        return 1.0
"""

CHURN = """\
import os

import migrated


class Churn(migrated.App):
    def start(self):
        self.state = bytearray(os.urandom(int(self.args[0])))

    def step(self):
        part = len(self.state) // 1000  # 1 % a second, in ten steps
        if part:
            at = int.from_bytes(os.urandom(4), "little") % (len(self.state) - part + 1)
            self.state[at : at + part] = os.urandom(part)
        return 0.1
"""

_FROZEN = re.compile(r"moved \S+ to (\S+) in ([\d.]+) s: frozen (\d+) ms")


def _timed(daemon: BedDaemon, *args: str) -> float:
    start = time.perf_counter()
    daemon.mig(*args, timeout=120)
    return (time.perf_counter() - start) * 1000


def _move(typed_on: BedDaemon, name: str, to: str) -> dict[str, float]:
    start = time.perf_counter()
    out = typed_on.mig("move", name, to, timeout=600).out.strip().splitlines()[-1]
    wall = time.perf_counter() - start
    match = _FROZEN.search(out)
    if match is None or match.group(1) != to:
        raise RuntimeError(f"unexpected mig move output: {out}")
    return {"downtime_ms": float(match.group(3)), "total_s": float(match.group(2)), "command_s": wall}


def _ps(hosts: list[BedDaemon], runs: int) -> dict[str, Any]:
    h0 = hosts[0]
    for daemon in hosts:
        for i in range(5):
            daemon.mig("run", str(daemon.dir.parent / f"{daemon.dir.name}-idle.py"), "--name", f"idle{i}")
    samples: dict[str, list[float]] = {"mig ps (one host)": [], "mig ps --all (three hosts)": []}
    for _ in range(2):  # warm up
        _timed(h0, "ps")
        _timed(h0, "ps", "--all")
    for _ in range(runs):
        samples["mig ps (one host)"].append(_timed(h0, "ps"))
        samples["mig ps --all (three hosts)"].append(_timed(h0, "ps", "--all"))
    rows = len(h0.mig("ps", "--all").out.strip().splitlines()) - 1
    return {"rows_listed_by_all": rows, "ms": {name: summary(values) for name, values in samples.items()}}


def _moves(hosts: list[BedDaemon], size: int, moves: int, app_file: Path) -> dict[str, Any]:
    h0, h1, _ = hosts
    name = f"churn{size}"
    h0.mig("run", str(app_file), "--name", name, "--", str(size), timeout=120)
    time.sleep(1.0)
    push: list[dict[str, float]] = []
    pull: list[dict[str, float]] = []
    for _ in range(moves):
        push.append(_move(h0, name, "h1"))  # typed on the host that runs it
        time.sleep(0.5)
        _move(h1, name, "h0")
        time.sleep(0.5)
        pull.append(_move(h1, name, "h1"))  # typed on the destination: relayed to h0, which moves it
        time.sleep(0.5)
        _move(h1, name, "h0")
        time.sleep(0.5)
    h0.mig("kill", "--force", name)
    return {
        "size": size,
        "push": {key: summary([m[key] for m in push]) for key in push[0]},
        "pull": {key: summary([m[key] for m in pull]) for key in pull[0]},
    }


def run(runs: int, moves: int, sizes: list[int]) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="migbench"))
    churn = folder / "churn.py"
    churn.write_text(CHURN)
    with NetBed(3) as bed:
        hosts = bed.start_daemons("--no-mdns")
        for daemon in hosts:
            (daemon.dir.parent / f"{daemon.dir.name}-idle.py").write_text(IDLE)
        pair(hosts[0], hosts[1])
        pair(hosts[0], hosts[2])
        pair(hosts[1], hosts[2])
        ps = _ps(hosts, runs)
        for name, figures in ps["ms"].items():
            print(f"{name:<28} median {figures['median']:6.1f} ms  p90 {figures['p90']:6.1f} ms", flush=True)
        results = []
        for size in sizes:
            entry = _moves(hosts, size, moves, churn)
            results.append(entry)
            print(
                f"{size:>10} B  push: frozen {entry['push']['downtime_ms']['median']:5.0f} ms, "
                f"command {entry['push']['command_s']['median']:.2f} s | pull: frozen "
                f"{entry['pull']['downtime_ms']['median']:5.0f} ms, "
                f"command {entry['pull']['command_s']['median']:.2f} s",
                flush=True,
            )
    return {"runs": runs, "moves": moves, "ps": ps, "pull_vs_push": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--size", type=int, nargs="+", default=[1024, 64 * 2**20])
    args = parser.parse_args()
    ok, reason = netbed_available()
    if not ok:
        sys.exit(f"bench.any_host needs network namespaces: {reason}")
    results = run(args.runs, args.moves, args.size)
    path = write_results("any_host", results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
