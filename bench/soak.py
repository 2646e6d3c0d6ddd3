"""A soak run: many random moves among three hosts while daemons, runners and links fail at random moments.

Not a benchmark and not a test (pytest collects only ``tests/``): a long run that counts what went wrong. Three
hosts of the namespace test bed (``tests.netbed``, needs root), paired both ways, mDNS off. Three apps, one
started at each host (its *home*), with 64 KiB, 1 MiB and 8 MiB of random state of which 4 KiB change every half
second (so each move and autosave has chunks to send), autosaved every ``--autosave`` seconds. Each round moves
one app from the host that runs it to another (``mig move``, issued there) and, at random moments within 0.6 s of
the move's start, maybe kills -9 a random daemon (started again up to 3 s later), maybe kills -9 the runner
process of a random app, and maybe pulls a random host's cable for 0.5 to 8 s (``Host.cut``: eth0 and its bridge
port down, or only the bridge port, so packets vanish silently). Then it lets the daemons settle: no app moving,
starting, stopping or being brought back after a crash; the apps that a host lists as its own and closed (a
killed daemon leaves them so), or crashed and given up on, are opened with ``mig open`` there, as their user would.

Everything is observed through the command line: ``mig ps --json`` on every live daemon (asked of all at once: a
*look*), ``mig logs NAME`` at the app's home, and the runner processes of each daemon (``runner_pids``). The
daemons' state files are never read.

What counts as a failure (each is listed in the JSON with the round's description, what happened in it, and the
daemons' log tails):

- **lost**: once a round has settled (30 s allowed), an app runs on no host. It is then opened where a host lists
  it at the highest epoch, so the run goes on with every app; ``apps_lost`` counts the apps that were ever lost,
  ``apps_lost_at_end`` those that run nowhere after the final settle.
- **doubled**: a look sees an app running on two hosts (each says it runs the app itself) and a second look at
  once sees it twice again. A double that the second look no longer sees is an *unconfirmed double* warning: the
  ``mig ps`` calls of one look are not one instant, so a hand-off between them shows the app on both sides. Also
  a double in the console: two tokens (below) whose lines were printed at the same time, by the app's own clock,
  are two copies that ran at once, even while ``mig ps`` listed one of them as moving. And a *hidden runner*: once
  a round has settled (10 s allowed), a daemon has a runner process that runs no app it lists as running
  (each such process is reported once; ``hidden_runners`` counts them).
- **move did not end**: a ``mig move`` still running ``--move-bound`` seconds (60) after it was started. Every
  live daemon is then asked to log its tasks (SIGUSR1) and the logs are kept.
- **console**: each app prints one line per step, ``soak TOKEN PARENT PARENT_BASE BASE TICK TIME``: TOKEN is
  drawn afresh in ``start`` and in ``on_restore`` (every thaw: a move, a crash recovery, an open), PARENT is the
  token the thawed state carried (the incarnation that took that checkpoint) and PARENT_BASE the tick that one
  was thawed at, BASE the tick this one was thawed at, TICK the counter kept in the state, TIME ``time.time()``.
  At the home (``mig logs NAME``):

  - *repeated*: a (TOKEN, TICK) pair appears twice. An app brought back from a checkpoint repeats the ticks after
    it, but under a new token: that is not a repeat.
  - *out of order*: within one token a tick comes after a higher one. *Mangled*: a line that starts like a soak
    line but is not one.
  - *lost*: a tick that a token is known to have printed is not there. Known printed are the ticks after its BASE
    up to its highest tick at home (a later line arrived) and up to the BASE of every token thawed from its state
    (that checkpoint was taken after the step that printed the tick); for a token with no line at home, the ticks
    from its PARENT_BASE, as its children say. Lines the console announces as dropped (``[migrated] N console
    lines were lost`` past a host's console bounds, ``N earlier lines are no longer kept`` past the home's) are
    deducted: README allows only those. Missing lines are waited for up to 30 s at the end (a host cut off from
    home sends them later); each run of them is reported with the round in which it was first missed.
  - *no line reaches home*: once a round has settled, an app runs but none of the lines its copy printed in the
    last 2 s has reached home within 15 s (reported once until its lines flow again).

  Not counted: what an incarnation printed after its last checkpoint when its runner or its daemon was killed.
  Nothing shows those steps ran; the app rolled back and printed those ticks again under its next token.

Warnings, not failures: unconfirmed doubles, a refused ``mig move`` whose stderr is not one sentence, a daemon log
with a traceback. Exit status 1 when there is any failure, 0 otherwise. Results (default
``bench/results/soak.json``): the seed, moves attempted, succeeded, refused and not ended, kills of daemons and
runners, link cuts, apps lost and doubled, console lines checked, repeated and lost, per app and overall, the
elapsed time, every round in a line, every failure and warning; the daemons' whole logs and each app's console at
home are kept beside it (``soak-logs/``).

Run: ``.venv/bin/python -m bench.soak [--moves 200] [--seed S] [--out FILE] [--autosave 3] [--move-bound 60]``
(root). The seed is printed first; the same seed draws the same rounds, faults and delays (what the daemons do
meanwhile depends on timing, so outcomes can differ).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._common import RESULTS_DIR, machine_info
from tests.helpers import RUNNER_MODULE, Background, pair, runner_pids, wait_until
from tests.netbed import BedDaemon as FaultDaemon
from tests.netbed import NetBed, NetBedError, netbed_available, start_bed

APP = """
import os
import time

import migrated

CHANGE = 4096


class Soak(migrated.App):
    def start(self):
        self.n = self.base = 0
        self.blob = bytearray(os.urandom(int(self.args[0])))
        self.token = "-"
        self.incarnate()

    def on_restore(self):
        self.incarnate()

    def incarnate(self):
        self.parent, self.parent_base = self.token, self.base
        self.token, self.base = os.urandom(4).hex(), self.n

    def step(self):
        self.n += 1
        if self.n % 5 == 0:  # a little new state between checkpoints, so each move and autosave sends chunks
            at = (self.n * 7919 * CHANGE) % (len(self.blob) - CHANGE + 1)
            self.blob[at : at + CHANGE] = os.urandom(CHANGE)
        print(f"soak {self.token} {self.parent} {self.parent_base} {self.base} {self.n} {time.time():.3f}", flush=True)
        return 0.1
"""

APPS = {"a0": ("h0", 64 << 10), "a1": ("h1", 1 << 20), "a2": ("h2", 8 << 20)}  # name: (home, bytes of state)
FAULT_WINDOW = 0.6  # seconds after a move's start in which its faults fall
P_KILL_DAEMON = 0.3
P_KILL_RUNNER = 0.25
P_CUT = 0.25
MAX_DOWN = 3.0  # longest time a killed daemon stays dead
CUT_TIME = (0.5, 8.0)
CALM_TIMEOUT = 60.0
RUN_TIMEOUT = 30.0
RUNNER_TIMEOUT = 10.0
CONSOLE_TIMEOUT = 30.0
FRESH = 2.0  # seconds: the home holds a line printed this recently, once a round has settled
FRESH_TIMEOUT = 15.0
LOOK_INTERVAL = 0.3
TAIL = 6000  # characters of each daemon's log kept with a failure
BUSY = ("moving", "starting", "stopping")
PER_APP = (
    "moves_attempted",
    "moves_succeeded",
    "moves_refused",
    "moves_timed_out",
    "runner_kills",
    "opens",
    "doubled_looks",
)

LINE = re.compile(r"soak ([0-9a-f]{8}) (-|[0-9a-f]{8}) (\d+) (\d+) (\d+) (\d+\.\d+)")
ANNOUNCED = re.compile(r"\[migrated\] (\d+) (?:console lines were lost|earlier lines are no longer kept)")

Look = dict[str, dict[str, dict[str, Any]]]  # host: {app name: its row in that host's mig ps --json}


# -- the console check (no I/O)


@dataclass
class Incarnation:
    """The lines of one token at home, and where it came from."""

    parent: str
    parent_base: int
    base: int
    ticks: list[int] = field(default_factory=list)
    first: float = float("inf")  # when it printed its first and last line at home (the app's own clock)
    last: float = 0.0


@dataclass
class ConsoleCheck:
    """What one app's console at home shows."""

    lines: int = 0
    incarnations: dict[str, Incarnation] = field(default_factory=dict)
    repeated: set[tuple[str, int]] = field(default_factory=set)
    out_of_order: set[tuple[str, int]] = field(default_factory=set)
    mangled: set[str] = field(default_factory=set)
    missing: set[tuple[str, int]] = field(default_factory=set)
    overlaps: set[tuple[str, str]] = field(default_factory=set)
    announced: int = 0

    @property
    def lost(self) -> int:
        """Missing lines beyond those the console announced as dropped."""
        return max(0, len(self.missing) - self.announced)

    @property
    def newest(self) -> float:
        """When the newest line at home was printed."""
        return max((inc.last for inc in self.incarnations.values()), default=0.0)


def check_console(text: str) -> ConsoleCheck:
    """Parse ``mig logs`` of a soak app and find its repeated, disordered, mangled, missing and simultaneous
    lines."""
    check = ConsoleCheck()
    for line in text.splitlines():
        if announced := ANNOUNCED.search(line):
            check.announced += int(announced.group(1))
        elif line.startswith("soak "):
            _take(check, line)
    check.missing = _missing(check.incarnations)
    check.overlaps = _overlaps(check.incarnations)
    return check


def _take(check: ConsoleCheck, line: str) -> None:
    match = LINE.fullmatch(line)
    if match is None:
        check.mangled.add(line)
        return
    token, parent, tick, printed = match.group(1), match.group(2), int(match.group(5)), float(match.group(6))
    parent_base, base = int(match.group(3)), int(match.group(4))
    inc = check.incarnations.setdefault(token, Incarnation(parent, parent_base, base))
    if (inc.parent, inc.parent_base, inc.base) != (parent, parent_base, base):
        check.mangled.add(line)
        return
    check.lines += 1
    if tick in inc.ticks:
        check.repeated.add((token, tick))
    elif inc.ticks and tick < inc.ticks[-1]:
        check.out_of_order.add((token, tick))
    inc.ticks.append(tick)
    inc.first, inc.last = min(inc.first, printed), max(inc.last, printed)


def _missing(incarnations: dict[str, Incarnation]) -> set[tuple[str, int]]:
    """The (token, tick) pairs known to have been printed that are not at home: for each token, the ticks after
    its base up to its highest tick at home and up to the base of every token thawed from its state."""
    bases = {token: inc.base for token, inc in incarnations.items()}
    proven = {token: max(inc.ticks) for token, inc in incarnations.items()}
    for inc in incarnations.values():
        if inc.parent != "-":
            bases.setdefault(inc.parent, inc.parent_base)  # a token with no line at home
            proven[inc.parent] = max(proven.get(inc.parent, 0), inc.base)
    seen = {(token, tick) for token, inc in incarnations.items() for tick in inc.ticks}
    every = {(token, tick) for token, upto in proven.items() for tick in range(bases[token] + 1, upto + 1)}
    return every - seen


def _overlaps(incarnations: dict[str, Incarnation]) -> set[tuple[str, str]]:
    """Pairs of tokens that printed at the same time: two copies of the app ran at once."""
    spans = sorted((inc.first, inc.last, token) for token, inc in incarnations.items())
    found = set()
    for i, (_, last, token) in enumerate(spans):
        found |= {(token, other) for first, _, other in spans[i + 1 :] if first < last}
    return found


def ranges(ticks: set[int]) -> list[tuple[int, int]]:
    """Sorted ticks as (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for tick in sorted(ticks):
        if runs and runs[-1][1] == tick - 1:
            runs[-1] = (runs[-1][0], tick)
        else:
            runs.append((tick, tick))
    return runs


# -- a round's random draws


@dataclass
class Plan:
    """What a round does; every field is drawn whether used or not, so one seed gives one sequence of rounds."""

    app: float
    target: int
    kill_daemon: tuple[float, int, float] | None  # (at, host index, seconds down)
    kill_runner: tuple[float, int] | None  # (at, app index)
    cut: tuple[float, int, float, bool] | None  # (at, host index, seconds, carrier only)

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        """The next round's plan."""
        app, target = rng.random(), rng.randrange(2)
        kill = (rng.uniform(0, FAULT_WINDOW), rng.randrange(3), rng.uniform(0, MAX_DOWN))
        runner = (rng.uniform(0, FAULT_WINDOW), rng.randrange(len(APPS)))
        cut = (rng.uniform(0, FAULT_WINDOW), rng.randrange(3), rng.uniform(*CUT_TIME), rng.random() < 0.5)
        return cls(
            app,
            target,
            kill if rng.random() < P_KILL_DAEMON else None,
            runner if rng.random() < P_KILL_RUNNER else None,
            cut if rng.random() < P_CUT else None,
        )


def _kill_runner(pid: int | None) -> bool:
    """kill -9 of ``pid`` if it is a runner process; whether it was."""
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        if pid and RUNNER_MODULE in " ".join(psutil.Process(pid).cmdline()):
            os.kill(pid, signal.SIGKILL)
            return True
    return False


def running_on(look: Look, name: str) -> list[str]:
    """The hosts that say they run ``name`` themselves."""
    return [host for host, apps in look.items() if _runs_here(apps.get(name), host)]


def _runs_here(app: dict[str, Any] | None, host: str) -> bool:
    return app is not None and app["state"] == "running" and app["host"] == host


def owners(look: Look, name: str) -> list[str]:
    """The hosts that list ``name`` as their own (running or not), the highest epoch and version first."""
    own = [(apps[name]["epoch"], apps[name]["version"] or 0, host) for host, apps in look.items() if name in apps]
    return [host for *_, host in sorted(own, reverse=True) if look[host][name]["host"] == host]


def _given_up(app: dict[str, Any]) -> bool:
    """Whether crash recovery stopped trying (and said so) for a crashed app."""
    return app["state"] == "crashed" and "not brought back" in (app["reason"] or "")


def table(look: Look) -> str:
    """A look, one line per app and host, for a failure's details."""
    return "\n".join(
        f"{host}: {app['name']} {app['state']} host={app['host']} home={app['home']} epoch={app['epoch']} "
        f"version={app['version']} pid={app['pid']} reason={app['reason']}"
        for host, apps in sorted(look.items())
        for app in apps.values()
    )


# -- the run


class Move(Background):
    """``mig move`` in the background, with the time it ended."""

    def __init__(self, daemon: FaultDaemon, name: str, host: str) -> None:
        super().__init__(daemon, "move", name, host)
        self.started = time.monotonic()
        self.ended = 0.0
        threading.Thread(target=self._time, daemon=True).start()

    def _time(self) -> None:
        self.proc.wait()
        self.ended = time.monotonic()

    def took(self) -> float:
        """Seconds from its start to its end (or until now)."""
        return (self.ended or time.monotonic()) - self.started


class Soak:
    """One soak run over a started, paired bed: rounds, looks, settling, counts and failures."""

    def __init__(self, bed: NetBed, daemons: list[FaultDaemon], rng: random.Random, args: argparse.Namespace) -> None:
        self.bed = bed
        self.daemons = {daemon.host.name: daemon for daemon in daemons}
        self.rng = rng
        self.args = args
        self.counts: Counter[str] = Counter()
        self.per_app = {name: Counter(dict.fromkeys(PER_APP, 0)) for name in APPS}
        self.failures: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.round: dict[str, Any] = {"round": 0, "what": "the start", "events": []}
        self.cut_hosts: set[str] = set()
        self.doubled: set[str] = set()
        self.doubled_rounds: set[tuple[str, Any]] = set()
        self.lost: set[str] = set()  # apps that ran nowhere once a round had settled
        self.console_text: dict[str, str] = {}
        self.hidden: set[int] = set()  # runner pids found running no listed app (reported once)
        self.quiet: set[str] = set()  # apps whose running copy's lines do not reach home (reported once)
        self.console: dict[str, ConsoleCheck] = {}
        self.first_missed: dict[tuple[str, str, int], dict[str, Any]] = {}  # (app, token, tick): the round
        self.missed_logs: dict[tuple[str, str], dict[str, str]] = {}  # (app, token): log tails when first missed
        self.reported: set[tuple[str, str, str]] = set()  # (app, kind, key) of console failures already listed

    # -- records

    def logs(self) -> dict[str, str]:
        """The tail of each daemon's log."""
        return {host: daemon.stderr_log()[-TAIL:] for host, daemon in self.daemons.items()}

    def fail(self, kind: str, detail: str) -> None:
        """Record a failure of the current round."""
        print(f"  FAILURE ({kind}) in {self.round['what']}: {detail.partition(chr(10))[0]}", flush=True)
        self.failures.append({"kind": kind, **self._where(), "detail": detail, "logs": self.logs()})

    def warn(self, kind: str, detail: str) -> None:
        """Record something doubtful that is not counted as a failure."""
        print(f"  warning ({kind}): {detail.partition(chr(10))[0]}", flush=True)
        self.warnings.append({"kind": kind, **self._where(), "detail": detail})

    def _where(self) -> dict[str, Any]:
        return {"round": self.round["round"], "what": self.round["what"], "events": list(self.round["events"])}

    def event(self, text: str) -> None:
        """Note what happened in the current round."""
        self.round["events"].append(text)

    # -- looking

    def _ps(self, daemon: FaultDaemon) -> dict[str, dict[str, Any]] | None:
        """``mig ps --json`` of a daemon; None when it is dead, a failure when it is alive and does not answer."""
        result = None
        for _ in range(2):
            with contextlib.suppress(subprocess.TimeoutExpired):
                result = daemon.mig("ps", "--json", check=None, timeout=30)
            if result is not None and result.returncode == 0:
                return {app["name"]: app for app in json.loads(result.stdout)}
            if not daemon.alive():
                return None
            time.sleep(1)
        self.fail("observe", f"mig ps on {daemon.host.name} failed: {result.stderr if result else 'no answer'}")
        return None

    def gather(self) -> Look:
        """Every live daemon's ``mig ps --json``, asked of all at once."""
        live = [daemon for daemon in self.daemons.values() if daemon.alive()]
        with ThreadPoolExecutor(max(1, len(live))) as pool:
            rows = dict(zip([daemon.host.name for daemon in live], pool.map(self._ps, live), strict=True))
        return {host: apps for host, apps in rows.items() if apps is not None}

    def look(self) -> Look:
        """A look, checked for apps that run twice."""
        look = self.gather()
        for name in APPS:
            if len(running_on(look, name)) > 1:
                self.doubles(name, look)
        return look

    def doubles(self, name: str, first: Look) -> None:
        """Look again at once: two copies again are a double; else a warning (the first look was not one instant)."""
        again = self.gather()
        detail = f"{name} runs on {running_on(first, name)}, then on {running_on(again, name)}\n{table(first)}"
        if len(running_on(again, name)) < 2:
            self.warn("unconfirmed double", f"{detail}\nthen:\n{table(again)}")
            return
        self.counts["doubled_looks"] += 1
        self.per_app[name]["doubled_looks"] += 1
        if (name, self.round["round"]) not in self.doubled_rounds:  # one failure per app and round
            self.fail("doubled", f"{detail}\nthen:\n{table(again)}")
        self.doubled.add(name)
        self.doubled_rounds.add((name, self.round["round"]))

    # -- faults

    def kill_daemon(self, host: str) -> str:
        """kill -9 of a daemon; its runners must die with it."""
        self.counts["daemon_kills"] += 1
        try:
            self.daemons[host].kill9()
        except AssertionError as exc:
            self.fail("runner outlived its daemon", str(exc))
        return ""

    def revive(self, host: str) -> str:
        """Start a killed daemon again on its state directory."""
        for attempt in range(2):
            try:
                self.daemons[host].revive()
            except NetBedError as exc:
                self.fail("restart", f"{host} did not start again (attempt {attempt + 1}): {exc}")
            else:
                return ""
        return ": it did not start"

    def kill_runner(self, name: str, pid: int | None) -> str:
        """kill -9 of the runner that ran ``name`` when the round began, else of the one that runs it now."""
        if _kill_runner(pid):
            return self.runner_killed(name, pid)
        look = self.gather()
        now = next((look[host][name]["pid"] for host in running_on(look, name)), None)
        if _kill_runner(now):
            return self.runner_killed(name, now, f"; pid {pid} had ended")
        self.counts["runner_kills_missed"] += 1
        return f": no runner to kill (pid {pid} had ended, and {name} runs nowhere now)"

    def runner_killed(self, name: str, pid: int | None, why: str = "") -> str:
        self.counts["runner_kills"] += 1
        self.per_app[name]["runner_kills"] += 1
        return f" (pid {pid}{why})"

    def cut(self, host: str, carrier_only: bool) -> str:
        """Pull a host's cable."""
        self.bed[int(host[1:])].cut(carrier_only=carrier_only)
        self.cut_hosts.add(host)
        self.counts["link_cuts"] += 1
        return ""

    def heal(self, host: str) -> str:
        """Plug a host's cable back in."""
        self.bed[int(host[1:])].heal()
        self.cut_hosts.discard(host)
        return ""

    def repair(self) -> None:
        """Heal every cut link and start every dead daemon (at the end, or after an error)."""
        for host in list(self.cut_hosts):
            self.heal(host)
        for host, daemon in self.daemons.items():
            if not daemon.alive():
                self.revive(host)

    # -- a round

    def choose(self, plan: Plan, look: Look) -> tuple[str, str, str] | None:
        """The app to move (the drawn one, else the next that runs once), where it runs and where it goes."""
        names = list(APPS)
        first = int(plan.app * len(names))
        for name in names[first:] + names[:first]:
            hosts = running_on(look, name)
            if len(hosts) == 1:
                others = [host for host in self.daemons if host != hosts[0]]
                return name, hosts[0], others[plan.target]
        return None

    def timeline(self, plan: Plan, look: Look) -> list[tuple[float, str, Callable[[], str]]]:
        """The round's faults, each with its time after the move's start."""
        hosts = list(self.daemons)
        events: list[tuple[float, str, Callable[[], str]]] = []
        if plan.kill_daemon:
            at, index, down = plan.kill_daemon
            host = hosts[index]
            events.append((at, f"kill -9 of {host}", functools.partial(self.kill_daemon, host)))
            events.append((at + down, f"{host} started again", functools.partial(self.revive, host)))
        if plan.kill_runner:
            at, index = plan.kill_runner
            name = list(APPS)[index]
            pid = next((look[host][name]["pid"] for host in running_on(look, name)), None)
            events.append((at, f"kill -9 of {name}'s runner", functools.partial(self.kill_runner, name, pid)))
        if plan.cut:
            at, index, length, carrier_only = plan.cut
            host = hosts[index]
            how = "bridge port down" if carrier_only else "eth0 and bridge port down"
            events.append((at, f"{host}'s link cut ({how})", functools.partial(self.cut, host, carrier_only)))
            events.append((at + length, f"{host}'s link back", functools.partial(self.heal, host)))
        return sorted(events, key=lambda item: item[0])

    def play(self, index: int) -> None:
        """One round: a move, its faults, the move's end, settling, the console."""
        plan = Plan.draw(self.rng)
        look = self.look()
        chosen = self.choose(plan, look)
        events = self.timeline(plan, look)
        if chosen is None:
            self.begin(index, "no app runs once: nothing to move", events)
            self.faults(events, time.monotonic())
        else:
            name, source, target = chosen
            self.begin(index, f"{name} {source} -> {target}", events)
            move = Move(self.daemons[source], name, target)
            self.faults(events, move.started)
            self.finish(move, name)
        self.settle()
        self.check_consoles()
        print(f"{self.round['what']}: {'; '.join(self.round['events'])}", flush=True)

    def begin(self, index: int, move: str, events: list[tuple[float, str, Callable[[], str]]]) -> None:
        faults = ", ".join(f"{label} at {at:.2f} s" for at, label, _ in events)
        self.round = {
            "round": index,
            "what": f"round {index}: {move}" + (f"; {faults}" if faults else ""),
            "events": [],
        }
        self.rounds.append(self.round)

    def faults(self, events: list[tuple[float, str, Callable[[], str]]], started: float) -> None:
        """Carry out the faults at their times; look after each that the next does not follow closely."""
        for i, (at, label, action) in enumerate(events):
            time.sleep(max(0.0, started + at - time.monotonic()))
            outcome = action()
            self.event(f"{label} at {time.monotonic() - started:.2f} s{outcome}")
            if i + 1 == len(events) or events[i + 1][0] - at > 1.0:
                self.look()

    def finish(self, move: Move, name: str) -> None:
        """Wait for ``mig move`` within the bound; count how it ended."""
        self.counts["moves_attempted"] += 1
        self.per_app[name]["moves_attempted"] += 1
        try:
            code = move.wait(max(0.1, move.started + self.args.move_bound - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.timed_out(move, name)
            return
        outcome = "moves_succeeded" if code == 0 else "moves_refused"
        self.counts[outcome] += 1
        self.per_app[name][outcome] += 1
        said = (move.out.strip().splitlines() or [""])[-1] if code == 0 else move.err.strip()
        if code != 0 and (len(move.err.splitlines()) != 1 or not move.err.startswith("mig: ")):
            self.warn("refusal not one sentence", f"mig move {name} exited {code}: {move.err!r}")
        self.event(f"mig move exited {code} after {move.took():.1f} s: {said}")

    def timed_out(self, move: Move, name: str) -> None:
        self.counts["moves_timed_out"] += 1
        self.per_app[name]["moves_timed_out"] += 1
        for daemon in self.daemons.values():
            if daemon.alive():
                daemon.kill(signal.SIGUSR1)  # each logs where its tasks wait
        time.sleep(1)
        self.event(f"mig move did not end within {self.args.move_bound:.0f} s")
        self.fail("move did not end", f"mig move {name} still ran after {self.args.move_bound:.0f} s: {move.out!r}")
        move.kill()

    # -- settling

    def wait(self, kind: str, what: str, predicate: Callable[[], str], timeout: float) -> bool:
        """Poll ``predicate`` (it returns what is still wrong, "" when nothing) until "" or a failure."""
        last = ""

        def done() -> bool:
            nonlocal last
            last = predicate()
            return not last

        try:
            wait_until(done, timeout, interval=LOOK_INTERVAL, what=what)
        except AssertionError:
            self.fail(kind, f"{what} within {timeout:.0f} s: {last}")
            return False
        return True

    def busy(self) -> str:
        """What is still under way: moves, starts and stops, crash recoveries, daemons that do not answer."""
        look = self.look()
        busy = [
            f"{host}: {name} {app['state']}"
            for host, apps in look.items()
            for name, app in apps.items()
            if app["state"] in BUSY or (app["state"] == "crashed" and not _given_up(app))
        ]
        missing = [host for host in self.daemons if host not in look]
        return "; ".join(busy + [f"{host} does not answer" for host in missing])

    def not_once(self) -> str:
        """The apps that do not run exactly once."""
        look = self.look()
        wrong = {name: running_on(look, name) for name in APPS}
        return "; ".join(f"{name} runs on {hosts}" for name, hosts in wrong.items() if len(hosts) != 1)

    def extra_runners(self, daemon: FaultDaemon) -> tuple[set[int], list[int]]:
        """The runner processes of ``daemon`` that run no app it lists as running, and the pids it lists."""
        listed = [app["pid"] for app in (self._ps(daemon) or {}).values() if _runs_here(app, daemon.host.name)]
        return runner_pids(daemon.pid) - set(listed), listed

    def check_runners(self, daemon: FaultDaemon) -> None:
        """Wait until ``daemon`` has no runner beyond the apps it lists as running; a new one left is a failure."""
        extra: set[int] = set()
        listed: list[int] = []

        def none_new() -> bool:
            nonlocal extra, listed
            extra, listed = self.extra_runners(daemon)
            return not extra - self.hidden

        with contextlib.suppress(AssertionError):
            wait_until(none_new, RUNNER_TIMEOUT, interval=LOOK_INTERVAL)
        if extra - self.hidden:
            self.hidden |= extra
            self.fail("hidden runner", f"{daemon.host.name} runs runners {sorted(extra)} beyond its apps {listed}")

    def settle(self, calm: float = CALM_TIMEOUT, once: float = RUN_TIMEOUT) -> None:
        """Wait until nothing is under way, open what a killed daemon left closed, then every app runs once."""
        self.wait("not settled", "every move and recovery to end", self.busy, calm)
        self.open_leftovers()
        if not self.wait("not settled", "every app to run exactly once", self.not_once, once):
            look = self.gather()
            self.event(f"not settled:\n{table(look)}")
            if self.rescue(look):
                self.wait("not settled", "every app to run exactly once after mig open", self.not_once, once)
        for daemon in self.daemons.values():
            if daemon.alive():
                self.check_runners(daemon)

    def rescue(self, look: Look) -> bool:
        """``mig open`` each app that runs nowhere, so the soak goes on with every app; whether any was opened."""
        opened = False
        for name in APPS:
            if not running_on(look, name):
                self.lost.add(name)
                opened = any(self.reopen(name, host) for host in owners(look, name)) or opened
        return opened

    def reopen(self, name: str, host: str) -> bool:
        """``mig open`` on ``host`` of an app that runs nowhere; whether it worked."""
        result = self.daemons[host].mig("open", name, check=None, timeout=60)
        said = result.stdout.strip() or result.stderr.strip()
        self.event(f"{name} runs nowhere; mig open {name} on {host}: exit {result.returncode} {said}")
        self.counts["rescues"] += result.returncode == 0
        return result.returncode == 0

    def open_leftovers(self) -> None:
        """``mig open`` each app a host lists as its own and closed, or crashed and given up on."""
        for host, apps in self.look().items():
            for name, app in apps.items():
                if app["host"] == host and (app["state"] == "closed" or _given_up(app)):
                    result = self.daemons[host].mig("open", name, check=None, timeout=60)
                    self.counts["opens"] += 1
                    self.per_app[name]["opens"] += 1
                    said = result.stdout.strip() or result.stderr.strip()
                    self.event(
                        f"mig open {name} on {host} ({app['state']}: {app['reason']}): exit {result.returncode} {said}"
                    )

    # -- the console

    def read_console(self, name: str) -> ConsoleCheck | None:
        """``mig logs NAME`` at the app's home, checked."""
        home = self.daemons[APPS[name][0]]
        try:
            result = home.mig("logs", name, check=None, timeout=120)
        except subprocess.TimeoutExpired:
            result = None
        if result is None or result.returncode != 0:
            self.fail(
                "observe", f"mig logs {name} on {home.host.name} failed: {result.stderr if result else 'no answer'}"
            )
            return None
        self.console_text[name] = result.stdout + result.stderr
        return check_console(self.console_text[name])

    def fresh_console(self, name: str) -> ConsoleCheck | None:
        """The app's console at home, once it holds a line printed in the last FRESH seconds (or after
        FRESH_TIMEOUT, with a failure: the copy that runs prints, but its lines do not reach home)."""
        deadline = time.monotonic() + FRESH_TIMEOUT
        while True:
            asked = time.time()
            check = self.read_console(name)
            if check is None or check.newest > asked - FRESH or name in self.quiet:
                return check
            if time.monotonic() > deadline:
                self.quiet.add(name)
                self.fail(
                    "console: no line reaches home",
                    f"{name} runs, but the newest of its lines at home was printed {asked - check.newest:.1f} s ago "
                    f"(after waiting {FRESH_TIMEOUT:.0f} s for a newer one)",
                )
                return check
            time.sleep(1)

    def check_consoles(self) -> None:
        """Check each app's console at home: new repeats, disorder and mangling fail this round; missed lines
        are noted with this round and judged at the end."""
        look = self.gather()
        for name in APPS:
            if not running_on(look, name):
                continue
            check = self.fresh_console(name)
            if check is None:
                continue
            if check.newest > time.time() - FRESH - 1:
                self.quiet.discard(name)
            self.console[name] = check
            self.report(name, "repeated line", check.repeated)
            self.report(name, "line out of order", check.out_of_order)
            self.report(name, "mangled line", check.mangled)
            self.overlapping(name, check)
            for token, tick in check.missing - {key[1:] for key in self.first_missed if key[0] == name}:
                self.first_missed[(name, token, tick)] = self._where()
                if (name, token) not in self.missed_logs:
                    self.missed_logs[(name, token)] = self.logs()

    def report(self, name: str, kind: str, found: set[Any]) -> None:
        new = sorted(str(key) for key in found if (name, kind, str(key)) not in self.reported)
        if new:
            self.reported |= {(name, kind, key) for key in new}
            self.fail(f"console: {kind}", f"{name}: {len(new)} new, e.g. {new[:10]}")

    def overlapping(self, name: str, check: ConsoleCheck) -> None:
        """A double seen in the console: two tokens that printed at the same time."""
        for one, other in sorted(check.overlaps):
            if (name, "overlap", f"{one} {other}") in self.reported:
                continue
            self.reported.add((name, "overlap", f"{one} {other}"))
            self.doubled.add(name)
            a, b = check.incarnations[one], check.incarnations[other]
            self.fail(
                "doubled (console)",
                f"{name}: {one} printed ticks {a.ticks[0]}-{a.ticks[-1]} from {a.first:.3f} to {a.last:.3f}, and "
                f"{other} (thawed from {b.parent} at {b.base}) ticks {b.ticks[0]}-{b.ticks[-1]} from {b.first:.3f}",
            )

    def missing(self) -> str:
        """The apps whose consoles still miss lines."""
        self.check_consoles()
        short = [name for name, check in self.console.items() if check.missing]
        return ", ".join(short)

    def report_lost(self) -> None:
        """A failure for each token's lines still missing, with the round in which the first was missed."""
        for name, check in self.console.items():
            if check.lost == 0:
                continue
            by_token: dict[str, set[int]] = {}
            for token, tick in check.missing:
                by_token.setdefault(token, set()).add(tick)
            for token, ticks in sorted(by_token.items()):
                self.failures.append(self.lost_lines(name, token, ticks, check))

    def lost_lines(self, name: str, token: str, ticks: set[int], check: ConsoleCheck) -> dict[str, Any]:
        """The failure for ``ticks`` of ``token`` that never reached home."""
        first = self.first_missed[(name, token, min(ticks))]
        runs = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges(ticks))
        inc = check.incarnations.get(token)
        known = f"thawed from {inc.parent} at {inc.base}, last tick at home {max(inc.ticks)}" if inc else "no line"
        detail = f"{name}: token {token} ({known}): ticks {runs} never reached home ({check.announced} announced)"
        print(f"  FAILURE (console: lost lines) in {first['what']}: {detail}", flush=True)
        return {"kind": "console: lost lines", **first, "detail": detail, "logs": self.missed_logs[(name, token)]}

    # -- the whole run

    def final(self) -> list[str]:
        """Heal, settle, wait for late lines; return the apps lost."""
        self.round = {"round": "final", "what": "the end: links healed, daemons started, settled", "events": []}
        self.repair()
        self.settle(calm=2 * CALM_TIMEOUT, once=2 * RUN_TIMEOUT)
        look = self.look()  # an app on two hosts is a double, found by the look
        lost = [name for name in APPS if not running_on(look, name)]
        for name in lost:
            self.fail("lost", f"{name} runs nowhere at the end\n{table(look)}")
        self.lost |= set(lost)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.missing(), CONSOLE_TIMEOUT, interval=2, what="late console lines")
        self.report_lost()
        for host, daemon in self.daemons.items():
            if "Traceback" in (log := daemon.stderr_log()):
                self.warn("daemon traceback", f"{host} logged a traceback:\n{log[log.index('Traceback') :][:3000]}")
        return lost

    def results(self, seed: int, lost: list[str], elapsed: float) -> dict[str, Any]:
        """The JSON document."""
        counts = self.counts
        return {
            "bench": "soak",
            "machine": machine_info(),
            "seed": seed,
            "args": {k: v for k, v in vars(self.args).items() if k != "out"},
            "moves": {k: counts[f"moves_{k}"] for k in ("attempted", "succeeded", "refused", "timed_out")},
            "kills": {"daemons": counts["daemon_kills"], "runners": counts["runner_kills"]},
            "runner_kills_missed": counts["runner_kills_missed"],
            "link_cuts": counts["link_cuts"],
            "opens": counts["opens"],
            "apps_lost": len(self.lost),
            "apps_lost_at_end": len(lost),
            "rescues": counts["rescues"],
            "apps_doubled": len(self.doubled),
            "doubled_looks": counts["doubled_looks"],
            "hidden_runners": len(self.hidden),
            "unconfirmed_doubles": sum(1 for w in self.warnings if w["kind"] == "unconfirmed double"),
            "console": self.console_totals(),
            "per_app": {name: self.app_result(name, lost) for name in APPS},
            "elapsed_s": round(elapsed, 1),
            "failures": self.failures,
            "warnings": self.warnings,
            "rounds": [{k: r[k] for k in ("round", "what", "events")} for r in self.rounds],
        }

    def console_totals(self) -> dict[str, int]:
        checks = self.console.values()
        return {
            "lines_checked": sum(c.lines for c in checks),
            "lines_repeated": sum(len(c.repeated) for c in checks),
            "lines_lost": sum(c.lost for c in checks),
            "lines_announced_lost": sum(c.announced for c in checks),
            "lines_out_of_order": sum(len(c.out_of_order) for c in checks),
            "lines_mangled": sum(len(c.mangled) for c in checks),
            "incarnations": sum(len(c.incarnations) for c in checks),
        }

    def app_result(self, name: str, lost: list[str]) -> dict[str, Any]:
        check = self.console.get(name, ConsoleCheck())
        return {
            **self.per_app[name],
            "lost": name in self.lost,
            "lost_at_end": name in lost,
            "doubled": name in self.doubled,
            "lines_checked": check.lines,
            "lines_repeated": len(check.repeated),
            "lines_lost": check.lost,
            "incarnations": len(check.incarnations),
        }


# -- setting up and running


@contextlib.contextmanager
def app_file() -> Iterator[Path]:
    """The soak app in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="migsoak"))
    try:
        path = folder / "soak_app.py"
        path.write_text(APP.lstrip("\n"))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start(bed: NetBed, path: Path, autosave: float) -> list[FaultDaemon]:
    """A daemon on each host, paired both ways; each app started at its home and checkpointed once."""
    daemons = start_bed(bed)
    by_name = {daemon.host.name: daemon for daemon in daemons}
    for shows, types in ((daemons[0], daemons[1]), (daemons[0], daemons[2]), (daemons[1], daemons[2])):
        pair(shows, types)
    for name, (home, size) in APPS.items():
        run = ["run", str(path), "--name", name, "--autosave", str(autosave), "--keep", "last=10", "--", str(size)]
        by_name[home].mig(*run, timeout=60)
        by_name[home].mig("checkpoint", name, timeout=60)  # a kill -9 now loses nothing it cannot come back from
    return daemons


def keep_logs(soak: Soak, out: Path) -> Path:
    """Copy each daemon's whole log beside the results."""
    folder = out.parent / f"{out.stem}-logs"
    folder.mkdir(parents=True, exist_ok=True)
    for host, daemon in soak.daemons.items():
        (folder / f"{host}.log").write_text(daemon.stderr_log())
    for name, text in soak.console_text.items():
        (folder / f"{name}.console").write_text(text)
    return folder


def summary(doc: dict[str, Any], out: Path) -> str:
    moves, kills, console = doc["moves"], doc["kills"], doc["console"]
    return (
        f"soak seed {doc['seed']}: {moves['attempted']} moves ({moves['succeeded']} done, {moves['refused']} refused, "
        f"{moves['timed_out']} not ended), {kills['daemons']} daemon and {kills['runners']} runner kills, "
        f"{doc['link_cuts']} link cuts; apps lost {doc['apps_lost']}, doubled {doc['apps_doubled']}, hidden runners "
        f"{doc['hidden_runners']}; console "
        f"{console['lines_checked']} lines, {console['lines_repeated']} repeated, {console['lines_lost']} lost; "
        f"{doc['elapsed_s']:.0f} s; {len(doc['failures'])} failures, {len(doc['warnings'])} warnings -> {out}"
    )


def soak(args: argparse.Namespace, seed: int) -> int:
    """Build the bed, play the rounds, write the results; return the exit status."""
    began = time.monotonic()
    with NetBed(3) as bed, app_file() as path:
        runner = Soak(bed, start(bed, path, args.autosave), random.Random(seed), args)
        lost: list[str] = []
        try:
            for index in range(1, args.moves + 1):
                try:
                    runner.play(index)
                except (subprocess.TimeoutExpired, NetBedError) as exc:  # a mig command that hung, a bed that broke
                    runner.fail("soak error", f"{type(exc).__name__}: {exc}")
                    runner.repair()
            lost = runner.final()
        finally:
            runner.repair()
            doc = runner.results(seed, lost, time.monotonic() - began)
            doc["logs_dir"] = str(keep_logs(runner, args.out))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(summary(doc, args.out), flush=True)
    return 1 if doc["failures"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--moves", type=int, default=200, help="rounds, each with one move (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="the seed of the random draws (default: random)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json", help="the JSON results")
    parser.add_argument("--autosave", type=float, default=3.0, help="the apps' autosave period in seconds")
    parser.add_argument("--move-bound", type=float, default=60.0, help="seconds a mig move may take")
    args = parser.parse_args(argv)
    ok, why = netbed_available()
    if not ok:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"seed {seed} (--seed {seed} repeats this run)", flush=True)
    return soak(args, seed)


if __name__ == "__main__":
    sys.exit(main())
