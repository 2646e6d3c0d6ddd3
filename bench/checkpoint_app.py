"""Checkpoints of real apps through the real daemon and ``mig``, each figure beside a baseline from the same run.

``python -m bench.checkpoint_app [--quick]`` prints a summary and writes bench/results/checkpoint_app.json.

1. Full checkpoints of an app holding a 256 MiB NumPy array, a dict of 1M small objects ({i: (i, str(i))})
   and a mixed state: the pause ``mig checkpoint`` reports and the command's end-to-end time, for the first
   checkpoint of a fresh runner (it also pays the runner's one-time imports), for checkpoints with nothing
   changed, and for checkpoints after the app replaced its whole state with new content (a warm runner, every
   chunk new). Baselines, each in a separate plain ``python`` process on the same state built by the same code:
   ``pickle.dumps(protocol=5)`` written to a file (fsync), ``dill.dumps`` written to a file, and BLAKE3 over
   the state's bytes (pickle-5 stream plus out-of-band buffers: the limit of any content-addressed checkpoint),
   with the throughput of each in MB/s over the same state size. Also: ``mig status --json`` (the command
   line's own round trip, the floor of any ``mig`` command) and the one-time imports a runner pays at its first
   checkpoint.
2. Incremental cost: 50 checkpoints of the 256 MiB app, before each of which the app rewrites 1 % of the array
   (one contiguous region, or 64 scattered runs), and 50 of a 100k-entry dict where 1 % of the entries change
   (random keys, or one run of keys): bytes each version added to the store (``mig history --json``) against
   the full state size, median and p90, with the pause and end-to-end time of each checkpoint. Each change is
   made by ``on_input`` (``mig send``) and the bench waits for the app to confirm it before ``mig checkpoint``,
   so every version holds exactly one 1 % change (autosave timing would blur that; bench/autosave_incremental
   measures the autosave path).
3. ``mig open`` of a closed app until its first step after the thaw (``on_restore`` arms a marker that the next
   step writes with ``time.time()``), for a small app and the 256 MiB one, over 10 rounds, beside ``python -c
   pass`` and (for the big one) a plain ``python`` that loads the same 256 MiB state from a pickle file,
   measured in the same rounds; for the small app also ``mig run`` of a new one until its ``start`` ran.

Also recorded: the daemon's RSS and peak RSS (VmHWM) after each part, and the runner's peak RSS after its first
checkpoint. The states share no content (the store deduplicates across apps, so shared content would hide cost).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import re
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._common import PYTHON, Daemon, summary, write_results

MIB = 1 << 20

# The states, built by the same code in the app and in the baseline process.
STATE_CODE = '''
import dataclasses
import os

import numpy as np

MIB = 1 << 20


@dataclasses.dataclass
class Point:
    """A small object, as apps hold by the thousand."""

    x: float
    y: float
    label: str


def build(kind, scale, seed):
    """The state of one kind; seed 1 is the first state, other seeds give the same shapes with new content.

    The kinds share no content (the store deduplicates across apps): different generator seeds and strings.
    """
    if kind == "numpy":
        return np.random.default_rng(seed).standard_normal(int(256 * MIB * scale) // 8)
    if kind == "objects":
        n = int(1_000_000 * scale)
        return {i: (i, str(i + (seed - 1) * n)) for i in range(n)}
    if kind == "dict100k":
        n = int(100_000 * scale)
        return {i: (i, f"entry {i + (seed - 1) * n}") for i in range(n)}
    if kind == "modular":
        n = int(50_000 * scale)
        return {
            "np": np,
            "table": {i: (i, f"row {i + seed * n}") for i in range(n)},
            "records": [Point(i * 0.5, seed * 1.0, f"r{i} {seed}") for i in range(int(10_000 * scale))],
            "array": np.random.default_rng(2000 + seed).standard_normal(int(16 * MIB * scale) // 8),
        }
    if kind == "mixed":
        n = int(200_000 * scale)
        return {
            "grid": np.random.default_rng(1000 + seed).standard_normal(int(64 * MIB * scale) // 8),
            "mask": np.full(int(16 * MIB * scale), seed % 256, dtype=np.uint8),
            "points": {i: Point(i * 0.1 * seed, i * 0.2, f"p{i}") for i in range(n)},
            "log": [f"event {i}: something happened ({seed})" for i in range(n)],
            "blob": os.urandom(int(8 * MIB * scale)),
            "score": lambda p: p.x * p.y,
        }
    return {"note": "a small app"}


def mutate(state, how, rng, count):
    """Change 1 % of the state in place."""
    if how == "contiguous":
        n = state.size // 100
        start = int(rng.integers(0, state.size - n))
        state[start : start + n] = rng.standard_normal(n)
    elif how == "scattered":
        run = state.size // 100 // 64
        for start in rng.integers(0, state.size - run, 64):
            state[int(start) : int(start) + run] = rng.standard_normal(run)
    elif how == "dict-scattered":
        for key in rng.choice(len(state), len(state) // 100, replace=False):
            state[int(key)] = (int(key), f"changed {count} {int(key)}")
    elif how == "dict-contiguous":
        n = len(state) // 100
        start = int(rng.integers(0, len(state) - n))
        for key in range(start, start + n):
            state[key] = (key, f"changed {count} {key}")
    else:
        raise ValueError(how)


def mark(path, text):
    """Write ``text`` to ``path`` atomically."""
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)
'''

APP = (
    STATE_CODE
    + """
import json
import pickle
import statistics
import time
import types

import migrated


def dumps_baseline(state):
    # pickle.dumps (protocol 5) of the state in this process, modules left out (plain pickle refuses them),
    # median of 5; and dill.dumps of all of it once (the path a module used to force).
    plain = {k: v for k, v in state.items() if not isinstance(v, types.ModuleType)}
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        pickle.dumps(plain, protocol=5)
        samples.append(time.perf_counter() - started)
    import dill

    started = time.perf_counter()
    dill.dumps(state, protocol=5)
    return {"pickle_dumps_s": statistics.median(samples), "dill_dumps_s": time.perf_counter() - started}


class Bench(migrated.App):
    def start(self):
        self.kind, self.scale, self.tag = self.args[0], float(self.args[1]), self.args[2]
        self.state = build(self.kind, self.scale, 1)
        self.rng = np.random.default_rng(7)
        self.n = 0
        self.changes = 0
        self.thawed = False
        mark(self.tag + ".ready", repr(time.time()))

    def step(self):
        self.n += 1
        if self.thawed:
            self.thawed = False
            mark(self.tag + ".stepped", f"{time.time()!r} {self.n}")
        return 0.05

    def on_restore(self):
        self.thawed = True

    def on_input(self, line):
        verb, _, arg = line.partition(" ")
        if verb == "refresh":
            self.state = None  # free the old state first
            self.state = build(self.kind, self.scale, int(arg))
        elif verb == "baseline":
            mark(self.tag + ".baseline", json.dumps(dumps_baseline(self.state)))
        else:
            mutate(self.state, verb, self.rng, self.changes)
        self.changes += 1
        mark(self.tag + ".changed", str(self.changes))
"""
)

BASELINE = (
    STATE_CODE
    + """
import json
import pickle
import sys
import time

import blake3


def write_fsync(path, data):
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    kind, scale, where = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    state = build(kind, scale, 1)
    out = {}
    plain = state
    if isinstance(state, dict) and any(callable(v) for v in state.values()):
        plain = {k: v for k, v in state.items() if not callable(v)}
        out["pickle_note"] = "plain pickle cannot save the lambda: pickle baselines leave it out, dill keeps it"
    seconds, data = timed(lambda: pickle.dumps(plain, protocol=5))
    out["pickle_dumps_s"] = seconds
    out["pickle_write_fsync_s"] = timed(lambda: write_fsync(os.path.join(where, "state.pkl"), data))[0]
    out["pickle_to_file_s"] = out["pickle_dumps_s"] + out["pickle_write_fsync_s"]
    out["pickle_bytes"] = len(data)
    del data
    with open(os.path.join(where, "state.pkl"), "rb") as saved:
        out["pickle_loads_from_file_s"] = timed(lambda: pickle.loads(saved.read()))[0]
    out["import_dill_s"] = timed(lambda: __import__("dill"))[0]
    import dill

    seconds, data = timed(lambda: dill.dumps(state, protocol=5))
    out["dill_dumps_s"] = seconds
    out["dill_to_file_s"] = seconds + timed(lambda: write_fsync(os.path.join(where, "state.dill"), data))[0]
    out["dill_bytes"] = len(data)
    del data
    os.unlink(os.path.join(where, "state.dill"))
    buffers = []
    stream = pickle.dumps(plain, protocol=5, buffer_callback=buffers.append)
    views = [memoryview(stream)] + [buffer.raw() for buffer in buffers]
    out["state_bytes"] = sum(view.nbytes for view in views)
    out["stream_bytes"] = len(stream)
    out["buffer_bytes"] = out["state_bytes"] - len(stream)
    pieces = [view[i : i + 65536] for view in views for i in range(0, view.nbytes, 65536)]
    whole = [timed(lambda: [blake3.blake3(view).digest() for view in views])[0] for _ in range(3)]
    chunked = [timed(lambda: [blake3.blake3(piece).digest() for piece in pieces])[0] for _ in range(3)]
    out["blake3_s"] = min(whole)
    out["blake3_64KiB_pieces_s"] = min(chunked)
    print(json.dumps(out))


main()
"""
)

REPLY = re.compile(r"^(?P<name>\S+): version (?P<version>\d+) \(.*\); paused (?P<pause>[\d.]+) ms$")


# Helpers


def mbps(size: int, seconds: float) -> float:
    return round(size / seconds / 1e6, 1) if seconds > 0 else float("inf")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def wait_file(path: Path, want: Callable[[str], bool] | None = None, timeout: float = 120.0) -> str:
    """Poll ``path`` until it exists (and its text passes ``want``); its text."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = None
        if text is not None and (want is None or want(text)):
            return text
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} did not appear within {timeout:.0f} s (last: {text!r})")
        time.sleep(0.002)


def time_command(cmd: list[str], **kwargs: Any) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, **kwargs)
    return time.perf_counter() - start


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (VmHWM), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class Bench:
    """One daemon, and the apps this bench runs in it."""

    def __init__(self, daemon: Daemon, scale: float) -> None:
        self.daemon = daemon
        self.scale = scale
        self.app_file = daemon.work / "benchapp.py"
        self.app_file.write_text(APP)
        self.base_dir = daemon.dir / "base"
        self.base_dir.mkdir()
        self.changes: dict[str, int] = {}

    def run_app(self, name: str, kind: str) -> dict[str, Any]:
        """``mig run`` the app and wait until its ``start`` has built the state."""
        ready = self.daemon.work / f"{name}.ready"
        ready.unlink(missing_ok=True)
        wall = time.time()
        started = time.perf_counter()
        self.daemon.mig("run", str(self.app_file), "--name", name, "--", kind, str(self.scale), name)
        returned = time.perf_counter() - started
        stamp = float(wait_file(ready))
        pid = int(self.daemon.app(name)["pid"])
        self.changes[name] = 0
        return {"mig_run_returned_s": returned, "start_ran_s": stamp - wall, "runner_pid": pid}

    def checkpoint(self, name: str, message: str) -> dict[str, Any]:
        """``mig checkpoint``: the pause from its reply, and its end-to-end time."""
        started = time.perf_counter()
        out = self.daemon.mig("checkpoint", name, "-m", message, timeout=300).stdout.strip()
        seconds = time.perf_counter() - started
        found = REPLY.match(out)
        if found is None:
            raise RuntimeError(f"unexpected reply of mig checkpoint: {out!r}")
        return {"version": int(found["version"]), "pause_s": float(found["pause"]) / 1000, "end_to_end_s": seconds}

    def change(self, name: str, line: str) -> float:
        """``mig send`` a change and wait until the app confirms it; seconds."""
        started = time.perf_counter()
        self.daemon.mig("send", name, line)
        self.changes[name] += 1
        want = str(self.changes[name])
        wait_file(self.daemon.work / f"{name}.changed", lambda text: text == want)
        return time.perf_counter() - started

    def history(self, name: str) -> dict[int, dict[str, Any]]:
        return {entry["version"]: entry for entry in json.loads(self.daemon.mig("history", name, "--json").stdout)}

    def baseline(self, kind: str) -> dict[str, Any]:
        """The plain-python baselines on the same state, in a separate process."""
        where = self.base_dir / kind
        where.mkdir(exist_ok=True)
        script = self.base_dir / "baseline.py"
        script.write_text(BASELINE)
        started = time.perf_counter()
        proc = subprocess.run(
            [PYTHON, str(script), kind, str(self.scale), str(where)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the baseline process for {kind} failed: {proc.stderr.strip()[-800:]}")
        out: dict[str, Any] = json.loads(proc.stdout)
        out["process_s"] = round(time.perf_counter() - started, 2)
        size = out["state_bytes"]
        for key in ("pickle_dumps_s", "pickle_to_file_s", "dill_dumps_s", "dill_to_file_s", "blake3_s"):
            out[key.removesuffix("_s") + "_MBps"] = mbps(size, out[key])
        out["blake3_64KiB_pieces_MBps"] = mbps(size, out["blake3_64KiB_pieces_s"])
        return out


# 1. Full checkpoints


def full_checkpoints(bench: Bench, name: str, kind: str, refreshes: int) -> dict[str, Any]:
    base = bench.baseline(kind)
    result: dict[str, Any] = {"baselines": base, "state_bytes": base["state_bytes"]}
    result["run"] = bench.run_app(name, kind)
    pid = result["run"]["runner_pid"]
    result["runner_rss_before_bytes"] = rss(pid)
    cold = bench.checkpoint(name, "first")
    result["runner_peak_rss_after_first_bytes"] = vm_hwm(pid)
    unchanged = [bench.checkpoint(name, f"unchanged {i}") for i in range(2)]
    full = []
    for seed in range(2, 2 + refreshes):
        bench.change(name, f"refresh {seed}")
        full.append(bench.checkpoint(name, f"new content {seed}"))
    history = bench.history(name)
    for sample in (cold, *unchanged, *full):
        sample["bytes_added"] = history[sample["version"]]["bytes_added"]
        sample["total_bytes"] = history[sample["version"]]["total_bytes"]
    size = base["state_bytes"]

    def figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
        pause = statistics.median(s["pause_s"] for s in samples)
        e2e = statistics.median(s["end_to_end_s"] for s in samples)
        return {
            "pause_s": round(pause, 4),
            "end_to_end_s": round(e2e, 4),
            "pause_MBps": mbps(size, pause),
            "end_to_end_MBps": mbps(size, e2e),
            "bytes_added": [s["bytes_added"] for s in samples],
            "samples": samples,
        }

    result["first_checkpoint_cold_runner"] = figures([cold])
    result["unchanged"] = figures(unchanged)
    result["new_content_warm_runner"] = figures(full)
    result["total_bytes_of_one_version"] = history[cold["version"]]["total_bytes"]  # raw, not stored
    return result


# 2. Incremental cost


def incremental(bench: Bench, name: str, how: str, versions: int, logical: int) -> dict[str, Any]:
    samples = []
    change_s = []
    for i in range(versions):
        change_s.append(bench.change(name, how))
        samples.append(bench.checkpoint(name, f"{how} {i}"))
    history = bench.history(name)
    first = history[min(history)]
    full = history[samples[-1]["version"]]["total_bytes"]
    added = [history[s["version"]]["bytes_added"] for s in samples]
    return {
        "versions": versions,
        "full_state_total_bytes": full,
        "first_version_added_bytes": first["bytes_added"],
        "bytes_added": added,
        "added_bytes": summary(added),
        "added_pct_of_full_state": summary([100 * a / full for a in added]),
        "added_pct_of_first_version_stored": summary([100 * a / first["bytes_added"] for a in added]),
        "state_pickle5_bytes": logical,
        "added_pct_of_pickle5_state": summary([100 * a / logical for a in added]),
        "versions_that_added_nothing": sum(1 for a in added if a == 0),
        "pause_s": summary([s["pause_s"] for s in samples]),
        "end_to_end_s": summary([s["end_to_end_s"] for s in samples]),
        "change_via_mig_send_s": summary(change_s),
    }


# 3. mig open until the first step


def opens(bench: Bench, name: str, rounds: int, load_baseline: list[str] | None) -> dict[str, Any]:
    daemon = bench.daemon
    marker = daemon.work / f"{name}.stepped"
    started = time.perf_counter()
    daemon.mig("close", name, timeout=300)
    close_s = [time.perf_counter() - started]
    samples: dict[str, list[float]] = {"python -c pass": [], "mig open returned": [], "first step after thaw": []}
    if load_baseline is not None:
        samples["python loads the state's pickle file"] = []
    else:
        samples["mig run of a new small app until start ran"] = []
    steps_after_thaw = []
    for index in range(rounds):
        samples["python -c pass"].append(time_command([PYTHON, "-c", "pass"]))
        if load_baseline is not None:
            samples["python loads the state's pickle file"].append(time_command(load_baseline))
        else:
            fresh = bench.run_app(f"fresh{index}", "small")
            samples["mig run of a new small app until start ran"].append(fresh["start_ran_s"])
            daemon.mig("rm", "--force", f"fresh{index}")
        marker.unlink(missing_ok=True)
        wall = time.time()
        started = time.perf_counter()
        daemon.mig("open", name, timeout=300)
        samples["mig open returned"].append(time.perf_counter() - started)
        text = wait_file(marker, lambda t: " " in t)
        stamp, n = text.split()
        samples["first step after thaw"].append(float(stamp) - wall)
        steps_after_thaw.append(int(n))
        started = time.perf_counter()
        daemon.mig("close", name, timeout=300)
        close_s.append(time.perf_counter() - started)
    stats: dict[str, Any] = {key: summary(values) for key, values in samples.items()}
    stats["mig close"] = summary(close_s)
    return {
        "rounds": rounds,
        "stats_s": stats,
        "samples_s": samples,
        "step_counter_seen_at_first_step": steps_after_thaw,
        "counter_continued": all(n > 1 for n in steps_after_thaw),
    }


# Driver


def logical_size(kind: str, scale: float) -> int:
    """Bytes of the pickle-5 stream of a state built by the app's code (a small one, built here)."""
    namespace: dict[str, Any] = {}
    exec(STATE_CODE, namespace)
    return len(pickle.dumps(namespace["build"](kind, scale, 1), protocol=5))


def section(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """Run one part; a failure is recorded (and reported) instead of ending the run."""
    try:
        results[key] = fn()
    except Exception as exc:
        results.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()


def one_time_costs(daemon: Daemon, runs: int) -> dict[str, Any]:
    cmds = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "python -c 'import migrated.checkpoint'": [PYTHON, "-c", "import migrated.checkpoint"],
        "python -c 'import dill'": [PYTHON, "-c", "import dill"],
        "mig status --json": [*daemon.mig_cmd, "status", "--json"],
    }
    for cmd in cmds.values():  # warm the page cache and the .pyc files
        time_command(cmd, env=daemon.env)
    return {name: summary([time_command(cmd, env=daemon.env) for _ in range(runs)]) for name, cmd in cmds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/16 of the state sizes and 8 versions (a smoke run)")
    parser.add_argument("--versions", type=int, default=50, help="checkpoints per incremental series")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of mig open")
    args = parser.parse_args()
    scale = 1 / 16 if args.quick else 1.0
    versions = 8 if args.quick else args.versions
    rounds = 3 if args.quick else args.rounds
    began = time.perf_counter()
    results: dict[str, Any] = {
        "scale": scale,
        "load_average_before": os.getloadavg(),
        "method": (
            "all through the real daemon and mig; the incremental series are mig checkpoint in a loop (each after "
            "one 1 % change made by on_input via mig send and confirmed by the app), not autosaves; state_bytes "
            "is the pickle-5 stream plus out-of-band buffers of the state, measured in the baseline process"
        ),
    }
    with Daemon() as daemon:
        bench = Bench(daemon, scale)
        memory: dict[str, Any] = {}
        results["daemon_memory_bytes"] = memory

        def note_memory(phase: str) -> None:
            memory[phase] = {"rss": rss(daemon.pid), "peak_rss": vm_hwm(daemon.pid)}

        note_memory("idle")
        section(results, "one_time_costs_s", lambda: one_time_costs(daemon, 5))
        full: dict[str, Any] = {}
        results["full"] = full
        section(full, "numpy_256MiB", lambda: full_checkpoints(bench, "big", "numpy", 3))
        note_memory("after the 256 MiB full checkpoints")
        section(full, "dict_1M_small_objects", lambda: full_checkpoints(bench, "objects", "objects", 2))
        daemon.mig("rm", "--force", "objects", check=False)
        section(full, "mixed", lambda: full_checkpoints(bench, "mixed", "mixed", 2))
        daemon.mig("rm", "--force", "mixed", check=False)
        note_memory("after all full checkpoints (only the 256 MiB app left)")

        inc: dict[str, Any] = {}
        results["incremental"] = inc
        big_size = int(256 * MIB * scale) + 121  # the array and its 121-byte stream
        dict_size = logical_size("dict100k", scale)
        for key, how in (
            ("array_256MiB_contiguous_1pct", "contiguous"),
            ("array_256MiB_scattered_1pct_64_runs", "scattered"),
        ):
            section(inc, key, functools.partial(incremental, bench, "big", how, versions, big_size))
        note_memory("after the array series")
        section(inc, "dict_100k_run", lambda: bench.run_app("dict", "dict100k"))
        section(inc, "dict_100k_first", lambda: bench.checkpoint("dict", "first"))
        for key, how in (
            ("dict_100k_scattered_1pct", "dict-scattered"),
            ("dict_100k_contiguous_1pct", "dict-contiguous"),
        ):
            section(inc, key, functools.partial(incremental, bench, "dict", how, versions, dict_size))
        daemon.mig("rm", "--force", "dict", check=False)

        op: dict[str, Any] = {}
        results["open"] = op
        section(op, "small_run", lambda: bench.run_app("small", "small"))
        section(op, "small", lambda: opens(bench, "small", rounds, None))
        pickle_file = bench.base_dir / "numpy" / "state.pkl"
        load = [PYTHON, "-c", f"import pickle; pickle.loads(open({str(pickle_file)!r}, 'rb').read())"]
        section(op, "numpy_256MiB", lambda: opens(bench, "big", rounds, load if pickle_file.exists() else None))
        note_memory("at the end (every app closed or removed)")
    results["load_average_after"] = os.getloadavg()
    results["elapsed_s"] = round(time.perf_counter() - began, 1)
    path = write_results("checkpoint_app", results)
    summarise(results)
    print(f"elapsed {results['elapsed_s']} s; wrote {path}")


def summarise(results: dict[str, Any]) -> None:
    costs = results.get("one_time_costs_s", {})
    if costs:
        print("floors (median ms): " + ", ".join(f"{name} {ms(s['median'])}" for name, s in costs.items()))
    for name, r in results.get("full", {}).items():
        if not isinstance(r, dict):
            continue
        b = r["baselines"]
        size = r["state_bytes"]
        print(f"{name}: state {size / MIB:.1f} MiB (stream {b['stream_bytes'] / MIB:.1f} MiB)")
        for key, label in (
            ("first_checkpoint_cold_runner", "first checkpoint (cold runner)"),
            ("new_content_warm_runner", "all-new content (warm runner)"),
            ("unchanged", "nothing changed"),
        ):
            f = r[key]
            print(
                f"  {label:<32} pause {ms(f['pause_s']):8.1f} ms ({f['pause_MBps']:7.0f} MB/s), "
                f"mig checkpoint {ms(f['end_to_end_s']):8.1f} ms ({f['end_to_end_MBps']:7.0f} MB/s), "
                f"added {f['bytes_added'][0] / MIB:.1f} MiB"
            )
        print(
            f"  baselines: pickle.dumps+file {ms(b['pickle_to_file_s'])} ms ({b['pickle_to_file_MBps']:.0f} MB/s; "
            f"dumps alone {b['pickle_dumps_MBps']:.0f}), dill.dumps+file {ms(b['dill_to_file_s'])} ms "
            f"({b['dill_to_file_MBps']:.0f} MB/s), BLAKE3 {ms(b['blake3_s'])} ms ({b['blake3_MBps']:.0f} MB/s; "
            f"64 KiB pieces {b['blake3_64KiB_pieces_MBps']:.0f})"
        )
    for name, r in results.get("incremental", {}).items():
        if not (isinstance(r, dict) and "added_bytes" in r):
            continue
        a, p = r["added_bytes"], r["added_pct_of_full_state"]
        print(
            f"{name}: {r['versions']} versions, added median {a['median'] / MIB:.2f} MiB / p90 "
            f"{a['p90'] / MIB:.2f} MiB = {p['median']:.2f} % / {p['p90']:.2f} % of "
            f"{r['full_state_total_bytes'] / MIB:.1f} MiB total_bytes (raw) "
            f"({r['added_pct_of_pickle5_state']['median']:.2f} % of the {r['state_pickle5_bytes'] / MIB:.1f} MiB "
            f"pickle-5 state; {r['added_pct_of_first_version_stored']['median']:.1f} % of what the first, full "
            f"version stored); pause median {ms(r['pause_s']['median'])} ms, "
            f"mig checkpoint median {ms(r['end_to_end_s']['median'])} ms"
        )
    for name, r in results.get("open", {}).items():
        if not (isinstance(r, dict) and "stats_s" in r):
            continue
        parts = ", ".join(f"{key} {ms(s['median'])} (p90 {ms(s['p90'])})" for key, s in r["stats_s"].items())
        print(f"open {name} (median ms over {r['rounds']}): {parts}; counter continued: {r['counter_continued']}")
    for phase, mem in results.get("daemon_memory_bytes", {}).items():
        print(f"daemon memory {phase}: RSS {mem['rss'] / MIB:.0f} MiB, peak {mem['peak_rss'] / MIB:.0f} MiB")
    for key, error in results.get("errors", {}).items():
        print(f"ERROR in {key}: {error}")
    for group in ("full", "incremental", "open"):
        for key, error in results.get(group, {}).get("errors", {}).items():
            print(f"ERROR in {group}.{key}: {error}")


if __name__ == "__main__":
    main()
