"""Startup: ``mig run`` of a trivial app until its first ``step`` runs, beside bare interpreter starts.

Each round runs, in turn: ``python -c pass``, ``python -S -c pass`` (without ``site``, so without the
editable install's import hook), ``python -c "import migrated"``, ``python -c "import migrated.runtime._runner"``
(the floor of a runner's start), ``python -c "import grpc"`` (what every ``mig`` pays), ``mig status --json``
(the command line's round trip to its daemon) and ``mig run`` of an app whose first step writes ``time.time()`` to a
marker file. The app is removed between rounds.

Run: ``python -m bench.startup [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import PYTHON, Daemon, summary, write_results

APP = """\
import time

import migrated


class Mark(migrated.App):
    def step(self):
        stamp = time.time()
        path = self.args[0]
        with open(path + ".tmp", "w") as out:
            out.write(repr(stamp))
        import os

        os.rename(path + ".tmp", path)  # the marker appears whole
        self.exit(0)
"""

BASELINES: dict[str, list[str]] = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "python -S -c pass": [PYTHON, "-S", "-c", "pass"],
    "python -c 'import migrated'": [PYTHON, "-c", "import migrated"],
    "python -c 'import migrated.runtime._runner'": [PYTHON, "-c", "import migrated.runtime._runner"],
    "python -c 'import grpc'": [PYTHON, "-c", "import grpc"],
}


def _time_command(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _time_output(cmd: list[str], cwd: Path, env: dict[str, str], start: float) -> tuple[float, float]:
    """Run ``cmd``; seconds from ``start`` (a ``time.time()``) until its first output and until it exited."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = os.read(proc.stdout.fileno(), 65536)
    output = time.time()
    rest = proc.stdout.read()
    _, err = proc.communicate()
    exited = time.time()
    if proc.returncode != 0 or not first:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(first + rest + err).decode().strip()}")
    return output - start, exited - start


def _wait_marker(path: Path, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app's first step did not run within {timeout:.0f} s")
        time.sleep(0.0005)
    return float(path.read_text())


def _one_run(daemon: Daemon, app_file: Path, index: int) -> tuple[float, float, float]:
    """Seconds until ``mig run`` printed its reply, exited, and until the first step ran, from just before it."""
    name = f"mark{index}"
    marker = daemon.work / f"{name}.marker"
    cmd = [*daemon.mig_cmd, "run", str(app_file), "--name", name, "--", str(marker)]
    start = time.time()
    output, exited = _time_output(cmd, daemon.work, daemon.env, start)
    stepped = _wait_marker(marker)
    daemon.mig("rm", "--force", name)
    marker.unlink()
    return output, exited, stepped - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()

    samples: dict[str, list[float]] = {name: [] for name in BASELINES}
    samples["mig status --json: output"] = []
    samples["mig status --json: exited"] = []
    samples["mig run: output"] = []
    samples["mig run: exited"] = []
    samples["mig run: first step"] = []
    with Daemon() as daemon:
        app_file = daemon.work / "mark.py"
        app_file.write_text(APP)
        status_cmd = [*daemon.mig_cmd, "status", "--json"]
        # One warm-up round (page cache, .pyc files), not counted.
        for cmd in BASELINES.values():
            _time_command(cmd)
        _time_output(status_cmd, daemon.work, daemon.env, time.time())
        _one_run(daemon, app_file, 0)
        for index in range(1, opts.runs + 1):
            for name, cmd in BASELINES.items():
                samples[name].append(_time_command(cmd))
            output, exited = _time_output(status_cmd, daemon.work, daemon.env, time.time())
            samples["mig status --json: output"].append(output)
            samples["mig status --json: exited"].append(exited)
            output, exited, stepped = _one_run(daemon, app_file, index)
            samples["mig run: output"].append(output)
            samples["mig run: exited"].append(exited)
            samples["mig run: first step"].append(stepped)

    stats = {name: summary(values) for name, values in samples.items()}
    med = {name: stat["median"] for name, stat in stats.items()}
    derived = {
        # What `mig run` costs beyond a bare command-line round trip: spawning the runner, loading the app.
        "run output - status output (median)": med["mig run: output"] - med["mig status --json: output"],
        # The runner steps as soon as the app has loaded, while the reply travels back to the command line.
        "first step - run output (median)": med["mig run: first step"] - med["mig run: output"],
        # What the command line spends after its answer is printed (interpreter and gRPC teardown).
        "status exited - status output (median)": med["mig status --json: exited"] - med["mig status --json: output"],
        "run exited - run output (median)": med["mig run: exited"] - med["mig run: output"],
    }
    results: dict[str, Any] = {
        "runs": opts.runs,
        "derived": derived,
        "unit": "seconds",
        "stats": stats,
        "samples": samples,
    }
    path = write_results("startup", results)

    base = stats["python -c pass"]["median"]
    print(f"startup over {opts.runs} runs (median / p90, ms; x = median / python -c pass median)")
    for name, stat in stats.items():
        print(f"  {name:<45} {stat['median'] * 1e3:7.1f} / {stat['p90'] * 1e3:7.1f}   x{stat['median'] / base:5.1f}")
    for name, value in derived.items():
        print(f"  {name:<45} {value * 1e3:7.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
