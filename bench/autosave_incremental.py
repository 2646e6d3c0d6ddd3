"""Incremental cost of autosaves through the real daemon: bytes each autosave adds to the store, against the
full state size, for a 256 MiB array with 1 % rewritten between autosaves (one contiguous region, and 64
scattered runs) and a 100k-entry dict with 1 % of its entries changed.

Run: python -m bench.autosave_incremental   (writes bench/results/autosave_incremental.json)
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench._common import Daemon, summary, write_results

VERSIONS = 50
PERIOD = 0.4
APP = """
import numpy as np
import migrated

class Churn(migrated.App):
    def start(self):
        self.kind = {KIND!r}
        self.rng = np.random.default_rng(1)
        self.i = 0
        if self.kind == "dict":
            self.state = {{n: (n, str(n) * 3) for n in range(100_000)}}
        else:
            self.state = np.zeros(32 * 1024 * 1024)  # 256 MiB of float64

    def step(self):
        self.i += 1
        if self.kind == "contiguous":
            n = self.state.size // 100
            start = int(self.rng.integers(0, self.state.size - n))
            self.state[start : start + n] = self.rng.random(n)
        elif self.kind == "scattered":
            n = self.state.size // 100 // 64
            for start in self.rng.integers(0, self.state.size - n, 64):
                self.state[int(start) : int(start) + n] = self.rng.random(n)
        else:
            for key in self.rng.integers(0, 100_000, 1000):
                self.state[int(key)] = (self.i, str(self.i) * 3)
        return {PERIOD}
"""


def series(daemon: Daemon, kind: str) -> dict[str, Any]:
    name = f"churn{kind}"
    (daemon.work / f"{name}.py").write_text(APP.format(KIND=kind, PERIOD=PERIOD))
    daemon.mig("run", f"{name}.py", "--autosave", str(PERIOD))
    deadline = time.monotonic() + 240
    versions: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(versions) < VERSIONS + 1:
        time.sleep(1.0)
        versions = json.loads(daemon.mig("history", name, "--json").stdout)
    daemon.mig("kill", name)
    later = versions[1 : VERSIONS + 1]  # the first version stores the whole state
    full = versions[0]["total_bytes"]
    added = [v["bytes_added"] for v in later]
    return {
        "versions": len(later),
        "full_state_bytes": full,
        "first_version_added_bytes": versions[0]["bytes_added"],
        "added_bytes": summary(added),
        "added_percent_of_full": summary([100 * a / full for a in added]),
    }


def main() -> None:
    results: dict[str, Any] = {"period_s": PERIOD, "change_per_step": "1 %"}
    with Daemon() as daemon:
        for kind in ("contiguous", "scattered", "dict"):
            results[kind] = series(daemon, kind)
    path = write_results("autosave_incremental", results)
    for kind in ("contiguous", "scattered", "dict"):
        r = results[kind]
        pct = r["added_percent_of_full"]
        print(
            f"{kind}: {r['versions']} autosaves, full state {r['full_state_bytes'] / 2**20:.1f} MiB; "
            f"added per version median {pct['median']:.2f} % (p90 {pct['p90']:.2f} %) of the full state"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
