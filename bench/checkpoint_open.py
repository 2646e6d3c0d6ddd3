"""Thaw and checkpoint through the real daemon: `mig open` of a closed app until its first step after the
thaw, and the pause of `mig checkpoint`, for a small app and a 256 MiB one, beside `python -c pass`.

Run: python -m bench.checkpoint_open   (writes bench/results/checkpoint_open.json)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

from bench._common import Daemon, summary, write_results

RUNS = 9
APP = """
import time
import migrated

class Thawed(migrated.App):
    def start(self):
        self.state = {SIZE}

    def step(self):
        if getattr(self, "marker", None):
            with open(self.marker, "w") as out:
                out.write(repr(time.time()))
            self.marker = None
        return 0.01

    def on_input(self, line):
        self.marker = line

    def on_restore(self):
        self.marker = "thawed.txt"
"""
SIZES = {"small": "{'n': 1}", "256MiB": "__import__('numpy').ones(32 * 1024 * 1024)"}


def python_pass() -> list[float]:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return times


def measure(daemon: Daemon, name: str, size: str) -> dict[str, Any]:
    (daemon.work / f"{name}.py").write_text(APP.replace("{SIZE}", size))
    daemon.mig("run", f"{name}.py")
    pauses, opens = [], []
    for _ in range(3):
        out = daemon.mig("checkpoint", name).stdout
        pauses.append(float(re.search(r"paused ([\d.]+) ms", out).group(1)) / 1000)  # type: ignore[union-attr]
    daemon.mig("close", name)
    marker = daemon.work / "thawed.txt"
    for _ in range(RUNS):
        marker.unlink(missing_ok=True)
        started = time.time()
        daemon.mig("open", name)
        while not marker.exists() or not marker.read_text():
            time.sleep(0.001)
        opens.append(float(marker.read_text()) - started)
        daemon.mig("close", name)
    history = daemon.mig("history", name, "--json").stdout
    return {"checkpoint_pause_s": summary(pauses), "open_until_first_step_s": summary(opens), "history": history}


def main() -> None:
    baseline = python_pass()
    results: dict[str, Any] = {"python_c_pass_s": summary(baseline)}
    with Daemon() as daemon:
        for name, size in SIZES.items():
            results[name] = measure(daemon, f"app{name.lower()}", size)
    results["python_c_pass_s"]["after"] = summary(python_pass())["median"]
    path = write_results("checkpoint_open", results)
    print(f"python -c pass median {results['python_c_pass_s']['median'] * 1000:.1f} ms")
    for name in SIZES:
        opened, paused = results[name]["open_until_first_step_s"], results[name]["checkpoint_pause_s"]
        print(
            f"{name}: mig open until first step median {opened['median'] * 1000:.1f} ms "
            f"(p90 {opened['p90'] * 1000:.1f}); checkpoint pause max/median/min "
            f"{paused['max'] * 1000:.1f}/{paused['median'] * 1000:.1f}/{paused['min'] * 1000:.1f} ms"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
