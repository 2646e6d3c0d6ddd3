"""Pairing by a short one-time code, as pure logic: SPAKE2 over the code, then key confirmation of both identities.

Host S shows a code; host C types it. C sends its SPAKE2 message; S answers with its own and a confirmation, an
HMAC under the shared key over both hosts' certificate hashes; C checks it, and answers with its confirmation.
A wrong code yields a different key, so each attempt tests exactly one guess online, and nothing seen on the
wire lets an eavesdropper test guesses offline. Because the confirmations cover the certificate hashes each side
saw, a host in the middle that presents its own certificate is detected. S allows a few attempts per code.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from migrated.errors import PairingError

__all__ = ["CodeBook", "PairingClient", "PairingServer", "Party", "new_code", "normalize_code"]

CODE_DIGITS = 8
TRIES = 5
_ID_CLIENT = b"migrated pairing client"
_ID_SERVER = b"migrated pairing server"


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a pairing, as the certificates it presents: what the confirmations bind."""

    name: str
    device_id: str  # SHA-256 of its self-signed certificate
    client_cert_hash: str  # SHA-256 of the certificate it presents when it calls


def new_code() -> str:
    """A fresh code, e.g. ``4821-0937``."""
    digits = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
    return f"{digits[:4]}-{digits[4:]}"


def normalize_code(text: str) -> str:
    """The code as typed, without spaces and dashes; refuse anything that cannot be one."""
    digits = "".join(ch for ch in text if ch not in " -")
    if len(digits) != CODE_DIGITS or not digits.isdigit():
        raise PairingError(
            f"{text!r} is not a pairing code; it has {CODE_DIGITS} digits, as `mig pair` shows them on the other host"
        )
    return f"{digits[:4]}-{digits[4:]}"


def _transcript(server: Party, client: Party) -> bytes:
    fields = (server.name, server.device_id, server.client_cert_hash, client.name, client.device_id,
              client.client_cert_hash)  # fmt: skip
    return b"migrated pairing v1\0" + b"\0".join(field.encode() for field in fields)


def _confirm(key: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, label + transcript, hashlib.sha256).digest()


class PairingClient:
    """The side that types the code."""

    def __init__(self, code: str, me: Party) -> None:
        from spake2 import SPAKE2_A  # only pairing pays for its import

        self._spake = SPAKE2_A(normalize_code(code).encode(), idA=_ID_CLIENT, idB=_ID_SERVER)
        self.me = me
        self.message: bytes = self._spake.start()

    def finish(self, server_message: bytes, server: Party, server_confirm: bytes) -> bytes:
        """Check the server's confirmation; return ours. A wrong code fails here."""
        try:
            key = self._spake.finish(server_message)
        except Exception as exc:
            raise PairingError("the other host sent a malformed pairing message; run `mig pair` there again") from exc
        transcript = _transcript(server, self.me)
        if not hmac.compare_digest(_confirm(key, b"server", transcript), server_confirm):
            raise PairingError(
                "the pairing code is wrong, or another machine answered in the middle; check the code "
                "`mig pair` shows on the other host and try again"
            )
        return _confirm(key, b"client", transcript)


class PairingServer:
    """The side that showed the code, for one attempt."""

    def __init__(self, code: str, me: Party) -> None:
        from spake2 import SPAKE2_B

        self._spake = SPAKE2_B(code.encode(), idA=_ID_CLIENT, idB=_ID_SERVER)
        self.me = me
        self.message: bytes = self._spake.start()
        self._expected = b""

    def answer(self, client_message: bytes, client: Party) -> bytes:
        """Take the client's message; return our confirmation (sent beside ``self.message``)."""
        try:
            key = self._spake.finish(client_message)
        except Exception as exc:
            raise PairingError("the pairing message is malformed; run `mig pair HOST CODE` again") from exc
        transcript = _transcript(self.me, client)
        self._expected = _confirm(key, b"client", transcript)
        return _confirm(key, b"server", transcript)

    def confirmed(self, client_confirm: bytes) -> bool:
        """Whether the client proved it used the same code."""
        return bool(self._expected) and hmac.compare_digest(self._expected, client_confirm)


@dataclass(slots=True)
class _Code:
    code: str
    expires: float
    tries_left: int


class CodeBook:
    """The one active pairing code of a host, its expiry and its remaining tries. Times are monotonic seconds."""

    def __init__(self) -> None:
        self._active: _Code | None = None

    def issue(self, now: float, ttl: float) -> tuple[str, float]:
        """Replace any active code with a new one; return it and its expiry."""
        self._active = _Code(new_code(), now + ttl, TRIES)
        return self._active.code, self._active.expires

    def take_try(self, now: float, host: str) -> str:
        """Spend one try of the active code and return it, or say why there is none."""
        active = self._active
        if active is None:
            raise PairingError(f"{host} shows no pairing code; run `mig pair` on {host} and use the code it shows")
        if now >= active.expires:
            self._active = None
            raise PairingError(f"the pairing code of {host} expired; run `mig pair` on {host} for a new one")
        if active.tries_left <= 0:
            raise PairingError(
                f"the pairing code of {host} was tried too often and is void; run `mig pair` on {host} for a new one"
            )
        active.tries_left -= 1
        return active.code

    def burn(self) -> None:
        """The code paired a host: it cannot be used again."""
        self._active = None

    def active(self, now: float) -> bool:
        """Whether a code is shown and still usable."""
        return self._active is not None and now < self._active.expires and self._active.tries_left > 0
