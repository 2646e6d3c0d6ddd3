"""The daemon's settings: its config file (``DIR/migrated.toml``) merged with its flags. Pure."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrated._paths import check_owned
from migrated.errors import ConfigError

__all__ = ["DEFAULT_PORT", "Address", "PeerSettings", "evacuate_target", "load_config_file", "parse_address",
           "peer_settings"]  # fmt: skip

DEFAULT_PORT = 7464
CONFIG_FILE = "migrated.toml"
_KEYS = {"name", "listen", "peers", "mdns", "mdns_interfaces", "evacuate_to"}


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port: ``10.0.0.2:7464`` or ``[::1]:7464``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


DEFAULT_LISTEN = Address("0.0.0.0", DEFAULT_PORT)


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Where the peer port listens, which peers are configured, and whether mDNS runs."""

    listen: Address = field(default_factory=lambda: DEFAULT_LISTEN)
    listen_given: bool = False  # an explicit port that is taken is an error; the default one falls back
    peers: tuple[Address, ...] = ()
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = field(default=())  # empty: every interface


def parse_address(text: str, *, what: str, allow_port_zero: bool = False) -> Address:
    """Parse ``HOST:PORT`` (IPv6 in brackets); a missing port means the default one."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        sep, port_text = (":", rest[1:]) if rest.startswith(":") else ("", "")
    elif not sep or ":" in host:
        host, port_text = text, ""
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"{what} {text!r} is not an address; give it as HOST:PORT, e.g. 192.168.1.20:{DEFAULT_PORT}")
    if not port_text:
        return Address(host, DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"{what} {text!r} has no valid port; give a port from 1 to 65535")
    return Address(host, port)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read the TOML config file, if it and its directory are ours; a missing file is an empty config."""
    try:
        check_owned(path.parent)  # the state directory: this file is read before the daemon opens (and checks) it
        check_owned(path)
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return {}  # a state directory that cannot exist is reported when the daemon opens it
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}; fix its permissions") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML ({exc}); fix it or remove it") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(
            f"the config file {path} has unknown settings {', '.join(unknown)}; the known ones are "
            f"{', '.join(sorted(_KEYS))}"
        )
    return data


def peer_settings(
    file: dict[str, Any],
    *,
    listen: str | None,
    peers: tuple[str, ...],
    mdns: bool | None,
    interfaces: tuple[str, ...] = (),
) -> PeerSettings:
    """Merge the config file with the flags: flags win, and ``--peer`` adds to the file's peers."""
    file_listen = _typed(file, "listen", str)
    if file_listen is not None:  # checked even when a flag overrides it: a broken file is reported at once
        _check_ip(parse_address(file_listen, what="the listen address", allow_port_zero=True), "the listen address")
    listen_text = listen if listen is not None else file_listen
    address = DEFAULT_LISTEN
    if listen_text is not None:
        address = parse_address(listen_text, what="the listen address", allow_port_zero=True)
        _check_ip(address, "the listen address")
    file_peers = _typed(file, "peers", list) or []
    if not all(isinstance(peer, str) for peer in file_peers):
        raise ConfigError('peers in the config file must be a list of "HOST:PORT" strings')
    all_peers = tuple(dict.fromkeys(parse_address(p, what="the peer") for p in (*file_peers, *peers)))
    file_mdns = _typed(file, "mdns", bool)
    file_interfaces = _typed(file, "mdns_interfaces", list) or []
    if not all(isinstance(i, str) for i in file_interfaces):
        raise ConfigError("mdns_interfaces in the config file must be a list of IPv4 address strings")
    return PeerSettings(
        listen=address,
        listen_given=listen_text is not None,
        peers=all_peers,
        mdns=next(choice for choice in (mdns, file_mdns, True) if choice is not None),
        mdns_interfaces=interfaces or tuple(file_interfaces),
    )


def evacuate_target(file: dict[str, Any], flag: str | None) -> str:
    """The paired host a stopping daemon moves its apps to ("": none); the flag wins over the file."""
    if flag is not None:
        return flag
    return _typed(file, "evacuate_to", str) or ""


def _typed(file: dict[str, Any], key: str, kind: type) -> Any:
    value = file.get(key)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{key} in the config file must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _check_ip(address: Address, what: str) -> None:
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        raise ConfigError(
            f"{what} {address} must be an IP address of this host (0.0.0.0 for all), not a name"
        ) from None
