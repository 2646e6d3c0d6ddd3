"""Lean checkpoints (issue 14): pause of a state holding a module, cost of scattered changes, disk of the store.

``python -m bench.lean [--quick] [--versions 40]`` prints a summary and writes bench/results/lean.json.

All through the real daemon and ``mig``, each figure beside a baseline from the same run:

1. A state holding a module (``numpy`` itself), a 50k-entry dict, 10k dataclass records and a 16 MiB array:
   the pause ``mig checkpoint`` reports (first checkpoint, nothing changed, all-new content) beside
   ``pickle.dumps`` of the same data in the app's own process (modules left out: plain pickle refuses them;
   median of 5) and ``dill.dumps`` of all of it (the path one module used to force). Goal: at most 1.5x.
2. A 100k-entry dict with 1 % of its entries changed at random keys (and in one run of keys) before each of
   ``--versions`` checkpoints: the bytes each version added (``mig history --json``) against what the first,
   full version stored (goal: at most 5 %), median, p90 and mean; and loading the newest version (the end of
   its delta chain) beside loading the first, whole one, from the store file in this process.
3. Page size: 128 MiB of 64 KiB blobs (float64 noise, as array chunks are stored) inserted in one transaction
   (WAL, synchronous=FULL) at 4, 16, 32 and 64 KiB pages, and of 65,400-byte blobs (the store's buffer chunks)
   at 64 KiB pages: MB/s written (best of 3), read back, and the file's size once the WAL is checkpointed,
   beside the bytes held.
4. Disk: 20 versions of a 64 MiB app (float64 array, 1 % rewritten in 64 scattered runs before each): the
   store file, its WAL and shared memory on disk beside the stored bytes the versions hold (chunks and
   manifests). Goal: at most 1.1x stored + 16 MiB.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

from bench._common import Daemon, summary, write_results
from bench.checkpoint_app import MIB, Bench, incremental, logical_size, ms, wait_file


def module_state(bench: Bench, refreshes: int, unchanged: int) -> dict[str, Any]:
    """Part 1: pauses of the state with a module, beside pickle.dumps and dill.dumps of it in the app."""
    name = "modular"
    bench.run_app(name, "modular")
    first = bench.checkpoint(name, "first")
    same = [bench.checkpoint(name, f"unchanged {i}") for i in range(unchanged)]
    fresh = []
    for seed in range(2, 2 + refreshes):
        bench.change(name, f"refresh {seed}")
        fresh.append(bench.checkpoint(name, f"new content {seed}"))
    bench.change(name, "baseline")
    base = json.loads(wait_file(bench.daemon.work / f"{name}.baseline"))
    dumps = base["pickle_dumps_s"]

    def figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
        pause = statistics.median(s["pause_s"] for s in samples)
        return {"pause_s": pause, "x_pickle_dumps": round(pause / dumps, 2), "samples": samples}

    result = {
        "baseline_in_app": base,
        "first": figures([first]),
        "unchanged": figures(same),
        "new_content": figures(fresh),
        "dill_x_pickle_dumps": round(base["dill_dumps_s"] / dumps, 2),
        "goal_x_pickle_dumps": 1.5,
    }
    bench.daemon.mig("rm", "--force", name, check=False)
    return result


def _timed_load(store_path: Path, app: str, version: int, runs: int = 3) -> float:
    from migrated.checkpoint import Store

    with Store(store_path, readonly=True) as store:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            store.load(app, version)
            samples.append(time.perf_counter() - started)
    return min(samples)


def scattered_dict(bench: Bench, versions: int, scale: float) -> dict[str, Any]:
    """Part 2: bytes added per version after a 1 % change of a 100k-entry dict, and loads along the chain."""
    out: dict[str, Any] = {}
    dict_size = logical_size("dict100k", scale)
    for how in ("dict-scattered", "dict-contiguous"):
        name = how.replace("dict-", "d")
        bench.run_app(name, "dict100k")
        bench.checkpoint(name, "first")
        series = incremental(bench, name, how, versions, dict_size)
        added = series["bytes_added"]
        first = series["first_version_added_bytes"]
        series["added_pct_of_first_version_mean"] = round(100 * sum(added) / len(added) / first, 2)
        history = bench.history(name)
        store = bench.daemon.dir / "state" / "checkpoints.sqlite"
        oldest, newest = min(history), max(history)
        series["load_first_version_s"] = _timed_load(store, name, oldest)
        series["load_newest_version_s"] = _timed_load(store, name, newest)
        out[how] = series
        bench.daemon.mig("rm", "--force", name, check=False)
        bench.daemon.mig("gc")  # the next series starts from the same state: it must not find it stored
    return out


def _stored(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        chunks = conn.execute("SELECT COALESCE(SUM(stored_size), 0), COUNT(*) FROM chunks").fetchone()
        manifests = conn.execute("SELECT COALESCE(SUM(LENGTH(manifest)), 0) FROM versions").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return {
        "chunk_bytes": chunks[0],
        "chunks": chunks[1],
        "manifest_bytes": manifests,
        "page_size": page_size,
        "free_pages": free,
    }


def _on_disk(db: Path) -> dict[str, int]:
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        path = db.with_name(db.name + suffix)
        sizes["file" + suffix] = os.stat(path).st_blocks * 512 if path.exists() else 0
    return sizes


def disk(bench: Bench, versions: int, scale: float) -> dict[str, Any]:
    """Part 3: what the store takes on disk after ``versions`` versions of a 64 MiB app changing 1 % each."""
    name = "disk"
    db = bench.daemon.dir / "state" / "checkpoints.sqlite"
    bench.daemon.mig("rm", "--force", "modular", check=False)
    bench.daemon.mig("gc", check=False)
    bench.scale = scale / 4  # 64 MiB at full scale
    try:
        bench.run_app(name, "numpy")
        for i in range(versions):
            if i:
                bench.change(name, "scattered")
            bench.checkpoint(name, f"v{i}")
    finally:
        bench.scale = scale
    stored = _stored(db)
    held = stored["chunk_bytes"] + stored["manifest_bytes"]
    on_disk = _on_disk(db)
    total = sum(on_disk.values())
    return {
        "versions": versions,
        "stored": stored,
        "on_disk_bytes": on_disk,
        "on_disk_total_bytes": total,
        "held_by_versions_bytes": held,
        "x_held": round(total / held, 3),
        "goal_bytes": int(1.1 * held + 16 * MIB),
        "within_goal": total <= 1.1 * held + 16 * MIB,
    }


def pages(runs: int) -> dict[str, Any]:
    """Part 3: SQLite page sizes for the store's chunks: 64 KiB blobs, and blobs of the store's buffer chunk size
    (65,400 bytes: one fits a 64 KiB page with its row)."""
    import shutil
    import tempfile

    import numpy as np

    noise = np.random.default_rng(1).standard_normal(2048 * 8192).tobytes()
    out: dict[str, Any] = {}
    cases = [(4096, 65536), (16384, 65536), (32768, 65536), (65536, 65536), (65536, 65400)]
    for _ in range(runs):
        for page, blob in cases:
            blobs = [noise[i : i + blob] for i in range(0, 2048 * blob, blob)]
            held = sum(map(len, blobs))
            where = tempfile.mkdtemp(prefix="migpages", dir="/tmp")
            try:
                conn = sqlite3.connect(os.path.join(where, "t.db"), isolation_level=None)
                for pragma in (f"page_size = {page}", "journal_mode = WAL", "synchronous = FULL"):
                    conn.execute(f"PRAGMA {pragma}")
                conn.execute(
                    "CREATE TABLE chunks (id INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, codec INTEGER NOT NULL, "
                    "raw_size INTEGER NOT NULL, stored_size INTEGER NOT NULL, data BLOB NOT NULL, depth INTEGER)"
                )
                started = time.perf_counter()
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO chunks (hash, codec, raw_size, stored_size, data, depth) VALUES (?, 0, ?, ?, ?, 0)",
                    ((os.urandom(32), len(b), len(b), b) for b in blobs),
                )
                conn.execute("COMMIT")
                wrote = time.perf_counter() - started
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                started = time.perf_counter()
                for (data,) in conn.execute("SELECT data FROM chunks"):
                    del data
                read = time.perf_counter() - started
                conn.close()
                file = os.path.getsize(os.path.join(where, "t.db"))
            finally:
                shutil.rmtree(where, ignore_errors=True)
            row = out.setdefault(f"{page // 1024}KiB pages, {blob}-byte blobs", {"write_MBps": 0.0, "read_MBps": 0.0})
            row["write_MBps"] = max(row["write_MBps"], round(held / wrote / 1e6, 1))
            row["read_MBps"] = max(row["read_MBps"], round(held / read / 1e6, 1))
            row["file_x_held"] = round(file / held, 3)
    return out


def section(results: dict[str, Any], key: str, fn: Any) -> None:
    try:
        results[key] = fn()
    except Exception as exc:
        results.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/4 of the state sizes and 10 versions")
    parser.add_argument("--versions", type=int, default=40, help="checkpoints per dict series")
    parser.add_argument(
        "--only", choices=("module", "dict", "pages", "disk"), action="append", help="run only these parts"
    )
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    versions = 10 if args.quick else args.versions
    parts = set(args.only or ("module", "dict", "pages", "disk"))
    began = time.perf_counter()
    results: dict[str, Any] = {"scale": scale, "load_average_before": os.getloadavg()}
    with Daemon() as daemon:
        bench = Bench(daemon, scale)
        if "module" in parts:
            section(results, "module_state", functools.partial(module_state, bench, 2, 4))
        if "dict" in parts:
            section(results, "dict_100k", functools.partial(scattered_dict, bench, versions, scale))
        if "pages" in parts:
            section(results, "pages", functools.partial(pages, 1 if args.quick else 3))
        if "disk" in parts:
            section(results, "disk", functools.partial(disk, bench, 20, scale))
    results["load_average_after"] = os.getloadavg()
    results["elapsed_s"] = round(time.perf_counter() - began, 1)
    path = write_results("lean", results)
    summarise(results)
    print(f"elapsed {results['elapsed_s']} s; wrote {path}")


def summarise(results: dict[str, Any]) -> None:
    m = results.get("module_state")
    if m:
        base = m["baseline_in_app"]
        print(
            f"module state: pickle.dumps {ms(base['pickle_dumps_s'])} ms, dill.dumps {ms(base['dill_dumps_s'])} ms "
            f"({m['dill_x_pickle_dumps']}x)"
        )
        for key in ("first", "unchanged", "new_content"):
            print(f"  pause {key:<12} {ms(m[key]['pause_s']):8.1f} ms = {m[key]['x_pickle_dumps']}x pickle.dumps")
    for how, r in results.get("dict_100k", {}).items():
        a = summary([100 * b / r["first_version_added_bytes"] for b in r["bytes_added"]])
        print(
            f"{how}: first version {r['first_version_added_bytes'] / 1024:.0f} KiB; each of {r['versions']} added "
            f"median {a['median']:.1f} %, p90 {a['p90']:.1f} %, mean {r['added_pct_of_first_version_mean']:.1f} % "
            f"of it; load newest {ms(r['load_newest_version_s'])} ms vs first {ms(r['load_first_version_s'])} ms"
        )
    for size, row in results.get("pages", {}).items():
        if isinstance(row, dict):
            print(
                f"pages {size}: write {row['write_MBps']} MB/s, read {row['read_MBps']} MB/s, file "
                f"{row['file_x_held']}x the bytes held"
            )
    d = results.get("disk")
    if d:
        print(
            f"disk after {d['versions']} versions: {d['on_disk_total_bytes'] / MIB:.1f} MiB on disk for "
            f"{d['held_by_versions_bytes'] / MIB:.1f} MiB held ({d['x_held']}x; goal "
            f"{d['goal_bytes'] / MIB:.1f} MiB); {d['on_disk_bytes']}"
        )
    for key, error in results.get("errors", {}).items():
        print(f"ERROR in {key}: {error}")


if __name__ == "__main__":
    main()
