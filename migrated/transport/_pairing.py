"""Pairing by a short one-time code, as pure logic: SPAKE2 over the code, then key confirmation of both identities.

Host S shows a code; host C types it. C sends its SPAKE2 message; S answers with its own and a confirmation, an
HMAC under the shared key over both hosts' certificate hashes; C checks it, and answers with its confirmation.
A wrong code yields a different key, so each attempt tests exactly one guess online, and nothing seen on the
wire lets an eavesdropper test guesses offline. Because the confirmations cover the certificate hashes each side
saw, a host in the middle that presents its own certificate is detected. S allows a few attempts per code, and
counts only well-formed ones; it also takes only a few attempts per caller address at a time (``AttemptLimit``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

from migrated.errors import PairingError

__all__ = ["AttemptLimit", "CodeBook", "PairingClient", "PairingServer", "Party", "new_code", "normalize_code"]

CODE_DIGITS = 8
TRIES = 5
ATTEMPT_BURST = 3  # attempts an address may make at once,
ATTEMPT_INTERVAL = 2.0  # then one more every this many seconds: 5 tries take at least 4 s
MAX_ADDRESSES = 1024
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

    def current(self, now: float, host: str) -> str:
        """The active code, without spending a try, or say why there is none."""
        return self._usable(now, host).code

    def take_try(self, now: float, host: str) -> str:
        """Spend one try of the active code and return it, or say why there is none."""
        active = self._usable(now, host)
        active.tries_left -= 1
        return active.code

    def burn(self) -> None:
        """The code paired a host: it cannot be used again."""
        self._active = None

    def _usable(self, now: float, host: str) -> _Code:
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
        return active

    def active(self, now: float) -> bool:
        """Whether a code is shown and still usable."""
        return self._active is not None and now < self._active.expires and self._active.tries_left > 0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class AttemptLimit:
    """Pairing attempts per caller address: ``burst`` at once, then one every ``interval`` seconds (a token bucket).

    It remembers at most ``max_addresses`` addresses, forgetting the one heard from longest ago; a forgotten one
    starts again with a full bucket, which is what an address it never heard from gets anyway.
    """

    def __init__(
        self, burst: int = ATTEMPT_BURST, interval: float = ATTEMPT_INTERVAL, max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.burst = burst
        self.interval = interval
        self.max_addresses = max_addresses
        self._buckets: dict[str, _Bucket] = {}  # least recently heard from first

    def take(self, now: float, address: str) -> None:
        """Count one attempt from ``address``, or refuse it with how long to wait."""
        bucket = self._buckets.pop(address, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) / self.interval)
        bucket.at = now
        self._buckets[address] = bucket
        while len(self._buckets) > self.max_addresses:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) * self.interval)
            raise PairingError(
                f"too many pairing attempts came from {address or 'this host'}; wait {wait} s and try again"
            )
        bucket.tokens -= 1

    def __len__(self) -> int:
        return len(self._buckets)
