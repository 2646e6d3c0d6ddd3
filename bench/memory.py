"""Memory: the daemon's RSS idle and with 20 apps running; each runner's RSS beside a bare sleeping interpreter;
the daemon after large checkpoints, and a runner's peak while it checkpoints a large app.

Baselines from the same run: ``python -c "import time; time.sleep(60)"`` (what any Python process costs),
``python -c "import migrated.runtime._runner; ..."`` (the runner's imports, without an app) and ``python -c
"import grpc.aio; ..."`` (the daemon's heaviest import). RSS and USS (memory only that process holds) come from
psutil on each pid; PSS is recorded too.

Large work (issue 14): an app holding 256 MiB (``--big-mib``) of float64 is checkpointed three times, each with
new content, and closed; the daemon's RSS then (goal: at most 100 MiB) and idle before (goal: at most 60 MiB),
and the runner's peak RSS (VmHWM) over those checkpoints beside its RSS before the first one, the app's own
(goal: at most 1.1x).

Run: ``python -m bench.memory [--apps N] [--big-mib 256]``.
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


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _restarted_idle(daemon: Daemon) -> dict[str, int]:
    """The daemon's memory idle once started again on its state directory (no migration left to run)."""
    daemon.mig("shutdown", check=False, timeout=30)
    assert daemon.proc is not None
    daemon.proc.wait(timeout=30)
    daemon._log.close()
    daemon.start()
    time.sleep(SETTLE)
    return _mem(daemon.pid)


def large_work(daemon: Daemon, mib: int) -> dict[str, Any]:
    """Checkpoint an app of ``mib`` MiB three times with new content, close it; the daemon's and runner's memory."""
    from bench.checkpoint_app import Bench

    bench = Bench(daemon, mib / 256)
    before = _mem(daemon.pid)
    run = bench.run_app("big", "numpy")
    pid = run["runner_pid"]
    time.sleep(SETTLE / 4)
    app_own = _mem(pid)["rss"]
    pauses = [bench.checkpoint("big", "first")["pause_s"]]
    for seed in (2, 3):
        bench.change("big", f"refresh {seed}")
        pauses.append(bench.checkpoint("big", f"new content {seed}")["pause_s"])
    runner_peak = _vm_hwm(pid)
    after_checkpoints = _mem(daemon.pid)
    daemon.mig("close", "big", timeout=300)
    time.sleep(SETTLE)
    after_close = _mem(daemon.pid)
    return {
        "state_mib": mib,
        "daemon_before": before,
        "daemon_after_three_checkpoints": after_checkpoints,
        "daemon_after_close": after_close,
        "daemon_peak_rss": _vm_hwm(daemon.pid),
        "runner_rss_before_first_checkpoint": app_own,
        "runner_peak_rss": runner_peak,
        "runner_peak_x_own": round(runner_peak / app_own, 3),
        "pauses_s": pauses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=256, help="the state of the large app (0: skip that part)")
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
        large = large_work(daemon, opts.big_mib) if opts.big_mib else {}
        restarted = _restarted_idle(daemon)

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
            "idle_after_a_restart": restarted,
        },
        "runner": {"median": runner_median, "samples": runners},
        "large_work": large,
        "baselines": baselines,
    }
    path = write_results("memory", results)

    rows = [
        ("daemon idle", _mib(idle) + f"   (mig status: rss {idle_reported / MiB:.1f})"),
        (f"daemon with {opts.apps} apps", _mib(loaded)),
        ("daemon growth per app (KiB)", _mib(per_app_daemon, 1024)),
        ("daemon after the apps are removed", _mib(after)),
        ("daemon idle after a restart (store exists)", _mib(restarted)),
        (f"runner (median of {opts.apps})", _mib(runner_median)),
        *((f"baseline: {name}", _mib(mem)) for name, mem in baselines.items()),
    ]
    if large:
        rows += [
            (f"daemon before the {opts.big_mib} MiB app", _mib(large["daemon_before"])),
            ("daemon after 3 new-content checkpoints", _mib(large["daemon_after_three_checkpoints"])),
            ("daemon after closing it", _mib(large["daemon_after_close"])),
            ("daemon peak RSS", f"{large['daemon_peak_rss'] / MiB:6.1f}"),
            ("runner RSS before its first checkpoint", f"{large['runner_rss_before_first_checkpoint'] / MiB:6.1f}"),
            ("runner peak RSS over the checkpoints", f"{large['runner_peak_rss'] / MiB:6.1f}"),
            ("runner peak / its own RSS", f"{large['runner_peak_x_own']:6.3f}x"),
        ]
    print("memory (MiB unless said)")
    for label, text in rows:
        print(f"  {label:<42} {text}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
