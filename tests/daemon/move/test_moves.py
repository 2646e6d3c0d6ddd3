"""Moving apps between two real daemons on loopback: the app goes on where it was, its console flows home."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import TICKER, UNSAVEABLE, contiguous, json_state_files, numbers, one_sentence, pair, wait_until

MIB_OF_STATE = ("--", str(1 << 20))  # the ticker's args: 1 MiB that does not change and does not compress


@pytest.fixture
def hosts(daemons: Daemons) -> tuple[Daemon, Daemon]:
    alpha, beta = daemons.start("--name", "alpha"), daemons.start("--name", "beta")
    pair(alpha, beta)
    return alpha, beta


def sent(out: str) -> float:
    """The bytes a ``mig move`` said it sent."""
    match = re.search(r"sent ([\d.]+) (B|KiB|MiB)", out)
    assert match, out
    return float(match.group(1)) * {"B": 1, "KiB": 1024, "MiB": 2**20}[match.group(2)]


def move(daemon: Daemon, name: str, host: str) -> str:
    out = daemon.mig("move", name, host).out
    last = out.splitlines()[-1]
    assert last.startswith(f"moved {name} to {host} in "), out
    return last


def test_a_running_app_moves_and_goes_on_where_it_was(hosts: tuple[Daemon, Daemon], app_dir: AppDir) -> None:
    alpha, beta = hosts
    alpha.mig("run", str(app_dir.write("ticker.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.wait_logs("ticker", "tick 20")
    out = move(alpha, "ticker", "beta")
    assert re.search(r"frozen \d+ ms; sent .* in \d+ chunks", out)
    home, there = alpha.app("ticker"), beta.app("ticker")
    for app in (home, there):
        assert (app["state"], app["host"], app["home"], app["epoch"]) == ("running", "beta", "alpha", 1)
    assert home["pid"] == there["pid"] and there["pid"] not in (None, 0)
    first_there = wait_until(lambda: numbers(beta.logs("ticker"))[:1], 15, what="ticks at beta")[0]
    assert first_there > 20  # it went on counting from where it was
    # At home, the console goes on: every number exactly once, in order, across the move.

    def home_ticks() -> list[int] | None:
        seen = numbers(alpha.logs("ticker"))
        return seen if seen and seen[-1] > first_there + 20 else None

    seen = wait_until(home_ticks, 15, what="ticks from beta at home")
    contiguous(seen)


def test_moving_back_sends_almost_nothing(hosts: tuple[Daemon, Daemon], app_dir: AppDir) -> None:
    alpha, beta = hosts
    alpha.mig("run", str(app_dir.write("ticker.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.wait_logs("ticker", "tick 3")
    first = move(alpha, "ticker", "beta")
    back = move(beta, "ticker", "alpha")
    assert sent(first) >= 1024 * 1024  # the MiB blob went over once
    assert sent(back) < 64 * 1024, back  # alpha had it
    app = alpha.app("ticker")
    assert (app["state"], app["host"], app["home"], app["epoch"]) == ("running", "alpha", "alpha", 2)
    assert "ticker" not in beta.ps()
    before = max(numbers(alpha.logs("ticker")))
    wait_until(lambda: max(numbers(alpha.logs("ticker"))) > before + 5, 15, what="ticks after coming home")
    assert json_state_files(alpha.dir) == json_state_files(beta.dir) == []  # runs, moves, pairings: all in SQLite


def test_moves_that_cannot_be_done_are_one_sentence_and_the_app_stays(
    hosts: tuple[Daemon, Daemon], daemons: Daemons, app_dir: AppDir
) -> None:
    alpha, beta = hosts
    stranger = daemons.start("--name", "gamma")
    alpha.mig("run", str(app_dir.write("ticker.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.mig("run", str(app_dir.write("idle.py", TICKER)), "--name", "idle", *MIB_OF_STATE, cwd=app_dir.path)
    alpha.mig("close", "idle")
    cases = [
        (("move", "ticker", "alpha"), 2, "runs on alpha already"),
        (("move", "ticker", "nowhere"), 10, "no peer called 'nowhere'"),
        (("move", "ticker", stranger.address), 10, "no peer called"),
        (("move", "nothing", "beta"), 3, "no app is called 'nothing'"),
        (("move", "idle", "beta"), 5, "not running"),
    ]
    for args, code, text in cases:
        err = alpha.mig(*args, check=code).err
        assert text in one_sentence(err), err
    assert alpha.app("ticker")["state"] == "running" and alpha.app("ticker")["host"] == "alpha"
    assert beta.ps() == {}


def test_preflight_refuses_a_package_the_destination_lacks(daemons: Daemons, app_dir: AppDir, tmp_path: Path) -> None:
    extra = tmp_path / "site"
    (extra / "fakepkg").mkdir(parents=True)
    (extra / "fakepkg" / "__init__.py").write_text("VALUE = 1\n")
    info = extra / "fakepkg-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.2.3\n")
    (info / "top_level.txt").write_text("fakepkg\n")
    os.environ["PYTHONPATH"] = str(extra)
    try:
        alpha = daemons.start("--name", "alpha")
    finally:
        del os.environ["PYTHONPATH"]
    beta = daemons.start("--name", "beta")
    pair(alpha, beta)
    app = app_dir.write("pkg.py", TICKER.replace("import migrated\n", "import migrated\nimport fakepkg\n"))
    alpha.mig("run", str(app), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.wait_logs("pkg", "tick 2")
    err = alpha.mig("move", "pkg", "beta", check=5).err
    assert "fakepkg 1.2.3 is not installed" in one_sentence(err) and "it stays here" in err
    assert alpha.app("pkg")["state"] == "running" and alpha.app("pkg")["host"] == "alpha"
    before = max(numbers(alpha.logs("pkg")))
    wait_until(lambda: max(numbers(alpha.logs("pkg"))) > before + 3, 10, what="the app to go on after the refusal")
    assert beta.ps() == {}


def test_open_on_thaws_a_closed_app_on_a_peer(hosts: tuple[Daemon, Daemon], app_dir: AppDir) -> None:
    alpha, beta = hosts
    alpha.mig("run", str(app_dir.write("ticker.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.wait_logs("ticker", "tick 5")
    alpha.mig("close", "ticker")
    last = max(numbers(alpha.logs("ticker")))
    out = alpha.mig("open", "ticker", "--on", "beta").out
    assert out.startswith("opened ticker on beta (pid "), out
    app = alpha.app("ticker")
    assert (app["state"], app["host"]) == ("running", "beta")
    first_there = wait_until(lambda: numbers(beta.logs("ticker"))[:1], 15, what="ticks at beta")[0]
    assert first_there == last + 1
    err = alpha.mig("open", "ticker", "--on", "beta", check=5).err
    assert "runs on beta" in one_sentence(err)


def test_evacuate_moves_every_running_app_and_leaves_one_that_cannot_go(
    hosts: tuple[Daemon, Daemon], app_dir: AppDir
) -> None:
    alpha, beta = hosts
    for name in ("one", "two"):
        alpha.mig("run", str(app_dir.write(f"{name}.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.mig("run", str(app_dir.write("stuck.py", UNSAVEABLE)), cwd=app_dir.path)
    alpha.wait_logs("two", "tick 2")
    result = alpha.mig("evacuate", "--to", "beta", check=12)
    assert re.search(r"^moved one to beta: frozen \d+ ms$", result.out, re.MULTILINE), result
    assert re.search(r"^moved two to beta: frozen \d+ ms$", result.out, re.MULTILINE), result
    assert result.err.startswith("stuck stays here: ") and "self.db" in result.err, result.err
    assert {name: app["host"] for name, app in alpha.ps().items()} == {"one": "beta", "two": "beta", "stuck": "alpha"}
    assert alpha.app("stuck")["state"] == "running"
    assert sorted(beta.ps()) == ["one", "two"]


def test_close_at_home_closes_the_app_where_it_runs_and_brings_it_home(
    hosts: tuple[Daemon, Daemon], app_dir: AppDir
) -> None:
    alpha, beta = hosts
    alpha.mig("run", str(app_dir.write("ticker.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.wait_logs("ticker", "tick 3")
    move(alpha, "ticker", "beta")
    wait_until(lambda: numbers(beta.logs("ticker"))[-1:] and numbers(beta.logs("ticker"))[-1] > 10, 15)
    out = alpha.mig("close", "ticker").out
    assert out.startswith("closed ticker at version"), out
    app = alpha.app("ticker")
    assert (app["state"], app["host"], app["home"]) == ("closed", "alpha", "alpha")
    assert "ticker" not in beta.ps()
    at_home = numbers(alpha.logs("ticker"))
    contiguous(at_home)  # every line came home first
    assert at_home[-1] > 10
    last = at_home[-1]
    alpha.mig("open", "ticker")
    resumed = wait_until(lambda: [n for n in numbers(alpha.logs("ticker")) if n > last][:1], 15, what="ticks again")
    assert resumed == [last + 1]
    kinds = [version["kind"] for version in json.loads(alpha.mig("history", "ticker", "--json").out)]
    assert kinds[-1] == "move" and len(kinds) >= 3  # the earlier versions stay; the one from beta is last


def test_a_host_killed_while_running_a_moved_app_runs_it_again_after_its_restart(
    hosts: tuple[Daemon, Daemon], daemons: Daemons, app_dir: AppDir
) -> None:
    alpha, beta = hosts
    alpha.mig("run", str(app_dir.write("ticker.py", TICKER)), *MIB_OF_STATE, cwd=app_dir.path)
    alpha.wait_logs("ticker", "tick 3")
    move(alpha, "ticker", "beta")
    wait_until(lambda: len(numbers(alpha.logs("ticker"))) > 30, 15, what="ticks from beta at home")
    beta.kill()  # kill -9: its runner dies with it
    lines_before = len(numbers(alpha.logs("ticker")))
    beta = daemons.start("--name", "beta", state_dir=beta.dir)
    app = beta.wait_state("ticker", "running")
    assert (app["host"], app["home"], app["epoch"]) == ("beta", "alpha", 1)
    assert alpha.app("ticker")["host"] == "beta"
    wait_until(lambda: len(numbers(alpha.logs("ticker"))) > lines_before + 10, 15, what="ticks at home again")
