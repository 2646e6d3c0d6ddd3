"""Ask a peer port for its certificate without trusting it: how an unpaired or configured peer is identified."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

__all__ = ["Certificate", "fetch_certificate"]


class Certificate:
    """What a peer port presented, and how long the handshake took."""

    def __init__(self, der: bytes, rtt: float) -> None:
        self.der = der
        self.rtt = rtt
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_der_x509_certificate(der)
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        self.name = str(names[0].value) if names else ""


def _context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # identification only: the caller compares the hash with what it expects
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context


async def fetch_certificate(host: str, port: int, cert_file: Path, key_file: Path, within: float) -> Certificate:
    """Complete a TLS handshake with ``host:port`` and return the certificate it presented; OSError if it fails."""
    context = _context(cert_file, key_file)
    start = time.perf_counter()
    async with asyncio.timeout(within):
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=None)
    rtt = time.perf_counter() - start
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
    if not der:
        raise OSError(f"{host}:{port} presented no certificate")
    return Certificate(der, rtt)
