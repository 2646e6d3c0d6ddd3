"""Memory: the daemon's RSS idle and with 20 apps running; each runner's RSS beside a bare sleeping interpreter.

Baselines from the same run: ``python -c "import time; time.sleep(60)"`` (what any Python process costs),
``python -c "import migrated.runtime._runner; ..."`` (the runner's imports, without an app) and ``python -c
"import grpc.aio; ..."`` (the daemon's heaviest import). RSS and USS (memory only that process holds) come from
psutil on each pid; PSS is recorded too.

Run: ``python -m bench.memory [--apps N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import time
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._common import PYTHON, Daemon, write_results

APP = """\
import migrated


class Idle(migrated.App):
    def start(self):
        self.n = 0

    def step(self):
        self.n += 1
        return 1.0
"""

SETTLE = 2.0  # seconds to let processes finish starting before they are measured
MiB = 2**20

BASELINES: dict[str, str] = {
    "python sleep": "import time; time.sleep(60)",
    "python import runner, sleep": "import migrated.runtime._runner, time; time.sleep(60)",
    "python import grpc.aio, sleep": "import grpc.aio, time; time.sleep(60)",
}


def _mem(pid: int) -> dict[str, int]:
    proc = psutil.Process(pid)
    try:
        full = proc.memory_full_info()
    except psutil.AccessDenied:
        info = proc.memory_info()
        return {"rss": info.rss}
    return {"rss": full.rss, "uss": full.uss, "pss": getattr(full, "pss", 0)}


def _baselines() -> dict[str, dict[str, int]]:
    procs = {name: subprocess.Popen([PYTHON, "-c", code]) for name, code in BASELINES.items()}
    try:
        time.sleep(SETTLE)
        return {name: _mem(proc.pid) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def _median_mem(samples: list[dict[str, int]]) -> dict[str, float]:
    keys = samples[0].keys() if samples else ()
    return {key: statistics.median(sample[key] for sample in samples) for key in keys}


def _mib(mem: dict[str, float] | dict[str, int], unit: int = MiB) -> str:
    return "  ".join(f"{key} {value / unit:6.1f}" for key, value in mem.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=20)
    opts = parser.parse_args()

    baselines = _baselines()
    with Daemon() as daemon:
        app_file = daemon.work / "idle.py"
        app_file.write_text(APP)
        time.sleep(SETTLE)
        idle = _mem(daemon.pid)
        idle_reported = int(json.loads(daemon.mig("status", "--json").stdout)["rss_bytes"])

        names = [f"idle{i}" for i in range(opts.apps)]
        for name in names:
            daemon.mig("run", str(app_file), "--name", name)
        time.sleep(SETTLE)
        apps = daemon.ps()
        pids = [int(app["pid"]) for app in apps if app["state"] == "running" and app["pid"]]
        if len(pids) != opts.apps:
            raise RuntimeError(f"{len(pids)} of {opts.apps} apps are running: {apps}")
        loaded = _mem(daemon.pid)
        runners = [_mem(pid) for pid in pids]
        runner_median = _median_mem(runners)

        for name in names:
            daemon.mig("kill", name)
            with contextlib.suppress(RuntimeError):
                daemon.mig("rm", name)
        time.sleep(SETTLE / 2)
        after = _mem(daemon.pid)

    per_app_daemon = {key: (loaded[key] - idle[key]) / opts.apps for key in idle}
    results: dict[str, Any] = {
        "apps": opts.apps,
        "unit": "bytes",
        "daemon": {
            "idle": idle,
            "idle_reported_by_mig_status": idle_reported,
            f"with_{opts.apps}_apps": loaded,
            "per_app_growth": per_app_daemon,
            "after_apps_removed": after,
        },
        "runner": {"median": runner_median, "samples": runners},
        "baselines": baselines,
    }
    path = write_results("memory", results)

    rows = [
        ("daemon idle", _mib(idle) + f"   (mig status: rss {idle_reported / MiB:.1f})"),
        (f"daemon with {opts.apps} apps", _mib(loaded)),
        ("daemon growth per app (KiB)", _mib(per_app_daemon, 1024)),
        ("daemon after the apps are removed", _mib(after)),
        (f"runner (median of {opts.apps})", _mib(runner_median)),
        *((f"baseline: {name}", _mib(mem)) for name, mem in baselines.items()),
    ]
    print("memory (MiB unless said)")
    for label, text in rows:
        print(f"  {label:<42} {text}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
