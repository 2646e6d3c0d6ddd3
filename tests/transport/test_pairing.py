"""The pairing exchange and the code book, as pure logic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrated.errors import PairingError
from migrated.transport._pairing import TRIES, CodeBook, PairingClient, PairingServer, Party, normalize_code

SERVER = Party("alpha", "a" * 64, "b" * 64)
CLIENT = Party("beta", "c" * 64, "d" * 64)


def exchange(shown: str, typed: str, server: Party = SERVER, client_seen: Party = SERVER) -> bool:
    """Run one pairing; return whether the server accepted the client's confirmation."""
    client = PairingClient(typed, CLIENT)
    server_side = PairingServer(shown, server)
    confirm = server_side.answer(client.message, CLIENT)
    client_confirm = client.finish(server_side.message, client_seen, confirm)
    return server_side.confirmed(client_confirm)


def test_the_same_code_pairs() -> None:
    assert exchange("1234-5678", "1234 5678")


def test_a_wrong_code_fails_on_the_client_before_it_confirms() -> None:
    with pytest.raises(PairingError, match="code is wrong"):
        exchange("1234-5678", "1234-5679")


def test_a_host_in_the_middle_with_another_certificate_is_detected() -> None:
    mitm = Party("alpha", "e" * 64, "b" * 64)
    with pytest.raises(PairingError, match="another machine answered"):
        exchange("1234-5678", "1234-5678", server=SERVER, client_seen=mitm)


def test_a_forged_confirmation_is_not_accepted() -> None:
    client = PairingClient("1234-5678", CLIENT)
    server = PairingServer("1234-5678", SERVER)
    server.answer(client.message, CLIENT)
    assert not server.confirmed(b"\0" * 32)
    assert not PairingServer("1234-5678", SERVER).confirmed(b"")  # nothing answered yet


@given(st.binary(max_size=100))
def test_garbage_spake_messages_are_a_pairing_error(message: bytes) -> None:
    server = PairingServer("1234-5678", SERVER)
    try:
        server.answer(message, CLIENT)
    except PairingError:
        return
    assert not server.confirmed(b"\0" * 32)


@pytest.mark.parametrize("text", ["", "1234", "1234-567a", "12345-6789", "abcd-efgh"])
def test_malformed_codes_are_refused(text: str) -> None:
    with pytest.raises(PairingError, match="not a pairing code"):
        normalize_code(text)


def test_the_code_book_expires_counts_tries_and_burns() -> None:
    book = CodeBook()
    with pytest.raises(PairingError, match="shows no pairing code"):
        book.take_try(0.0, "alpha")
    code, expires = book.issue(100.0, 60.0)
    assert expires == 160.0 and normalize_code(code) == code
    for _ in range(TRIES):
        assert book.take_try(101.0, "alpha") == code
    with pytest.raises(PairingError, match="tried too often"):
        book.take_try(101.0, "alpha")
    book.issue(200.0, 60.0)
    with pytest.raises(PairingError, match="expired"):
        book.take_try(260.0, "alpha")
    book.issue(300.0, 60.0)
    book.burn()
    assert not book.active(301.0)
