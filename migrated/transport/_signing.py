"""Signatures of exports: a host signs what it exports with its own key, an importer checks who signed.

The signer presents its self-signed certificate; the device id is its SHA-256, the same id pairing pins. A
signature proves only that the holder of that key exported the file; whether to trust the holder is the
paired table's to say.
"""

from __future__ import annotations

from migrated.transport._identity import Identity, cert_hash

__all__ = ["sign_export", "signer_of"]

_DOMAIN = b"migrated export signature v1\0"


def sign_export(identity: Identity, digest: bytes) -> tuple[bytes, bytes]:
    """This host's certificate and its ECDSA signature of an export's ``digest``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return identity.cert_pem, key.sign(_DOMAIN + digest, ec.ECDSA(hashes.SHA256()))


def signer_of(cert_pem: bytes, signature: bytes, digest: bytes) -> str:
    """The device id of the host that signed ``digest`` with ``signature``; ``ValueError`` if it did not."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the signing certificate's key is not an elliptic-curve key")  # noqa: TRY004 - bad input
    try:
        key.verify(signature, _DOMAIN + digest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("the signature does not match the file") from None
    return cert_hash(cert_pem)
