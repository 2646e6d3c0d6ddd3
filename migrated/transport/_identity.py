"""This daemon's identity (a key pair, a self-signed certificate, a client certificate) and its TLS credentials.

The device id is the SHA-256 of the self-signed certificate, which the daemon presents as a server; callers pin
it as their only root. As a client it presents a certificate for the same key issued by the open CA (see
``_open_ca``), and the peer server pins the SHA-256 of that one.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from migrated._paths import check_owned
from migrated.errors import StateDirError
from migrated.transport._open_ca import OPEN_CA_CERT

if TYPE_CHECKING:  # cryptography is imported where certificates are made or parsed, not at every start
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "TLS_NAME",
    "Identity",
    "cert_hash",
    "channel_credentials",
    "channel_options",
    "load_identity",
    "public_key_of",
]

TLS_NAME = "migrated.peer"  # every daemon's certificate names this; the pin, not the name, says which daemon
_VALID = datetime.timedelta(days=365 * 100)


@dataclass(frozen=True, slots=True)
class Identity:
    """A daemon's key and certificates (PEM)."""

    key_pem: bytes
    cert_pem: bytes
    client_cert_pem: bytes

    @property
    def device_id(self) -> str:
        """SHA-256 of the self-signed certificate, in hex."""
        return cert_hash(self.cert_pem)

    @property
    def client_cert_hash(self) -> str:
        """SHA-256 of the client certificate, in hex: what paired peers pin."""
        return cert_hash(self.client_cert_pem)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS: present the self-signed certificate, require a client certificate from the open CA."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=OPEN_CA_CERT, require_client_auth=True
        )


def cert_hash(pem: bytes) -> str:
    """SHA-256 of a certificate's DER encoding, in hex; ValueError if it is no PEM certificate."""
    text = pem.decode("ascii", errors="replace").strip()
    if not text.startswith("-----BEGIN CERTIFICATE-----"):
        raise ValueError("not a PEM certificate")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


def public_key_of(pem: bytes) -> bytes:
    """The certificate's public key (SubjectPublicKeyInfo, DER); ValueError if it cannot be parsed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(pem).public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def channel_credentials(identity: Identity, peer_cert_pem: bytes) -> grpc.ChannelCredentials:
    """Mutual TLS to one peer: trust only its pinned certificate, present our client certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=peer_cert_pem, private_key=identity.key_pem, certificate_chain=identity.client_cert_pem
    )


def channel_options() -> list[tuple[str, str | int]]:
    """Channel options every peer channel uses."""
    return [("grpc.ssl_target_name_override", TLS_NAME), ("grpc.default_authority", TLS_NAME)]


def load_identity(directory: Path, name: str) -> Identity:
    """Load the identity kept in ``directory``, creating it (0600 files) on first start; ours only."""
    paths = [directory / "key.pem", directory / "cert.pem", directory / "client.pem"]
    try:
        check_owned(directory, private=True)
        if all([check_owned(path, private=True) for path in paths]):  # a list: every file is checked
            key_pem, cert_pem, client_pem = (path.read_bytes() for path in paths)
            return Identity(key_pem, cert_pem, client_pem)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = _new_identity(name)
        for path, data in zip(paths, (identity.key_pem, identity.cert_pem, identity.client_cert_pem), strict=True):
            _write_private(path, data)
    except OSError as exc:
        raise StateDirError(
            f"cannot read or create this host's identity in {directory}: {exc.strerror}; fix its permissions"
        ) from None
    return identity


def _new_identity(name: str) -> Identity:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from migrated.transport._open_ca import OPEN_CA_KEY

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "migrated")])
    cert = _certificate(key.public_key(), subject, subject, key)
    ca_cert = x509.load_pem_x509_certificate(OPEN_CA_CERT)
    ca_key = serialization.load_pem_private_key(OPEN_CA_KEY, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    client = _certificate(key.public_key(), subject, ca_cert.subject, ca_key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Identity(key_pem, _pem(cert), _pem(client))


def _certificate(
    public_key: ec.EllipticCurvePublicKey, subject: x509.Name, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALID)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
