"""Thaw and checkpoint through the real daemon: `mig open` of a closed app until its first step after the
thaw, and the pause of `mig checkpoint`, for a small app and a 256 MiB one, on a daemon with a spare runner (the
default) and on one without (`--spare-runners 0`).

Baselines from the same run: `python -c pass`, `mig status` (each open is timed right after one `mig status`;
target: a small app's open at most `mig status` + 50 ms), reading the app's bytes from the page cache into one
reused buffer (a copy at memory speed) and into new memory, as any process that loads them must (the page faults
of fresh memory cost more than the copy on these machines; target for the 256 MiB app: at most twice the latter,
+ 50 ms), and a memcpy of the state (target for the checkpoint pause: at most that + 50 ms). Opens are a second
apart, as a person's would be: a spare taken by one open is replaced half a second later.

Run: python -m bench.checkpoint_open   (writes bench/results/checkpoint_open.json)
"""

from __future__ import annotations

import os
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
SIZES = {  # random bytes: nothing compresses, so a thaw reads and loads every byte
    "small": "{'n': 1}",
    "256MiB": "__import__('numpy').random.default_rng(0).integers(0, 256, 256 * 2**20, dtype='uint8')",
}
STATE_BYTES = {"small": 64, "256MiB": 256 * 2**20}


def python_pass() -> list[float]:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return times


def measure(daemon: Daemon, name: str, size_name: str) -> dict[str, Any]:
    size = SIZES[size_name]
    (daemon.work / f"{name}.py").write_text(APP.replace("{SIZE}", size))
    daemon.mig("run", f"{name}.py")
    pauses, opens, statuses, cached, fresh, copies = [], [], [], [], [], []
    for _ in range(3):
        out = daemon.mig("checkpoint", name).stdout
        pauses.append(float(re.search(r"paused ([\d.]+) ms", out).group(1)) / 1000)  # type: ignore[union-attr]
    daemon.mig("close", name)
    marker = daemon.work / "thawed.txt"
    store = daemon.dir / "state" / "checkpoints.sqlite"
    raw = daemon.work / "raw.bin"
    raw.write_bytes(os.urandom(STATE_BYTES[size_name]))
    buffer = bytearray(1 << 20)
    for _ in range(RUNS):
        time.sleep(1.0)
        started = time.perf_counter()
        daemon.mig("status")
        statuses.append(time.perf_counter() - started)
        started = time.perf_counter()
        with open(raw, "rb") as read:  # the app's bytes, from the page cache
            while read.readinto(buffer):
                pass
        cached.append(time.perf_counter() - started)
        started = time.perf_counter()
        with open(raw, "rb") as read:  # the same into new memory, as a process that loads them must
            read.readinto(bytearray(STATE_BYTES[size_name]))
        fresh.append(time.perf_counter() - started)
        copies.append(_memcpy(STATE_BYTES[size_name]))
        marker.unlink(missing_ok=True)
        started = time.time()
        daemon.mig("open", name)
        while not marker.exists() or not marker.read_text():
            time.sleep(0.001)
        opens.append(float(marker.read_text()) - started)
        daemon.mig("close", name)
    history = daemon.mig("history", name, "--json").stdout
    return {
        "checkpoint_pause_s": summary(pauses),
        "open_until_first_step_s": summary(opens),
        "mig_status_s": summary(statuses),
        "state_read_cached_s": summary(cached),
        "state_read_cached_fresh_memory_s": summary(fresh),
        "memcpy_of_state_s": summary(copies),
        "store_bytes": sum(p.stat().st_size for p in store.parent.glob("checkpoints.sqlite*")),
        "history": history,
    }


def _memcpy(size: int) -> float:
    """Seconds to copy ``size`` bytes from one buffer into another that is already in memory."""
    source, target = bytearray(size), bytearray(size)
    started = time.perf_counter()
    target[:] = source
    return time.perf_counter() - started


def main() -> None:
    baseline = python_pass()
    results: dict[str, Any] = {"python_c_pass_s": summary(baseline)}
    for label, args in (("spare", ()), ("no spare", ("--spare-runners", "0"))):
        with Daemon(*args) as daemon:
            results[label] = {name: measure(daemon, f"app{name.lower()}", name) for name in SIZES}
    results["python_c_pass_s"]["after"] = summary(python_pass())["median"]
    path = write_results("checkpoint_open", results)
    print(f"python -c pass median {results['python_c_pass_s']['median'] * 1000:.1f} ms")
    for label in ("spare", "no spare"):
        for name in SIZES:
            got = results[label][name]
            opened, paused = got["open_until_first_step_s"]["median"], got["checkpoint_pause_s"]
            status, cached = got["mig_status_s"]["median"], got["state_read_cached_s"]["median"]
            fresh, copy = got["state_read_cached_fresh_memory_s"]["median"], got["memcpy_of_state_s"]["median"]
            limit = status + 0.050 if name == "small" else 2 * fresh + 0.050
            against = (
                "mig status + 50 ms"
                if name == "small"
                else "2x reading its bytes from the page cache into new memory + 50 ms"
            )
            print(
                f"{label}, {name}: mig open until first step median {opened * 1000:.1f} ms against {against} = "
                f"{limit * 1000:.1f} ms ({'met' if opened <= limit else 'NOT met'}); mig status {status * 1000:.1f} "
                f"ms; its bytes from the page cache {cached * 1000:.1f} ms into one reused 1 MiB buffer, "
                f"{fresh * 1000:.1f} ms into new memory; checkpoint pause max/median/min "
                f"{paused['max'] * 1000:.1f}/{paused['median'] * 1000:.1f}/{paused['min'] * 1000:.1f} ms against "
                f"a memcpy of its state + 50 ms = {(copy + 0.050) * 1000:.1f} ms"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
