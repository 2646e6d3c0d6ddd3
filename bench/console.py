"""Console throughput: an app prints N numbered lines as fast as it can; ``mig logs -f`` reads them end to end.

The app prints its N lines (``line 0000123 xxx...``, 40 bytes each) in its first step, then exits. A ``mig
logs -f NAME`` subprocess is started as soon as ``mig run`` returns; this process reads its stdout, times the
arrival of the last line and checks that every numbered line arrived exactly once, in order (``lost``,
``duplicated``, ``out_of_order`` and ``mangled`` must all be 0). ``console_lines`` (from ``mig ps --json``)
must be N + 1: the app's lines and the daemon's exit note.

Two ways of writing: ``print`` (one ``print`` per line; the runner line-buffers stdout, so one ``write`` per
line) and ``block`` (the same lines joined by 1000, one 40,000-byte ``sys.stdout.write`` each). Each runs on a
daemon with the default console bounds (100k lines / 16 MiB) and on one whose bounds hold every line.

Baselines from the same run: the same loops in a plain ``python`` process whose stdout is a pipe read by
``cat >/dev/null`` (python's default block buffering, and line buffering as the runner sets it), i.e. the
physical limit of the app's own printing.

Run: ``python -m bench.console [--lines N ...]``.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._common import PYTHON, Daemon, write_results

PAD = "x" * 26
LINE = "line {:07d} " + PAD + "\n"  # 40 bytes
LINE_BYTES = len(LINE.format(0))
BLOCK_LINES = 1000  # 40,000 bytes a write: not a divisor of the pipe's 64 KiB, so reads cut lines in two
BIG_BOUNDS = ("--console-lines", "100000000", "--console-bytes", str(4 * 2**30))

# The printing loops, shared verbatim by the app and the baseline writer. ``n`` and ``mode`` are given.
LOOPS = f"""\
def spew(n, mode):
    import sys

    if mode == "block":
        write = sys.stdout.write
        for start in range(0, n, {BLOCK_LINES}):
            write("".join([f"line {{i:07d}} {PAD}\\n" for i in range(start, min(n, start + {BLOCK_LINES}))]))
    else:
        for i in range(n):
            print(f"line {{i:07d}} {PAD}")
"""

APP = f"""\
import sys
import time

import migrated

{LOOPS}

class Spew(migrated.App):
    def step(self):
        n, mode, stamps = int(self.args[0]), self.args[1], self.args[2]
        t0 = time.time()
        spew(n, mode)
        sys.stdout.flush()
        t1 = time.time()
        with open(stamps, "w") as out:
            out.write(f"{{t0!r}} {{t1!r}}")
        self.exit(0)
"""

WRITER = f"""\
import sys
import time

{LOOPS}

n, mode, stamps = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if mode == "print-line-buffered":
    sys.stdout.reconfigure(line_buffering=True)
t0 = time.time()
spew(n, "block" if mode == "block" else "print")
sys.stdout.flush()
t1 = time.time()
with open(stamps, "w") as out:
    out.write(f"{{t0!r}} {{t1!r}}")
"""


def _stamps(path: Path) -> tuple[float, float]:
    t0, t1 = path.read_text().split()
    return float(t0), float(t1)


def _baseline(n: int, mode: str, work: Path) -> dict[str, Any]:
    """The same loop in a plain python process, stdout a pipe to ``cat >/dev/null``."""
    writer_file = work / "writer.py"
    writer_file.write_text(WRITER)
    stamps = work / f"baseline-{mode}-{n}.stamps"
    writer = subprocess.Popen([PYTHON, str(writer_file), str(n), mode, str(stamps)], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    reader = subprocess.Popen(["cat"], stdin=writer.stdout, stdout=subprocess.DEVNULL)
    writer.stdout.close()
    if writer.wait(timeout=120) != 0:
        raise RuntimeError(f"the baseline writer failed with status {writer.returncode}")
    reader.wait(timeout=120)
    end = time.time()
    t0, t1 = _stamps(stamps)
    return _rates(n, t0, t1, end) | {"mode": mode}


def _rates(n: int, t0: float, t1: float, end: float) -> dict[str, Any]:
    total = end - t0
    return {
        "lines": n,
        "bytes": n * LINE_BYTES,
        "print_seconds": t1 - t0,
        "end_to_end_seconds": total,
        "lines_per_s": n / total,
        "mb_per_s": n * LINE_BYTES / total / 1e6,
        "print_lines_per_s": n / (t1 - t0),
    }


READ_TIMEOUT = 60.0


class _Read:
    """What a reader's stdout gave: chunks, when the first byte and the last line came, its CPU time."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.first = 0.0
        self.seen_last = 0.0
        self.cpu = 0.0
        self.hung = False
        self.hang_detail: dict[str, Any] = {}


def _read_all(proc: subprocess.Popen[bytes], last: bytes, timeout: float, daemon_pid: int) -> _Read:
    """Read ``proc``'s stdout to EOF (or give up after ``timeout``, noting how the reader was doing)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    read = _Read()
    tail = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            read.hung = True
            watched = {"reader": psutil.Process(proc.pid), "daemon": psutil.Process(daemon_pid)}
            before = {who: p.cpu_times() for who, p in watched.items()}
            time.sleep(1.0)
            for who, p in watched.items():
                after = p.cpu_times()
                read.hang_detail[f"{who}_user_cpu_per_s"] = after.user - before[who].user
                read.hang_detail[f"{who}_system_cpu_per_s"] = after.system - before[who].system
                read.hang_detail[f"{who}_status"] = p.status()
            proc.kill()
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        now = time.time()
        if not read.first:
            read.first = now
        if not read.seen_last and last in tail + chunk:
            read.seen_last = now
        tail = chunk[-len(last) :]
        read.chunks.append(chunk)
    _, status, usage = os.wait4(proc.pid, 0)  # the reader's own CPU time, which Popen.wait() would not give
    proc.returncode = os.waitstatus_to_exitcode(status)
    read.cpu = usage.ru_utime + usage.ru_stime
    return read


_DROPPED = re.compile(r"\[migrated\] (\d+) earlier lines are no longer kept")


def _check(data: bytes, n: int) -> dict[str, Any]:
    """Every numbered line exactly once, in order, intact; the daemon's own lines counted aside."""
    seen = bytearray(n)
    duplicated = out_of_order = mangled = 0
    previous = -1
    notes: list[str] = []
    first_problems: list[str] = []
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        if line.startswith(b"[migrated]"):
            notes.append(line.decode(errors="replace"))
            continue
        try:
            index = int(line[5:12])
        except ValueError:
            index = -1
        if not 0 <= index < n or line + b"\n" != LINE.format(index).encode():
            mangled += 1
            if len(first_problems) < 5:
                first_problems.append(f"mangled: {line[:80]!r}")
            continue
        if seen[index]:
            duplicated += 1
            if len(first_problems) < 5:
                first_problems.append(f"duplicate of line {index}")
        seen[index] = 1
        if index < previous:
            out_of_order += 1
        previous = index
    lost = n - sum(seen)
    first_lost = seen.find(0) if lost else None
    announced = sum(int(m.group(1)) for note in notes if (m := _DROPPED.match(note)))
    return {
        "lost": lost,
        # Lines the console bound dropped before the reader got them, as `mig logs` announced them.
        "announced_dropped": announced,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "mangled": mangled,
        "first_lost": first_lost,
        "last_lost": seen.rfind(0) if lost else None,
        "daemon_notes": notes,
        "problems": first_problems,
    }


def _run_app(daemon: Daemon, app_file: Path, n: int, mode: str, name: str) -> dict[str, Any]:
    stamps = daemon.work / f"{name}.stamps"
    daemon_proc = psutil.Process(daemon.pid)
    cpu_before = sum(daemon_proc.cpu_times()[:2])
    daemon.mig("run", str(app_file), "--name", name, "--", str(n), mode, str(stamps))
    reader = daemon.mig_popen("logs", "-f", name, stdout=subprocess.PIPE)
    try:
        got = _read_all(reader, LINE.format(n - 1).encode(), READ_TIMEOUT, daemon.pid)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    daemon_cpu = sum(daemon_proc.cpu_times()[:2]) - cpu_before
    app = daemon.wait_state(name, ("exited", "crashed"), timeout=10)
    daemon_rss = daemon_proc.memory_info().rss
    if got.hung:
        got.hang_detail |= {"app": app, "daemon_log_tail": daemon.log_tail()}
    t0, t1 = _stamps(stamps) if stamps.exists() else (time.time(), time.time())
    data = b"".join(got.chunks)
    first, seen_last = got.first, got.seen_last
    check = _check(data, n)
    result = _rates(n, t0, t1, seen_last or time.time()) | check
    result |= {
        "reader_hung": got.hung,
        "hang_detail": got.hang_detail,
        "mode": mode,
        "app_state": app["state"],
        "console_lines": app["console_lines"],
        "console_lines_expected": n + 1,
        "reader_first_byte_after_print_start_s": first - t0,
        "reader_lines_per_s": n / (seen_last - first) if seen_last > first else None,
        # CPU seconds spent by the daemon (from just before `mig run` to the reader's end) and by `mig logs -f`:
        # beside the end-to-end seconds they show which process is the bottleneck.
        "daemon_cpu_seconds": daemon_cpu,
        "reader_cpu_seconds": got.cpu,
        "daemon_rss_bytes_with_console": daemon_rss,
        "received_bytes": len(data),
    }
    daemon.mig("rm", "--force", name)
    return result


def _issues(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What is wrong (bugs), and what the console bound dropped as announced (by design, but worth saying)."""
    bugs: list[str] = []
    if result["reader_hung"]:
        bugs.append(f"mig logs -f did not end within {READ_TIMEOUT:.0f} s: {result['hang_detail']}")
    for key in ("duplicated", "out_of_order", "mangled"):
        if result[key]:
            bugs.append(f"{result[key]} {key.replace('_', ' ')} lines")
    unannounced = result["lost"] - min(result["lost"], result["announced_dropped"])
    if unannounced:
        bugs.append(f"{unannounced} lines lost without notice")
    extra = result["console_lines"] - result["console_lines_expected"]
    if extra:
        bugs.append(
            f"the console holds {result['console_lines']} lines for {result['console_lines_expected']} written"
            f" ({extra:+d}: lines cut in two where a pipe read ended)"
        )
    notes: list[str] = []
    if result["lost"] and not unannounced:
        notes.append(
            f"{result['lost']} lines (lines {result['first_lost']}..{result['last_lost']}) dropped by the console"
            f" bound before the reader got them; mig logs announced {result['announced_dropped']}"
        )
    return bugs, notes


def _line(label: str, result: dict[str, Any]) -> str:
    text = (
        f"  {label:<44} {result['lines_per_s'] / 1e3:7.0f} klines/s {result['mb_per_s']:6.1f} MB/s"
        f"  (print loop {result['print_lines_per_s'] / 1e3:5.0f} klines/s)"
    )
    if "lost" in result:
        if result["lost"]:
            text += "  (lossy: not a throughput)"
        text += (
            f"\n  {'':<44} cpu s: daemon {result['daemon_cpu_seconds']:.2f} reader {result['reader_cpu_seconds']:.2f}"
            f" in {result['end_to_end_seconds']:.2f} s wall; lost {result['lost']}"
            f" (announced {result['announced_dropped']}) dup {result['duplicated']} ooo {result['out_of_order']}"
            f" mangled {result['mangled']} console_lines {result['console_lines']}/{result['console_lines_expected']}"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 500_000])
    opts = parser.parse_args()
    sizes: list[int] = opts.lines

    baselines: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="migb", dir="/tmp") as work:
        for n in sizes:
            for mode in ("block", "print-line-buffered", "print"):
                baselines.append(_baseline(n, mode, Path(work)))
    for bounds, args in (("default", ()), ("big", BIG_BOUNDS)):
        with Daemon(*args) as daemon:
            app_file = daemon.work / "spew.py"
            app_file.write_text(APP)
            for n in sizes:
                for mode in ("print", "block"):
                    print(f"... mig: {n} lines, {mode}, {bounds} bounds", file=sys.stderr, flush=True)
                    result = _run_app(daemon, app_file, n, mode, f"spew-{mode}-{n}")
                    runs.append(result | {"console_bounds": bounds, "daemon_args": list(args)})

    for run in runs:
        run["bugs"], run["notes"] = _issues(run)
    results = {
        "line_bytes": LINE_BYTES,
        "block_bytes": BLOCK_LINES * LINE_BYTES,
        "baselines": baselines,
        "runs": runs,
        "all_ok": not any(run["bugs"] for run in runs),
    }
    path = write_results("console", results)

    print(f"console throughput, {LINE_BYTES}-byte lines, end to end (from the first print to the last line read)")
    for base in baselines:
        print(_line(f"baseline: {base['lines']} lines, {base['mode']} | cat", base))
    for run in runs:
        print(_line(f"mig: {run['lines']} lines, {run['mode']}, {run['console_bounds']} bounds", run))
    for run in runs:
        label = f"{run['lines']} lines, {run['mode']}, {run['console_bounds']} bounds"
        for bug in run["bugs"]:
            print(f"PROBLEM ({label}): {bug}")
        for note in run["notes"]:
            print(f"note ({label}): {note}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
