"""Discovery: from ``Mdns.start()`` of a new daemon until a running daemon's ``seen()`` shows it, and back out.

Everything runs in a network namespace of its own (``unshare --net``, so it needs root), on loopback: this
process re-executes itself inside one and brings ``lo`` up. The running daemon (an ``Mdns``, and for the
baselines a bare zeroconf instance with a browser and a service of another type) lives in this process; the new
daemon lives in a second process, which starts a new one with a new device id each run, when told to. Both stamp
``time.monotonic()`` (CLOCK_MONOTONIC, one clock for the whole machine): the second process just before it
starts (creating the zeroconf instance and its sockets is counted), this one when ``on_change`` (or the bare
browser's handler) reports it. Then the second process closes it, and the time until the running one drops it
is the goodbye's.

Appearing, 20 rounds of four runs each:

- ``mdns cooperating``: ``Mdns(cooperating=True)``, what the daemon uses: no probing, announced at once;
- ``mdns probing``: ``Mdns(cooperating=False)``: zeroconf probes the name first (RFC 6762 §8.1);
- ``bare zeroconf, cooperating``: ``AsyncZeroconf`` + ``async_register_service(cooperating_responders=True)``
  with zeroconf's default TTLs, seen by a bare browser: the floor of the first;
- ``bare zeroconf, default``: the same with zeroconf's default settings (it probes), seen by a bare browser.

Joining, the other way round: from the start of a new ``Mdns`` until its ``seen()`` shows the running daemon,
against a bare zeroconf browser with default settings finding the running bare service. A responder multicasts a
record at most once a second (RFC 6762 §6), so each join waits for a quiet second first: back to back, every
join would wait out the answer to the one before.

Run: ``python -m bench.discovery [--runs 20] [--joins 10]`` as root (about 110 s: each probing run waits out
its probes, each join a quiet second).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench._common import PYTHON, summary, write_results

NETNS_FLAG = "MIG_BENCH_NETNS"
LOOPBACK = ["127.0.0.1"]
BARE_TYPE = "_migbench._tcp.local."  # the baselines' own type, so the running Mdns never sees them
OBSERVER_ID = "0" * 64
APPEAR = {  # name in the results: what the second process is told
    "mdns cooperating": "mdns-cooperating",
    "mdns probing": "mdns-probing",
    "bare zeroconf, cooperating": "bare-cooperating",
    "bare zeroconf, default": "bare-default",
}
JOIN = {"mdns cooperating": "mdns-cooperating", "bare zeroconf browser, default": "bare-default"}
QUIET = 1.1  # seconds without a run before each join
WAIT = 10.0  # seconds an appearance, a join or a goodbye may take before the bench fails

# The second process: reads "start MODE SEED", "join MODE SEED" and "close" on stdin, answers each with one JSON
# line of time.monotonic() stamps. A join waits until the new one sees the running one.
SECOND = """\
import asyncio, hashlib, json, sys, time

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from migrated.discovery import Advert, Mdns

BARE_TYPE, OBSERVER = sys.argv[1:]


async def main():
    current = browser = None
    while line := await asyncio.to_thread(sys.stdin.readline):
        command, *args = line.split()
        if command == "close":
            start = time.monotonic()
            if browser is not None:
                await browser.async_cancel()
            await (current.close() if isinstance(current, Mdns) else current.async_close())
            current = browser = None
            print(json.dumps({"close": start, "closed": time.monotonic()}), flush=True)
            continue
        mode, seed = args
        device_id = hashlib.sha256(seed.encode()).hexdigest()
        found = asyncio.get_running_loop().create_future()

        def on_change(seen):
            if OBSERVER in seen and not found.done():
                found.set_result(time.monotonic())

        def on_bare(zeroconf, service_type, name, state_change):
            if name == f"observer.{BARE_TYPE}" and not found.done():
                found.set_result(time.monotonic())

        start = time.monotonic()
        if mode.startswith("mdns"):
            current = Mdns(on_change, ["127.0.0.1"], cooperating=mode == "mdns-cooperating")
            await current.start(Advert("bench", device_id, 4000, ("127.0.0.1",), "0.1.0"))
        else:
            current = AsyncZeroconf(interfaces=["127.0.0.1"])
            if command == "join":
                browser = AsyncServiceBrowser(current.zeroconf, BARE_TYPE, handlers=[on_bare])
            else:
                info = ServiceInfo(BARE_TYPE, f"{seed}.{BARE_TYPE}", port=4000, properties={"id": device_id},
                                   server=f"{seed}.local.", parsed_addresses=["127.0.0.1"])
                await current.async_register_service(info, cooperating_responders=mode == "bare-cooperating")
        stamps = {"start": start, "returned": time.monotonic()}
        if command == "join":
            stamps["found"] = await asyncio.wait_for(found, 10)
        print(json.dumps(stamps), flush=True)


asyncio.run(main())
"""


class Observer:
    """The running daemon's view: an Mdns and a bare browser, with the moment each new one came and went."""

    def __init__(self) -> None:
        self.came: dict[str, float] = {}
        self.went: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.visible: set[str] = set()

    def on_change(self, seen: dict[str, Any]) -> None:
        now = time.monotonic()
        for device_id in seen.keys() - self.visible:
            self.came[device_id] = now
        for device_id in self.visible - seen.keys():
            self.went[device_id] = now
        self.visible = set(seen)
        self.changed.set()

    def on_bare(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        seed = name.removesuffix("." + BARE_TYPE)
        if state_change is ServiceStateChange.Added:
            self.came.setdefault(seed, time.monotonic())
        elif state_change is ServiceStateChange.Removed:
            self.went.setdefault(seed, time.monotonic())
        self.changed.set()

    async def until(self, stamps: dict[str, float], key: str) -> float:
        """The moment ``key`` came (or went), waiting for it if need be."""
        async with asyncio.timeout(WAIT):
            while key not in stamps:
                self.changed.clear()
                await self.changed.wait()
        return stamps[key]


class Second:
    """The second process."""

    async def open(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON, "-c", SECOND, BARE_TYPE, OBSERVER_ID, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    async def ask(self, line: str) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(WAIT + 5):
            reply = await self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the second process ended ({await self.proc.wait()}) on {line!r}")
        return dict(json.loads(reply))

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def appear(observer: Observer, second: Second, mode: str, seed: str) -> dict[str, float]:
    """Seconds until the running one saw the new one, until start() returned, and from close() to its goodbye."""
    key = hashlib.sha256(seed.encode()).hexdigest() if mode.startswith("mdns") else seed
    started = await second.ask(f"start {APPEAR[mode]} {seed}")
    came = await observer.until(observer.came, key)
    closed = await second.ask("close")
    went = await observer.until(observer.went, key)
    return {
        "appeared": came - started["start"],
        "start returned": started["returned"] - started["start"],
        "gone after close": went - closed["close"],
    }


async def join(second: Second, mode: str, seed: str) -> dict[str, float]:
    """Seconds from the start of a new one until it saw the running one."""
    await asyncio.sleep(QUIET)
    started = await second.ask(f"join {JOIN[mode]} {seed}")
    await second.ask("close")
    return {"found the running one": started["found"] - started["start"]}


async def measure(runs: int, joins: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    from zeroconf import ServiceInfo
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

    from migrated.discovery import Advert, Mdns

    observer = Observer()
    mdns = Mdns(observer.on_change, LOOPBACK)
    await mdns.start(Advert("observer", OBSERVER_ID, 3000, tuple(LOOPBACK), "0.1.0"))
    bare = AsyncZeroconf(interfaces=LOOPBACK)
    own = ServiceInfo(
        BARE_TYPE, f"observer.{BARE_TYPE}", port=3000, server="observer.local.", parsed_addresses=LOOPBACK
    )
    await bare.async_register_service(own, cooperating_responders=True)
    browser = AsyncServiceBrowser(bare.zeroconf, BARE_TYPE, handlers=[observer.on_bare])
    second = Second()
    await second.open()
    samples: dict[str, dict[str, dict[str, list[float]]]] = {"appearing": {}, "joining": {}}
    try:
        for index in range(runs + 1):  # the first round warms up and is not counted
            for number, mode in enumerate(APPEAR):
                figures = await appear(observer, second, mode, f"run{index}-{number}")
                for name, value in figures.items():
                    if index:
                        samples["appearing"].setdefault(mode, {}).setdefault(name, []).append(value)
        for index in range(joins):
            for number, mode in enumerate(JOIN):
                figures = await join(second, mode, f"join{index}-{number}")
                for name, value in figures.items():
                    samples["joining"].setdefault(mode, {}).setdefault(name, []).append(value)
    finally:
        await second.close()
        await browser.async_cancel()
        await bare.async_close()
        await mdns.close()
    return samples


def enter_namespace() -> None:
    """Re-execute this bench in a network namespace of its own, with loopback up."""
    if os.environ.get(NETNS_FLAG) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.geteuid() != 0:
        sys.exit("bench.discovery needs root: it runs in a network namespace of its own (unshare --net)")
    os.environ[NETNS_FLAG] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", PYTHON, "-m", "bench.discovery", *sys.argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--joins", type=int, default=10)
    opts = parser.parse_args()
    enter_namespace()

    from migrated.discovery._mdns import RECORD_TTL, SWEEP_INTERVAL

    samples = asyncio.run(measure(opts.runs, opts.joins))
    stats = {
        series: {mode: {name: summary(values) for name, values in figures.items()} for mode, figures in modes.items()}
        for series, modes in samples.items()
    }
    appearing = {mode: figures["appeared"]["median"] for mode, figures in stats["appearing"].items()}
    joining = {mode: figures["found the running one"]["median"] for mode, figures in stats["joining"].items()}
    derived = {
        "appeared: probing / cooperating (medians)": appearing["mdns probing"] / appearing["mdns cooperating"],
        "appeared: mdns cooperating - bare cooperating (medians)": appearing["mdns cooperating"]
        - appearing["bare zeroconf, cooperating"],
        "appeared: mdns probing - bare default (medians)": appearing["mdns probing"]
        - appearing["bare zeroconf, default"],
        "joined: mdns cooperating - bare browser default (medians)": joining["mdns cooperating"]
        - joining["bare zeroconf browser, default"],
    }
    results: dict[str, Any] = {
        "runs": opts.runs,
        "joins": opts.joins,
        "unit": "seconds",
        "network": "loopback in a network namespace of its own; the two daemons in two processes",
        "record_ttl_s": RECORD_TTL,
        "sweep_interval_s": SWEEP_INTERVAL,
        "derived": derived,
        "stats": stats,
        "samples": samples,
    }
    path = write_results("discovery", results)

    print(f"discovery on loopback, {opts.runs} runs and {opts.joins} joins (median / p90, ms)")
    for series, modes in stats.items():
        print(f"  {series:<32} " + " ".join(f"{name:>21}" for name in next(iter(modes.values()))))
        for mode, figures in modes.items():
            cells = [f"{stat['median'] * 1e3:7.1f} / {stat['p90'] * 1e3:7.1f}" for stat in figures.values()]
            print(f"    {mode:<30} " + " ".join(f"{cell:>21}" for cell in cells))
    for name, value in derived.items():
        print(f"  {name:<58} {value:9.4f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
