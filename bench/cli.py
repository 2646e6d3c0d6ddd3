"""The command line's own cost: ``mig status``, ``mig ps`` and ``mig ps --json`` beside ``python -c pass``.

The target (issue "instant moves and opens"): ``mig status`` and ``mig ps`` take at most ``python -c pass`` + 40 ms,
both measured in the same rounds, each command once per round, in turn, against a daemon with ten apps. Also
measured, to show what the fast path avoids: ``mig history NAME`` (a command that goes through click) and
``python -c "import grpc"`` (what every ``mig`` paid while the control socket spoke gRPC).

Run: ``python -m bench.cli [--runs 31]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from typing import Any

from bench._common import PYTHON, Daemon, summary, write_results

TARGET_MS = 40.0
APP = """\
import migrated


class Idle(migrated.App):
    def step(self):
        return 1.0
"""


def _time(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return (time.perf_counter() - start) * 1000


def run(runs: int) -> dict[str, Any]:
    with Daemon() as daemon:
        (daemon.work / "idle.py").write_text(APP)
        for i in range(10):
            daemon.mig("run", "idle.py", "--name", f"idle{i}")
        daemon.mig("checkpoint", "idle0")
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "python -c 'import grpc'": [PYTHON, "-c", "import grpc"],
            "mig status": [*daemon.mig_cmd, "status"],
            "mig ps": [*daemon.mig_cmd, "ps"],
            "mig ps --json": [*daemon.mig_cmd, "ps", "--json"],
            "mig history idle0 (click)": [*daemon.mig_cmd, "history", "idle0"],
        }
        for cmd in commands.values():  # warm the page cache
            _time(cmd, daemon.env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, cmd in commands.items():
                samples[name].append(_time(cmd, daemon.env))
    base = statistics.median(samples["python -c pass"])
    results: dict[str, Any] = {"runs": runs, "ms": {name: summary(values) for name, values in samples.items()}}
    results["target"] = {
        name: {
            "median_ms": statistics.median(samples[name]),
            "over_python_ms": statistics.median(samples[name]) - base,
            "limit_ms": base + TARGET_MS,
            "met": statistics.median(samples[name]) <= base + TARGET_MS,
        }
        for name in ("mig status", "mig ps", "mig ps --json")
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    results = run(parser.parse_args().runs)
    base = results["ms"]["python -c pass"]["median"]
    for name, figures in results["ms"].items():
        extra = figures["median"] - base
        print(f"{name:28} median {figures['median']:7.1f} ms  p90 {figures['p90']:7.1f} ms  (+{extra:.1f})")
    for name, target in results["target"].items():
        verdict = "met" if target["met"] else "NOT met"
        limit = f"python -c pass + {TARGET_MS:.0f} = {target['limit_ms']:.1f} ms"
        print(f"{name}: {target['median_ms']:.1f} ms against {limit}: {verdict}")
    print(f"written to {write_results('cli', results)}")


if __name__ == "__main__":
    main()
