"""What a daemon says about itself over mDNS, and the TXT record that carries it. Pure: no sockets, no zeroconf.

The TXT record (RFC 6763 §6) holds four short keys, nothing secret::

    n=<name>  id=<device id, 64 hex>  v=<software version>  p=<peer protocol version>

The port and the addresses travel in the SRV and A records. Records come from anyone on the LAN, so decoding
checks everything and raises ``BadAdvert`` (a ``ValueError``) for anything it would not itself have sent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_ADDRESSES",
    "MAX_NAME_BYTES",
    "MAX_TXT_BYTES",
    "PROTOCOLS",
    "SERVICE_TYPE",
    "Advert",
    "BadAdvert",
    "check_advert",
    "decode_advert",
    "encode_txt",
    "instance_name",
    "parse_txt",
]

SERVICE_TYPE = "_migrated._tcp.local."
PROTOCOLS = frozenset({1})  # peer protocol versions this build speaks; adverts of any other are ignored
MAX_NAME_BYTES = 63  # a host name label's limit
MAX_VERSION_CHARS = 32
MAX_ADDRESSES = 16
MAX_TXT_BYTES = 512  # ours is under 200; room for keys a later version may add
_ID_HEX = 8  # device id digits in the instance name: two hosts with one name never share an instance name
_LABEL_BYTES = 63  # one DNS label (RFC 1035 §2.3.4)

_DEVICE_ID = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z.+!_-]+")
_DECIMAL = re.compile(rb"[0-9]{1,5}")


class BadAdvert(ValueError):
    """An advert, or the TXT record of one, that migrated would not send."""


@dataclass(frozen=True, slots=True)
class Advert:
    """What a daemon says about itself; nothing secret."""

    name: str  # host name, e.g. "work-pc"
    device_id: str  # 64 lowercase hex: SHA-256 of the daemon's certificate
    port: int  # its peer gRPC port
    addresses: tuple[str, ...]  # IPv4 addresses it listens on; empty (own advert only) = all of this host's
    version: str  # software version, e.g. "0.1.0"
    proto: int = 1  # peer protocol version


def check_advert(advert: Advert) -> None:
    """Raise ``BadAdvert`` unless every field is one migrated would send."""
    _check_name(advert.name)
    if not isinstance(advert.device_id, str) or not _DEVICE_ID.fullmatch(advert.device_id):
        raise BadAdvert("the device id is not 64 lowercase hex digits")
    if type(advert.port) is not int or not 0 < advert.port < 65536:
        raise BadAdvert(f"port {advert.port!r} is not between 1 and 65535")
    if not isinstance(advert.addresses, tuple) or len(advert.addresses) > MAX_ADDRESSES:
        raise BadAdvert(f"the addresses are not a tuple of at most {MAX_ADDRESSES}")
    if len(set(advert.addresses)) != len(advert.addresses):
        raise BadAdvert("an address is listed twice")
    for address in advert.addresses:
        if _usable_ipv4(address) != address:
            raise BadAdvert(f"{address!r} is not a usable IPv4 address in dotted-quad form")
    version = advert.version
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_CHARS or not _VERSION.fullmatch(version):
        raise BadAdvert(f"version {version!r} is not 1 to {MAX_VERSION_CHARS} of [0-9A-Za-z.+!_-]")
    if type(advert.proto) is not int or advert.proto not in PROTOCOLS:
        raise BadAdvert(f"peer protocol {advert.proto!r} is not one this build speaks ({sorted(PROTOCOLS)})")


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or not name.isprintable() or name.strip() != name:
        raise BadAdvert("the name is empty, has control or format characters, or starts or ends with a space")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise BadAdvert("the name is not valid Unicode") from None
    if size > MAX_NAME_BYTES:
        raise BadAdvert(f"the name is {size} bytes of UTF-8, over {MAX_NAME_BYTES}")


def _usable_ipv4(text: str) -> str | None:
    """The canonical form of an IPv4 address a peer could be reached at, else None."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return None
    if address.packed[0] == 0 or address.is_multicast or address.is_reserved:  # 0/8, 224/4, 240/4
        return None
    return str(address)


def encode_txt(advert: Advert) -> bytes:
    """The TXT record's data for ``advert``; raise ``BadAdvert`` if it is not one to send."""
    check_advert(advert)
    entries = [
        b"n=" + advert.name.encode(),
        b"id=" + advert.device_id.encode(),
        b"v=" + advert.version.encode(),
        b"p=" + str(advert.proto).encode(),
    ]
    return b"".join(bytes((len(entry),)) + entry for entry in entries)


def parse_txt(data: bytes) -> dict[str, bytes | None]:
    """The keys of a TXT record's data (lowercased; the first of a repeated key wins, RFC 6763 §6.4)."""
    if len(data) > MAX_TXT_BYTES:
        raise BadAdvert(f"the TXT record is {len(data)} bytes, over {MAX_TXT_BYTES}")
    entries: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(data):
        end = pos + 1 + data[pos]
        if end > len(data):
            raise BadAdvert("a TXT entry runs past the end of the record")
        entry = data[pos + 1 : end]
        pos = end
        if not entry:
            continue  # an empty TXT record is a single empty string
        key, sep, value = entry.partition(b"=")
        if not key or any(byte < 0x20 or byte > 0x7E for byte in key):
            raise BadAdvert("a TXT key is empty or not printable ASCII")
        entries.setdefault(key.decode("ascii").lower(), value if sep else None)
    return entries


def decode_advert(data: bytes, port: int | None, addresses: Iterable[str]) -> Advert:
    """The advert in a TXT record's data and its SRV port and A addresses; raise ``BadAdvert`` if it is not one."""
    entries = parse_txt(data)
    name = _text(entries, "n", "utf-8")
    device_id = _text(entries, "id", "ascii")
    version = _text(entries, "v", "ascii")
    proto = entries.get("p")
    if proto is None or not _DECIMAL.fullmatch(proto):
        raise BadAdvert("the peer protocol (p) is missing or not a small decimal number")
    usable: list[str] = []
    for address in addresses:
        canonical = _usable_ipv4(address)
        if canonical is not None and canonical not in usable:
            usable.append(canonical)
    if not usable:
        raise BadAdvert("no usable IPv4 address")
    if port is None:
        raise BadAdvert("no port")
    advert = Advert(name, device_id, port, tuple(usable[:MAX_ADDRESSES]), version, int(proto))
    check_advert(advert)
    return advert


def _text(entries: dict[str, bytes | None], key: str, encoding: str) -> str:
    value = entries.get(key)
    if value is None:
        raise BadAdvert(f"the TXT record has no value for {key!r}")
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise BadAdvert(f"the value of {key!r} is not {encoding}") from None


def instance_name(advert: Advert) -> str:
    """``<name>-<first 8 hex of the device id>._migrated._tcp.local.``, the name cut to fit one DNS label."""
    suffix = "-" + advert.device_id[:_ID_HEX]
    label = advert.name.replace(".", "-").replace("\\", "-")
    while len((label + suffix).encode()) > _LABEL_BYTES:
        label = label[:-1]
    return f"{label}{suffix}.{SERVICE_TYPE}"
