"""The mDNS advert and its TXT record: round trips, and refusal of what anyone on the LAN could send."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceInfo, service_type_name  # type: ignore[attr-defined]

import migrated.discovery
from migrated.discovery import SERVICE_TYPE, Advert, BadAdvert
from migrated.discovery._advert import (
    MAX_ADDRESSES,
    MAX_NAME_BYTES,
    MAX_TXT_BYTES,
    PROTOCOLS,
    check_advert,
    decode_advert,
    encode_txt,
    instance_name,
    parse_txt,
)

DEVICE_ID = "0123456789abcdef" * 4
GOOD = Advert("work-pc", DEVICE_ID, 50051, ("192.168.1.20",), "0.1.0")


def txt(*entries: bytes) -> bytes:
    """TXT record data from its strings."""
    return b"".join(bytes((len(entry),)) + entry for entry in entries)


GOOD_TXT = txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1")


def names() -> st.SearchStrategy[str]:
    """Host names as migrated would send them: printable, trimmed, at most MAX_NAME_BYTES of UTF-8."""
    return (
        st.text(min_size=1, max_size=MAX_NAME_BYTES)
        .filter(lambda name: name.isprintable() and name.strip() == name)
        .filter(lambda name: len(name.encode()) <= MAX_NAME_BYTES)
    )


ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
usable_ipv4 = st.tuples(st.integers(1, 223), *[st.integers(0, 255)] * 3).map(lambda parts: ".".join(map(str, parts)))
adverts = st.builds(
    Advert,
    name=names(),
    device_id=st.text("0123456789abcdef", min_size=64, max_size=64),
    port=st.integers(1, 65535),
    addresses=st.lists(usable_ipv4, min_size=1, max_size=MAX_ADDRESSES, unique=True).map(tuple),
    version=st.text("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+!_-", min_size=1, max_size=32),
    proto=st.sampled_from(sorted(PROTOCOLS)),
)


def test_exported_members() -> None:
    assert set(migrated.discovery.__all__) == {"SERVICE_TYPE", "Advert", "BadAdvert", "Mdns"}
    for name in migrated.discovery.__all__:
        assert getattr(migrated.discovery, name) is not None


def test_importing_discovery_leaves_zeroconf_for_mdns() -> None:
    code = "import sys, migrated.discovery, migrated.discovery._table; print('zeroconf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_txt_record_is_four_short_keys() -> None:
    assert encode_txt(GOOD) == GOOD_TXT
    assert len(GOOD_TXT) < 100


@given(adverts)
def test_round_trip(advert: Advert) -> None:
    assert decode_advert(encode_txt(advert), advert.port, advert.addresses) == advert


@given(adverts)
def test_zeroconf_reads_our_txt_as_we_do(advert: Advert) -> None:
    info = ServiceInfo(SERVICE_TYPE, instance_name(advert), port=advert.port, properties=encode_txt(advert))
    assert info.decoded_properties == {"n": advert.name, "id": advert.device_id, "v": advert.version, "p": "1"}
    assert decode_advert(info.text, info.port, list(advert.addresses)) == advert


@given(adverts)
def test_instance_name_is_one_valid_label(advert: Advert) -> None:
    name = instance_name(advert)
    assert name.endswith(f"-{advert.device_id[:8]}.{SERVICE_TYPE}")
    assert service_type_name(name, strict=True) == SERVICE_TYPE  # zeroconf accepts it: under 64 bytes, no controls
    label = name[: -len(SERVICE_TYPE) - 1]
    assert "." not in label
    assert len(label.encode()) <= 63


def test_instance_name_keeps_a_short_name_whole_and_cuts_a_long_one_on_a_character() -> None:
    assert instance_name(GOOD) == f"work-pc-01234567.{SERVICE_TYPE}"
    long = dataclasses.replace(GOOD, name="é" * 31)  # 62 bytes
    label = instance_name(long)[: -len(SERVICE_TYPE) - 1]
    assert label == "é" * 27 + "-01234567"


def test_two_hosts_of_one_name_get_two_instance_names() -> None:
    other = dataclasses.replace(GOOD, device_id="f" * 64)
    assert instance_name(GOOD) != instance_name(other)


@given(st.binary(max_size=600), st.none() | st.integers(-(2**31), 2**31), st.lists(ipv4 | st.text(max_size=20)))
def test_decoding_anything_either_gives_an_advert_or_refuses_it(
    data: bytes, port: int | None, addresses: list[str]
) -> None:
    try:
        advert = decode_advert(data, port, addresses)
    except BadAdvert:
        return
    check_advert(advert)


@given(st.lists(st.binary(max_size=255), max_size=8))
def test_parsing_a_well_framed_record_fails_only_on_its_size_or_a_key(entries: list[bytes]) -> None:
    data = txt(*entries)
    try:
        parsed = parse_txt(data)
    except BadAdvert as exc:
        assert len(data) > MAX_TXT_BYTES or "TXT key" in str(exc)
        return
    assert set(parsed) <= {entry.partition(b"=")[0].decode().lower() for entry in entries if entry}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (txt(b"n=work-pc", b"v=0.1.0", b"p=1"), "no value for 'id'"),
        (txt(b"n=work-pc", b"id=", b"v=0.1.0", b"p=1"), "device id"),
        (txt(b"n=work-pc", b"id=" + b"g" * 64, b"v=0.1.0", b"p=1"), "device id"),
        (txt(b"n=work-pc", b"id=" + b"a" * 63, b"v=0.1.0", b"p=1"), "device id"),
        (txt(b"n=work-pc", b"id=" + b"a" * 65, b"v=0.1.0", b"p=1"), "device id"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.upper().encode(), b"v=0.1.0", b"p=1"), "device id"),
        (txt(b"n=work-pc", b"id", b"v=0.1.0", b"p=1"), "no value for 'id'"),
        (txt(b"n=\xff\xfework", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "not utf-8"),
        (txt(b"n=", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "name is empty"),
        (txt(b"n=a\x07b", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "control"),
        (txt("n=evil\u202egnp.exe".encode(), b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "format"),
        (txt(b"n= padded", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "space"),
        (txt(b"n=" + b"x" * 64, b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "over 63"),
        (txt(b"n=" + "é".encode() * 32, b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1"), "over 63"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=" + b"1" * 33, b"p=1"), "version"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1 beta", b"p=1"), "version"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=", b"p=1"), "version"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0\xff", b"p=1"), "not ascii"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0"), "peer protocol"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=2"), "peer protocol 2"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=0"), "peer protocol 0"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p= 1"), "peer protocol"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=1_0"), "peer protocol"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=-1"), "peer protocol"),
        (txt(b"n=work-pc", b"id=" + DEVICE_ID.encode(), b"v=0.1.0", b"p=" + b"9" * 200), "peer protocol"),
        (GOOD_TXT + b"\x05ab", "past the end"),
        (GOOD_TXT + txt(b"x" * 255, b"y" * 255), "over 512"),
        (GOOD_TXT + txt(b"=1"), "TXT key"),
        (GOOD_TXT + txt(b"k\x00=1"), "TXT key"),
        (b"", "no value for 'n'"),
        (b"\x00", "no value for 'n'"),
    ],
)
def test_hostile_records_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(BadAdvert, match=f"(?i){why}"):
        decode_advert(data, 50051, ["192.168.1.20"])


@pytest.mark.parametrize(("port", "why"), [(None, "no port"), (0, "port 0"), (65536, "port 65536"), (-1, "port -1")])
def test_absurd_ports_are_refused(port: int | None, why: str) -> None:
    with pytest.raises(BadAdvert, match=why):
        decode_advert(GOOD_TXT, port, ["192.168.1.20"])


def test_unusable_addresses_are_dropped_and_none_left_is_refused() -> None:
    bad = ["0.0.0.0", "0.1.2.3", "224.0.0.251", "239.1.1.1", "240.0.0.1", "255.255.255.255", "::1", "fe80::1", "x"]
    assert decode_advert(GOOD_TXT, 1, [*bad, "10.0.0.1", "10.0.0.1", "127.0.0.1"]).addresses == (
        "10.0.0.1",
        "127.0.0.1",
    )
    with pytest.raises(BadAdvert, match="no usable IPv4 address"):
        decode_advert(GOOD_TXT, 1, bad)
    many = [f"10.0.0.{i}" for i in range(1, 100)]
    assert decode_advert(GOOD_TXT, 1, many).addresses == tuple(many[:MAX_ADDRESSES])


def test_keys_are_case_insensitive_the_first_wins_and_unknown_ones_are_ignored() -> None:
    data = txt(b"N=first", b"n=second", b"ID=" + DEVICE_ID.encode(), b"v=0.1.0", b"P=1", b"future=x", b"flag", b"")
    advert = decode_advert(data, 1, ["10.0.0.1"])
    assert (advert.name, advert.device_id, advert.proto) == ("first", DEVICE_ID, 1)


def test_a_name_may_be_any_printable_unicode() -> None:
    data = txt("n=Küche PC 台所".encode(), b"id=" + DEVICE_ID.encode(), b"v=1.0+local", b"p=1")
    assert decode_advert(data, 1, ["10.0.0.1"]).name == "Küche PC 台所"


@pytest.mark.parametrize(
    "change",
    [
        {"name": ""},
        {"name": "tab\there"},
        {"name": "x" * 64},
        {"name": "\ud800"},
        {"device_id": "ab"},
        {"device_id": DEVICE_ID.upper()},
        {"port": 0},
        {"port": True},
        {"addresses": ("10.0.0.1", "10.0.0.1")},
        {"addresses": ("10.0.0.01",)},
        {"addresses": ("0.0.0.0",)},
        {"addresses": ["10.0.0.1"]},
        {"addresses": tuple(f"10.0.0.{i}" for i in range(1, MAX_ADDRESSES + 2))},
        {"version": ""},
        {"version": "1.0 (beta)"},
        {"proto": 2},
    ],
)
def test_our_own_advert_is_checked_before_it_is_sent(change: dict[str, object]) -> None:
    with pytest.raises(BadAdvert):
        encode_txt(dataclasses.replace(GOOD, **change))  # type: ignore[arg-type]


def test_our_own_advert_may_leave_the_addresses_to_mdns() -> None:
    assert encode_txt(dataclasses.replace(GOOD, addresses=())) == GOOD_TXT
