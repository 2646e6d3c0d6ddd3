"""Who stands behind an export: this host signs what it exports; an import says who signed it, if anyone.

Opening an imported app runs its code, so ``mig import`` says in words when no trusted host signed the file:
this host, or a paired one (pairing is full trust). A signature that does not match refuses the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrated.checkpoint import Export
from migrated.discovery._paired import PairedPeers
from migrated.errors import ExportFileError
from migrated.transport._identity import Identity
from migrated.transport._signing import sign_export, signer_of

__all__ = ["ExportTrust", "Signer"]


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signed an export: a host's name and device id ("" for none), and whether this host trusts it."""

    name: str
    device_id: str
    trusted: bool

    def warning(self, app: str, source: str) -> str:
        """The sentence an import of an untrusted file prints ("" for a trusted one)."""
        if self.trusted:
            return ""
        who = (
            f"is signed by a host this one is not paired with (device id {self.device_id[:16]})"
            if self.device_id
            else "is not signed by any host"
        )
        return (
            f"{source} {who}: opening {app!r} runs the code it holds, so open it only if you trust where the "
            "file came from"
        )


class ExportTrust:
    """Signs this host's exports; names the signer of an import."""

    def __init__(self, identity: Identity, host: str, paired: PairedPeers) -> None:
        self._identity = identity
        self._host = host
        self._paired = paired

    def sign(self, digest: bytes) -> tuple[bytes, bytes]:
        """This host's certificate and signature of an export's digest."""
        return sign_export(self._identity, digest)

    def signer(self, export: Export, source: str) -> Signer:
        """Who signed ``export``; ``ExportFileError`` when its signature does not match it."""
        signature = export.signature
        if signature is None:
            return Signer("", "", False)
        try:
            device_id = signer_of(signature.cert_pem, signature.signature, signature.digest)
        except ValueError as exc:
            raise ExportFileError(
                f"{source} carries a signature that does not match it ({exc}); it was changed after it was "
                "signed, so it was not imported"
            ) from None
        if device_id == self._identity.device_id:
            return Signer(self._host, device_id, True)
        peer = self._paired.by_device(device_id)
        return Signer(peer.name, device_id, True) if peer is not None else Signer("", device_id, False)
