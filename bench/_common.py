"""Shared helpers for the benchmarks: a daemon in a short temporary directory, statistics, JSON results."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PYTHON",
    "RESULTS_DIR",
    "Daemon",
    "machine_info",
    "mig_path",
    "percentile",
    "summary",
    "write_results",
]

PYTHON = sys.executable
RESULTS_DIR = Path(__file__).resolve().parent / "results"
START_TIMEOUT = 30.0


def mig_path() -> str:
    """The ``mig`` script next to this interpreter (the venv's), else the one on ``PATH``."""
    here = Path(PYTHON).parent / "mig"
    if here.exists():
        return str(here)
    found = shutil.which("mig")
    if found is None:
        raise RuntimeError("no mig command found; activate the venv (. .venv/bin/activate)")
    return found


def _migrated_path() -> list[str]:
    here = Path(PYTHON).parent / "migrated"
    return [str(here)] if here.exists() else [PYTHON, "-m", "migrated.daemon"]


class Daemon:
    """A ``migrated`` daemon in the foreground as a subprocess, with its own short temporary state directory.

    Use as a context manager: the daemon is shut down (killed if it does not stop) and the directory removed
    on exit, also on failure.
    """

    def __init__(self, *extra_args: str) -> None:
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))
        self.work = self.dir / "work"  # app files, markers and the apps' working directory
        self.work.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.mig_cmd = [mig_path(), "--dir", str(self.dir / "state")]
        # Benchmark daemons listen on loopback only and stay off mDNS unless a benchmark says otherwise.
        self.env = {"MIGRATED_LISTEN": "127.0.0.1:0", "MIGRATED_MDNS": "0", **os.environ, "MIG_NO_AUTOSTART": "1"}

    def __enter__(self) -> Daemon:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the daemon and wait until ``mig status`` answers."""
        state = self.dir / "state"
        self._log = open(self.dir / "daemon.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*_migrated_path(), "--dir", str(state), *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon ended with status {self.proc.returncode}: {self.log_tail()}")
            if (state / "control.sock").exists():
                result = self.mig("status", "--json", check=False)
                if result.returncode == 0:
                    self.pid = int(json.loads(result.stdout)["pid"])
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not answer within {START_TIMEOUT:.0f} s: {self.log_tail()}")

    def mig(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``mig --dir DIR ARGS...`` from the work directory and return its output."""
        result = subprocess.run(
            [*self.mig_cmd, *args],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"mig {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def mig_popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``mig --dir DIR ARGS...`` without waiting for it."""
        return subprocess.Popen([*self.mig_cmd, *args], cwd=self.work, env=self.env, **kwargs)

    def ps(self) -> list[dict[str, Any]]:
        """``mig ps --json``."""
        return list(json.loads(self.mig("ps", "--json").stdout))

    def app(self, name: str) -> dict[str, Any]:
        """One app from ``mig ps --json``."""
        for app in self.ps():
            if app["name"] == name:
                return app
        raise KeyError(name)

    def wait_state(self, name: str, states: Sequence[str], timeout: float = 30.0) -> dict[str, Any]:
        """Poll ``mig ps`` until the app is in one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            app = self.app(name)
            if app["state"] in states or time.monotonic() > deadline:
                return app
            time.sleep(0.05)

    def log_tail(self, lines: int = 10) -> str:
        """The last lines of the daemon's log."""
        try:
            text = (self.dir / "daemon.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def close(self) -> None:
        """Shut the daemon down (SIGKILL to its group if it does not stop) and remove the directory."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                self.mig("shutdown", check=False, timeout=15)
                proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, OSError):
                pass
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=10)
        if hasattr(self, "_log"):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, min and max of ``values``, with their count."""
    return {
        "n": len(values),
        "median": percentile(values, 50),
        "p90": percentile(values, 90),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except OSError:
        return ""
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
    }


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``bench/results/NAME.json`` with the machine's description; return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {"bench": name, "machine": machine_info(), **results}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
