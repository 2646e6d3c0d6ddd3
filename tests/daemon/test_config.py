"""The daemon's settings: addresses, the config file, and flags over file."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrated.daemon._config import (
    DEFAULT_PORT,
    Address,
    evacuate_target,
    load_config_file,
    parse_address,
    peer_settings,
)
from migrated.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.0.0.2:7000", Address("10.0.0.2", 7000)),
        ("10.0.0.2", Address("10.0.0.2", DEFAULT_PORT)),
        ("[::1]:7000", Address("::1", 7000)),
        ("::1", Address("::1", DEFAULT_PORT)),
        ("work-pc.local:80", Address("work-pc.local", 80)),
    ],
)
def test_addresses_parse(text: str, address: Address) -> None:
    assert parse_address(text, what="x") == address
    assert parse_address(str(address), what="x") == address


@pytest.mark.parametrize("text", ["", ":7000", "host:0", "host:65536", "host:x", "a b:1"])
def test_bad_addresses_are_one_sentence(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_address(text, what="the peer")
    assert "\n" not in error.value.message and error.value.message.startswith("the peer")


def test_flags_win_over_the_file_and_peers_add_up() -> None:
    file = {"listen": "127.0.0.1:1", "peers": ["10.0.0.2:7000"], "mdns": False}
    settings = peer_settings(file, listen="127.0.0.1:0", peers=("10.0.0.3", "10.0.0.2:7000"), mdns=None)
    assert settings.listen == Address("127.0.0.1", 0) and settings.listen_given
    assert settings.peers == (Address("10.0.0.2", 7000), Address("10.0.0.3", DEFAULT_PORT))
    assert settings.mdns is False
    assert peer_settings(file, listen=None, peers=(), mdns=True).mdns is True
    default = peer_settings({}, listen=None, peers=(), mdns=None)
    assert default.listen == Address("0.0.0.0", DEFAULT_PORT) and not default.listen_given and default.mdns


def test_a_listen_address_must_be_an_ip() -> None:
    with pytest.raises(ConfigError, match="must be an IP address"):
        peer_settings({}, listen="work-pc:7000", peers=(), mdns=None)
    with pytest.raises(ConfigError, match="must be an IP address"):
        peer_settings({"listen": "work-pc"}, listen="127.0.0.1:0", peers=(), mdns=None)


def test_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "migrated.toml"
    assert load_config_file(path) == {}
    path.write_text('name = "box"\npeers = ["10.0.0.2"]\n')
    assert load_config_file(path) == {"name": "box", "peers": ["10.0.0.2"]}
    path.write_text("mdns = 'yes'\n")
    with pytest.raises(ConfigError, match="must be a bool"):
        peer_settings(load_config_file(path), listen=None, peers=(), mdns=None)
    path.write_text("peers = [1]\n")
    with pytest.raises(ConfigError, match="list of"):
        peer_settings(load_config_file(path), listen=None, peers=(), mdns=None)


def test_the_evacuation_host_comes_from_the_flag_else_the_file(tmp_path: Path) -> None:
    (tmp_path / "migrated.toml").write_text('evacuate_to = "fileserver"\n')
    file = load_config_file(tmp_path / "migrated.toml")
    assert evacuate_target(file, None) == "fileserver"
    assert evacuate_target(file, "nas") == "nas"
    assert evacuate_target({}, None) == ""
    with pytest.raises(ConfigError, match="evacuate_to in the config file must be a str"):
        evacuate_target({"evacuate_to": 3}, None)
