"""Benchmark of the checkpoint core: serialise, chunk, hash, compress and store app states, beside baselines.

``python -m bench.checkpoint_core [--quick]`` prints a summary and writes bench/results/checkpoint_core.json.

Measured in one run, each figure beside its limit or baseline:

- limits of the machine: memcpy, BLAKE3 / xxh3-128 / SHA-256 on 64 KiB chunks, zstd level 1 on float data,
  SQLite blob inserts (WAL, synchronous=FULL) with 4 KiB and 64 KiB pages;
- full checkpoints of a 256 MiB NumPy state, a dict of 1M small objects and a mixed state: the pause (capture
  plus detach), chunk + hash, store, load and restore; baselines ``pickle.dumps(protocol=5)`` and
  ``dill.dumps`` written to a file (fsync), and BLAKE3 over the same bytes;
- the serialiser's fast path against dill on 100k tuples;
- incremental cost over 10 versions: 1 % of a 256 MiB array rewritten (one run, or 64 scattered runs, or 1 % of
  single elements at random), and 1 % of a 100k-entry dict (scattered entries, or one run of entries).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import pickle
import platform
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import dill
import numpy as np
import xxhash
import zstandard

import migrated
from migrated.checkpoint import Store, capture, make_draft, restore
from migrated.checkpoint._chunker import content_cuts

MIB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint_core.json"


@dataclasses.dataclass
class Point:
    """A small object, as apps hold by the thousand."""

    x: float
    y: float
    label: str


class Holder(migrated.App):
    """An app whose state is whatever the benchmark gives it."""


def app_with(**state: Any) -> Holder:
    app = Holder()
    app.__dict__.update(state)
    return app


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best(fn: Callable[[], Any], runs: int) -> tuple[float, list[float]]:
    samples = [timed(fn)[0] for _ in range(runs)]
    return min(samples), samples


def mbps(size: int, seconds: float) -> float:
    return round(size / seconds / 1e6, 1) if seconds > 0 else float("inf")


@contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="migbench", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Limits of the machine


def limits(data: memoryview) -> dict[str, Any]:
    """memcpy, hashes, zstd and SQLite inserts on ``data`` (random float64)."""
    chunks = [data[i : i + 64 * 1024] for i in range(0, data.nbytes, 64 * 1024)]
    target = np.empty(data.nbytes, dtype=np.uint8)
    source = np.frombuffer(data, dtype=np.uint8)
    out: dict[str, Any] = {"bytes": data.nbytes}
    out["memcpy_MBps"] = mbps(data.nbytes, best(lambda: np.copyto(target, source), 3)[0])
    hashes: dict[str, Callable[[memoryview], bytes]] = {
        "blake3": lambda c: blake3.blake3(c).digest(),
        "xxh3_128": xxhash.xxh3_128_digest,
        "sha256": lambda c: hashlib.sha256(c).digest(),
    }
    for name, fn in hashes.items():
        out[f"{name}_64KiB_MBps"] = mbps(data.nbytes, best(functools.partial(hash_all, fn, chunks), 3)[0])
    compressor = zstandard.ZstdCompressor(level=1)
    sample = chunks[:256]
    seconds = best(functools.partial(hash_all, compressor.compress, sample), 2)[0]
    ratio = sum(c.nbytes for c in sample) / sum(len(compressor.compress(c)) for c in sample)
    out["zstd1_float64_MBps"], out["zstd1_float64_ratio"] = (
        mbps(sum(c.nbytes for c in sample), seconds),
        round(ratio, 3),
    )
    for page in (4096, 65536):
        out[f"sqlite_insert_64KiB_page{page // 1024}K_MBps"] = max(sqlite_insert(chunks[:2048], page) for _ in range(2))
    out["fsync_write_MBps"] = fsync_write(data[: 128 * MIB])
    return out


def hash_all(fn: Callable[[memoryview], bytes], chunks: list[memoryview]) -> list[bytes]:
    return [fn(chunk) for chunk in chunks]


def sqlite_insert(chunks: list[memoryview], page_size: int) -> float:
    """MB/s of inserting ``chunks`` as blobs in one transaction (WAL, synchronous=FULL)."""
    with scratch() as where:
        conn = sqlite3.connect(where / "t.db", isolation_level=None)
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, hash BLOB UNIQUE, data BLOB)")
        rows = [(blake3.blake3(c).digest(), c) for c in chunks]

        def insert() -> None:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO c (hash, data) VALUES (?, ?)", rows)
            conn.execute("COMMIT")

        seconds = timed(insert)[0]
        conn.close()
    return mbps(sum(c.nbytes for c in chunks), seconds)


def fsync_write(data: memoryview) -> float:
    with scratch() as where:
        path = where / "f"

        def write() -> None:
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        return mbps(data.nbytes, best(write, 2)[0])


# Full checkpoints


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def full_checkpoint(name: str, app: Holder, runs: int, *, with_dill: bool = True) -> dict[str, Any]:
    """Full checkpoints of ``app`` into fresh stores, then load and restore (best of ``runs`` per phase, as
    the machine is shared); baselines on the same state."""
    samples = [one_checkpoint(name, app) for _ in range(runs)]
    result = {key: min(sample[key] for sample in samples) for key in samples[0] if key.endswith("_s")}
    result |= {key: value for key, value in samples[0].items() if not key.endswith("_s")}
    result["throughput_MBps"] = mbps(result["state_bytes"], result["total_s"])
    result["total_s_samples"] = [sample["total_s"] for sample in samples]
    with scratch() as where:
        result["baselines"] = baselines(app, where, result["state_bytes"], with_dill)
    return result


def one_checkpoint(name: str, app: Holder) -> dict[str, Any]:
    with scratch() as where, Store(where / "checkpoints.db") as store:
        result = store_one(name, app, store)
        load_s, loaded = timed(lambda: store.load(name))
        restore_s, _ = timed(lambda: restore(loaded.snapshot))
    return result | {"load_s": round(load_s, 4), "restore_s": round(restore_s, 4)}


def store_one(name: str, app: Holder, store: Store) -> dict[str, Any]:
    """Capture, detach, chunk and store ``app`` once; timings and sizes (the copies are freed on return)."""
    capture_s, snapshot = timed(lambda: capture(app, name))
    detach_s, detached = timed(snapshot.detach)
    draft_s, draft = timed(lambda: make_draft(name, detached, kind="manual"))
    put_s, info = timed(lambda: store.put_draft(draft))
    stream = snapshot.stream_bytes()
    return {
        "state_bytes": snapshot.size,
        "stream_bytes": len(stream),
        "buffer_bytes": snapshot.size - len(stream),
        "serializer": snapshot.serializer,
        "stream_chunks": len(content_cuts(stream)),
        "stored_bytes": info.bytes_added,
        "pause_s": round(capture_s + detach_s, 4),
        "capture_s": round(capture_s, 4),
        "detach_s": round(detach_s, 4),
        "chunk_hash_s": round(draft_s, 4),
        "store_s": round(put_s, 4),
        "total_s": round(capture_s + detach_s + draft_s + put_s, 4),
    }


def baselines(app: Holder, where: Path, size: int, with_dill: bool) -> dict[str, Any]:
    state = dict(vars(app))
    out: dict[str, Any] = {}
    try:
        pickle.dumps(state, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # the lambda of the mixed state
        out["pickle_fails"] = f"{type(exc).__name__}: {exc}; baselines leave out what plain pickle cannot save"
        state = {key: value for key, value in state.items() if not callable(value)}
    seconds = best(lambda: pickle.dumps(state, protocol=5), 2)[0]
    data = pickle.dumps(state, protocol=5)
    out["pickle_dumps_s"] = round(seconds, 4)
    out["pickle_dumps_to_file_s"] = round(seconds + best(lambda: write_file(where / "p.pkl", data), 2)[0], 4)
    out["pickle_bytes"] = len(data)
    out["pickle_loads_s"] = round(best(lambda: pickle.loads(data), 2)[0], 4)
    del data
    if with_dill:
        seconds, data = timed(lambda: dill.dumps(state, protocol=5))
        out["dill_dumps_to_file_s"] = round(seconds + timed(lambda: write_file(where / "d.pkl", data))[0], 4)
        del data
    flat = flatten(app)
    seconds = best(lambda: [blake3.blake3(piece).digest() for piece in flat], 2)[0]
    out["blake3_of_state_s"] = round(seconds, 4)
    out["blake3_of_state_MBps"] = mbps(size, seconds)
    return out


def flatten(app: Holder) -> list[Any]:
    snapshot = capture(app, "bench")
    return [segment.data for segment in snapshot.stream] + [buffer.data for buffer in snapshot.buffers]


def fast_path_vs_dill() -> dict[str, Any]:
    """The figure the issue quotes: a dict of 100k tuples, C pickler path against dill's pickler."""
    state = {i: (i, str(i), i * 0.5) for i in range(100_000)}
    app = app_with(table=state)
    ours = best(lambda: capture(app, "t"), 3)[0]
    plain = best(lambda: pickle.dumps(state, protocol=5), 3)[0]
    slow = best(lambda: dill.dumps(state, protocol=5), 2)[0]
    with_lambda = app_with(table=state, key=lambda x: x)
    mixed = best(lambda: capture(with_lambda, "t"), 3)[0]
    return {
        "capture_s": round(ours, 4),
        "capture_with_a_lambda_s": round(mixed, 4),
        "pickle_dumps_s": round(plain, 4),
        "dill_dumps_s": round(slow, 4),
        "dill_over_capture": round(slow / ours, 1),
    }


# Incremental cost


def incremental(name: str, state: dict[str, Any], step: Callable[[int], None], versions: int) -> dict[str, Any]:
    """Store ``versions`` versions of ``state``, calling ``step(n)`` between them; bytes added per version."""
    app = app_with(**state)
    with scratch() as where, Store(where / "checkpoints.db") as store:
        infos, pauses, seconds = [], [], []
        for n in range(versions):
            if n:
                step(n)
            pause, draft = timed(lambda: paused_part(app, name, store))
            put, info = timed(functools.partial(store.put_draft, draft))
            infos.append(info)
            pauses.append(pause)
            seconds.append(pause + put)
    added = [info.bytes_added for info in infos[1:]]
    full = infos[0].total_bytes
    return {
        "versions": versions,
        "state_bytes": full,
        "first_version_stored_bytes": infos[0].bytes_added,
        "bytes_added": added,
        "median_added_bytes": int(statistics.median(added)),
        "median_added_pct_of_state": round(100 * statistics.median(added) / full, 2),
        "median_added_pct_of_first_version": round(100 * statistics.median(added) / infos[0].bytes_added, 2),
        "median_pause_s": round(statistics.median(pauses[1:]), 4),
        "median_checkpoint_s": round(statistics.median(seconds[1:]), 4),
        "first_checkpoint_s": round(seconds[0], 4),
    }


def paused_part(app: Holder, name: str, store: Store) -> Any:
    """What an app must be paused for: capture, chunk and hash, and copying the chunks the store lacks."""
    draft = make_draft(name, capture(app, name), kind="autosave")
    return draft.detach(store.missing(draft.pieces))


def array_increments(versions: int, mib: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    array = rng.standard_normal(mib * MIB // 8)
    one_pct = len(array) // 100

    def contiguous(n: int) -> None:
        start = int(rng.integers(0, len(array) - one_pct))
        array[start : start + one_pct] = rng.standard_normal(one_pct)

    def scattered(n: int) -> None:
        run = one_pct // 64
        for start in rng.integers(0, len(array) - run, 64):
            array[start : start + run] = rng.standard_normal(run)

    def elements(n: int) -> None:
        picks = rng.integers(0, len(array), one_pct)
        array[picks] = rng.standard_normal(one_pct)

    return {
        "contiguous_1pct": incremental("arr", {"array": array}, contiguous, versions),
        "scattered_1pct_in_64_runs": incremental("arr", {"array": array}, scattered, versions),
        "random_1pct_of_elements": incremental("arr", {"array": array}, elements, 3),
    }


def dict_increments(versions: int) -> dict[str, Any]:
    rng = np.random.default_rng(8)
    table = {f"key{i}": (i, i * 0.5, f"value{i}") for i in range(100_000)}
    keys = list(table)

    def scattered(n: int) -> None:
        for i in rng.choice(len(keys), 1000, replace=False):
            table[keys[i]] = (int(i), float(rng.random()), f"changed{n}-{i}")

    def contiguous(n: int) -> None:
        start = int(rng.integers(0, len(keys) - 1000))
        for i in range(start, start + 1000):
            table[keys[i]] = (i, float(rng.random()), f"changed{n}-{i}")

    return {
        "scattered_1pct_of_entries": incremental("dict", {"table": table}, scattered, versions),
        "contiguous_1pct_of_entries": incremental("dict", {"table": table}, contiguous, versions),
    }


# States


def numpy_state(mib: int) -> Holder:
    return app_with(field=np.random.default_rng(1).standard_normal(mib * MIB // 8), step=0)


def objects_state(count: int) -> Holder:
    return app_with(table={i: (i, i * 0.5, str(i)) for i in range(count)})


def mixed_state(scale: float) -> Holder:
    n = int(200_000 * scale)
    return app_with(
        grid=np.random.default_rng(2).standard_normal(int(64 * MIB * scale) // 8),
        mask=np.zeros(int(16 * MIB * scale), dtype=np.uint8),
        points={i: Point(i * 0.1, i * 0.2, f"p{i}") for i in range(n)},
        log=[f"event {i}: something happened" for i in range(n)],
        blob=os.urandom(int(8 * MIB * scale)),
        score=lambda p: p.x * p.y,
    )


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "load_average": os.getloadavg(),
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller states and fewer versions (a smoke run)")
    args = parser.parse_args()
    scale = 1 / 16 if args.quick else 1.0
    versions = 4 if args.quick else 10
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine()}
    numpy_app = numpy_state(int(256 * scale))
    results["limits"] = limits(memoryview(numpy_app.field).cast("B"))  # type: ignore[attr-defined]
    results["full"] = {
        "numpy_256MiB": full_checkpoint("numpy", numpy_app, 2),
        "dict_1M_small_objects": full_checkpoint("objects", objects_state(int(1_000_000 * scale)), 2),
        "mixed": full_checkpoint("mixed", mixed_state(scale), 2),
    }
    del numpy_app
    results["fast_path_vs_dill_100k_tuples"] = fast_path_vs_dill()
    results["incremental_256MiB_array"] = array_increments(versions, int(256 * scale))
    results["incremental_100k_dict"] = dict_increments(versions)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    summarise(results)


def summarise(results: dict[str, Any]) -> None:
    lim = results["limits"]
    print(
        f"limits: memcpy {lim['memcpy_MBps']:.0f} MB/s, BLAKE3 {lim['blake3_64KiB_MBps']:.0f}, "
        f"xxh3-128 {lim['xxh3_128_64KiB_MBps']:.0f}, SHA-256 {lim['sha256_64KiB_MBps']:.0f}, "
        f"SQLite 64 KiB blobs {lim['sqlite_insert_64KiB_page4K_MBps']:.0f} (4 KiB pages) / "
        f"{lim['sqlite_insert_64KiB_page64K_MBps']:.0f} (64 KiB pages), fsync write {lim['fsync_write_MBps']:.0f}"
    )
    for name, r in results["full"].items():
        b = r["baselines"]
        dill_s = b.get("dill_dumps_to_file_s", float("nan"))
        print(
            f"{name}: {r['state_bytes'] / MIB:.0f} MiB ({r['serializer']}), pause {r['pause_s']:.3f} s, "
            f"checkpoint {r['total_s']:.2f} s = {r['throughput_MBps']:.0f} MB/s, "
            f"stored {r['stored_bytes'] / MIB:.0f} MiB, load {r['load_s']:.2f} s + restore {r['restore_s']:.2f} s"
            f" | pickle to file {b['pickle_dumps_to_file_s']:.2f} s, pickle.loads {b['pickle_loads_s']:.2f} s, "
            f"dill to file {dill_s:.2f} s, BLAKE3 of the state {b['blake3_of_state_s']:.3f} s"
        )
    fast = results["fast_path_vs_dill_100k_tuples"]
    print(
        f"100k tuples: capture {fast['capture_s'] * 1000:.0f} ms "
        f"(with a lambda {fast['capture_with_a_lambda_s'] * 1000:.0f}), "
        f"pickle.dumps {fast['pickle_dumps_s'] * 1000:.0f} ms, dill.dumps {fast['dill_dumps_s'] * 1000:.0f} ms"
    )
    for group in ("incremental_256MiB_array", "incremental_100k_dict"):
        for name, r in results[group].items():
            print(
                f"{group} {name}: median {r['median_added_bytes'] / MIB:.2f} MiB added per version "
                f"= {r['median_added_pct_of_state']:.2f} % of {r['state_bytes'] / MIB:.0f} MiB "
                f"({r['median_added_pct_of_first_version']:.1f} % of the first version's stored bytes), "
                f"pause {r['median_pause_s']:.3f} s, {r['median_checkpoint_s']:.3f} s each"
            )
    print(f"elapsed {results['elapsed_s']} s; results in {RESULTS}")


if __name__ == "__main__":
    main()
