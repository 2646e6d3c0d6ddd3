"""A state directory, key file, peer table or socket that another user owns is refused, and left as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemons
from tests.helpers import daemon_refusal, mig, one_sentence

OTHER = 54321  # a uid with no account: owning a file is all it takes

pytestmark = pytest.mark.integration  # every test runs migrated or mig


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests give files to another user, which needs root: run the suite as root (README, Setup)")


def snapshot(state_dir: Path) -> dict[str, tuple[int, int, int, int]]:
    """Mode, owner, size and mtime of the directory and everything in it (links not followed)."""
    found = {}
    for root, dirs, files in os.walk(state_dir):
        for name in [".", *dirs, *files]:
            path = Path(root, name)
            st = os.lstat(path)
            found[str(path.relative_to(state_dir))] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return found


def mig_refusal(state_dir: Path, daemons: Daemons, autostart: bool = False) -> str:
    """Run ``mig status``, which must refuse with exit code 7; return its one sentence."""
    result = mig("status", dir=state_dir, autostart=autostart, check=None)
    if result.code == 0 and autostart:
        daemons.adopt(state_dir)  # it started a daemon there: stop it at teardown
    assert result.code == 7, result
    return one_sentence(result.err).removeprefix("mig: ")


def assert_names_owner(sentence: str, path: Path) -> None:
    assert str(path) in sentence
    assert f"user {OTHER}" in sentence
    assert "root (uid 0)" in sentence


@pytest.fixture
def used_dir(daemons: Daemons) -> Path:
    """A state directory a daemon has run in (it has an identity) and stopped."""
    daemon = daemons.start()
    assert daemon.stop() == []
    return daemon.dir


def test_a_state_directory_of_another_user_is_refused_and_not_touched(daemons: Daemons) -> None:
    state_dir = daemons.new_dir()
    state_dir.chmod(0o755)  # so that a chmod to 0700 would show
    os.chown(state_dir, OTHER, OTHER)
    before = snapshot(state_dir)
    sentence = daemon_refusal(state_dir)
    assert_names_owner(sentence, state_dir)
    assert "chown" in sentence
    assert snapshot(state_dir) == before
    for autostart in (False, True):
        assert mig_refusal(state_dir, daemons, autostart) == sentence
    assert snapshot(state_dir) == before


def test_a_key_file_of_another_user_is_refused_by_the_daemon_and_by_autostart(used_dir: Path, daemons: Daemons) -> None:
    key = used_dir / "identity" / "key.pem"
    os.chown(key, OTHER, OTHER)
    before = snapshot(used_dir)
    sentence = daemon_refusal(used_dir)
    assert_names_owner(sentence, key)
    assert snapshot(used_dir) == before
    assert mig_refusal(used_dir, daemons, autostart=True) == sentence
    assert {name for name in snapshot(used_dir) if name not in before} <= {"daemon.log"}
    assert all(snapshot(used_dir)[name] == state for name, state in before.items() if name != ".")


def planted_peers(state_dir: Path) -> Path:
    """A peer table with one peer in it, as another user would plant it."""
    peer: dict[str, Any] = {
        "name": "intruder",
        "device_id": "ab" * 32,
        "cert_pem": "",
        "client_cert_hash": "cd" * 32,
        "address": "192.0.2.1:7464",
        "paired_at": 0.0,
    }
    path = state_dir / "peers.json"
    path.write_text(json.dumps([peer]))
    path.chmod(0o600)
    return path


def test_a_peer_table_of_another_user_is_refused_before_anything_is_written(daemons: Daemons) -> None:
    state_dir = daemons.new_dir()
    peers = planted_peers(state_dir)
    os.chown(peers, OTHER, OTHER)
    before = snapshot(state_dir)
    assert_names_owner(daemon_refusal(state_dir), peers)
    assert snapshot(state_dir) == before  # no lock, no store, no identity


def test_a_peer_table_others_can_write_is_refused(daemons: Daemons) -> None:
    state_dir = daemons.new_dir()
    peers = planted_peers(state_dir)
    peers.chmod(0o666)
    before = snapshot(state_dir)
    sentence = daemon_refusal(state_dir)
    assert str(peers) in sentence
    assert "0666" in sentence
    assert snapshot(state_dir) == before


def test_a_config_file_of_another_user_is_refused(daemons: Daemons) -> None:
    state_dir = daemons.new_dir()
    config = state_dir / "migrated.toml"
    config.write_text('name = "spoofed"\n')
    os.chown(config, OTHER, OTHER)
    before = snapshot(state_dir)
    assert_names_owner(daemon_refusal(state_dir), config)
    assert snapshot(state_dir) == before


def test_a_state_directory_reached_through_another_users_symlink_is_refused(daemons: Daemons) -> None:
    target = daemons.new_dir()
    link = daemons.new_dir() / "state"
    link.symlink_to(target)
    os.lchown(link, OTHER, OTHER)
    before = snapshot(target)
    assert_names_owner(daemon_refusal(link), link)
    assert_names_owner(mig_refusal(link, daemons), link)
    assert snapshot(target) == before


def test_a_symlink_of_ours_to_a_directory_of_another_user_is_refused(daemons: Daemons) -> None:
    target = daemons.new_dir()
    os.chown(target, OTHER, OTHER)
    link = daemons.new_dir() / "state"
    link.symlink_to(target)
    before = snapshot(target)
    assert_names_owner(daemon_refusal(link), target)
    assert_names_owner(mig_refusal(link, daemons), target)
    assert snapshot(target) == before


def test_mig_refuses_a_socket_another_user_put_in_place(daemons: Daemons) -> None:
    daemon = daemons.start()
    sock = daemon.dir / "control.sock"
    os.lchown(sock, OTHER, OTHER)
    try:
        assert_names_owner(mig_refusal(daemon.dir, daemons), sock)
    finally:
        os.lchown(sock, 0, 0)
    daemon.mig("status")


def test_a_directory_of_our_own_still_works_directly_and_through_a_symlink(daemons: Daemons) -> None:
    daemon = daemons.start()
    assert daemon.mig("status").code == 0
    link = daemons.new_dir() / "state"
    link.symlink_to(daemons.new_dir())
    mig("status", dir=link, autostart=True)
    daemons.adopt(link)
    assert daemon.stop() == []
    assert daemon.mig("status", autostart=True).code == 0  # a used directory, identity and all
    daemons.adopt(daemon.dir)
