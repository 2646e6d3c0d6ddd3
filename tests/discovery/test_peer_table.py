"""The peer table: mDNS sightings, configured addresses, the paired table and probes, merged."""

from __future__ import annotations

import pytest

from migrated.discovery._paired import PairedPeer
from migrated.discovery._table import HIDE_AFTER_FAILURES, PeerTable, Probe, Sighting
from migrated.errors import PeerNotFoundError

OWN, A, B, EVIL = ("0" * 64, "a" * 64, "b" * 64, "e" * 64)


def paired(name: str, device_id: str, address: str) -> PairedPeer:
    return PairedPeer(name, device_id, "PEM", "c" * 64, address, 1.0)


def test_sightings_paired_and_probes_merge_into_one_row_per_device() -> None:
    table = PeerTable(OWN)
    table.see([Sighting("alpha", A, "10.0.0.2:7464", "0.1.0"), Sighting("me", OWN, "10.0.0.1:7464", "0.1.0")], 5.0)
    table.probed("10.0.0.2:7464", Probe(True, 6.0, A, "alpha", "0.1.0", 2, 0.5))
    [row] = table.rows([paired("alpha", A, "10.0.0.9:7464")])
    assert (row.name, row.address, row.paired, row.reachable) == ("alpha", "10.0.0.2:7464", True, True)
    assert row.sources == {"mdns", "paired"} and (row.apps_running, row.load) == (2, 0.5)


def test_a_configured_address_becomes_a_device_once_probed() -> None:
    table = PeerTable(OWN)
    table.static = ("10.0.0.3:7464",)
    [row] = table.rows([])
    assert (row.name, row.device_id, row.reachable) == ("10.0.0.3:7464", "", False)
    table.probed("10.0.0.3:7464", Probe(True, 1.0, B, "beta"))
    [row] = table.rows([])
    assert (row.name, row.device_id, row.reachable, row.sources) == ("beta", B, True, {"config"})


def test_an_unpaired_mdns_peer_that_stops_answering_drops_out_but_a_paired_one_stays() -> None:
    table = PeerTable(OWN)
    table.see([Sighting("alpha", A, "10.0.0.2:7464", "1"), Sighting("beta", B, "10.0.0.3:7464", "1")], 1.0)
    for _ in range(HIDE_AFTER_FAILURES):
        table.probed("10.0.0.2:7464", Probe(False, 2.0))
        table.probed("10.0.0.3:7464", Probe(False, 2.0))
    rows = table.rows([paired("beta", B, "10.0.0.3:7464")])
    assert [(row.name, row.reachable) for row in rows] == [("beta", False)]
    table.probed("10.0.0.2:7464", Probe(True, 3.0, A, "alpha"))
    assert [row.name for row in table.rows([])] == ["alpha"]  # it answers again; beta still does not


def test_a_probe_answered_by_another_certificate_does_not_vouch_for_the_peer() -> None:
    table = PeerTable(OWN)
    table.see([Sighting("alpha", A, "10.0.0.2:7464", "1")], 1.0)
    table.probed("10.0.0.2:7464", Probe(True, 2.0, EVIL, "alpha"))
    [row] = table.rows([])
    assert not row.reachable


def test_resolve_by_name_address_and_device_id_prefix() -> None:
    table = PeerTable(OWN)
    table.see([Sighting("alpha", A, "10.0.0.2:7464", "1"), Sighting("beta", B, "10.0.0.3:7464", "1")], 1.0)
    assert table.resolve("alpha", []).device_id == A
    assert table.resolve("10.0.0.3:7464", []).device_id == B
    assert table.resolve("bbbbbbbb", []).device_id == B
    with pytest.raises(PeerNotFoundError, match="no peer called 'gamma'"):
        table.resolve("gamma", [])


def test_a_spoofed_advert_with_a_paired_name_does_not_shadow_the_paired_host() -> None:
    table = PeerTable(OWN)
    table.see([Sighting("alpha", A, "10.0.0.2:7464", "1"), Sighting("alpha", EVIL, "10.0.0.66:7464", "1")], 1.0)
    with pytest.raises(PeerNotFoundError, match="several peers are called 'alpha'"):
        table.resolve("alpha", [])
    assert table.resolve("alpha", [paired("alpha", A, "10.0.0.2:7464")]).device_id == A
