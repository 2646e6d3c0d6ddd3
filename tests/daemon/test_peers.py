"""Pairing, mutual TLS and the peer port, between real daemons on loopback (mDNS off; across network namespaces, with
mDNS: tests/discovery/test_bed_peers.py)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from migrated.transport._identity import TLS_NAME, load_identity
from migrated.transport._open_ca import OPEN_CA_CERT, OPEN_CA_KEY
from migrated.transport.v1 import peer_pb2, peer_pb2_grpc
from tests.conftest import Daemon, Daemons
from tests.helpers import (
    MIGRATED,
    journal,
    json_state_files,
    one_sentence,
    pair,
    paired_rows,
    peer_channel,
    stranger,
    wait_until,
)


@pytest.fixture
def two(daemons: Daemons) -> tuple[Daemon, Daemon]:
    return daemons.start("--name", "alpha"), daemons.start("--name", "beta")


def test_pairing_with_a_code_makes_both_hosts_trust_each_other(two: tuple[Daemon, Daemon]) -> None:
    alpha, beta = two
    shown = json.loads(alpha.mig("pair", "--json").out)
    assert set(shown) == {"code", "expires"}
    assert dt.datetime.fromisoformat(shown["expires"]) > dt.datetime.now(dt.UTC)
    out = beta.mig("pair", alpha.address, shown["code"]).out
    assert out.startswith("paired with alpha")
    on_beta, on_alpha = beta.peers()["alpha"], alpha.peers()["beta"]
    assert on_beta["paired"] and on_alpha["paired"]
    assert on_beta["device_id"] == alpha.status()["device_id"] and on_alpha["device_id"] == beta.status()["device_id"]
    assert on_beta["address"] == alpha.address and on_alpha["address"] == beta.address
    assert on_beta["reachable"] and on_beta["version"] == "0.1.0"
    assert {"name", "address", "device_id", "paired", "reachable", "version"} <= set(on_beta)
    for daemon, other in ((alpha, "beta"), (beta, "alpha")):
        out = daemon.mig("ping", other, "-c", "3").out
        assert "TLS ok" in out and "paired both ways" in out
        assert [p["name"] for p in json.loads(daemon.mig("pair", "--list", "--json").out)] == [other]
    # The code is spent.
    err = beta.mig("pair", alpha.address, shown["code"], check=11).err
    assert "shows no pairing code" in one_sentence(err)


def test_a_wrong_code_is_refused_and_a_code_dies_after_five_tries(two: tuple[Daemon, Daemon]) -> None:
    alpha, beta = two
    code = json.loads(alpha.mig("pair", "--json").out)["code"]
    wrong = f"{(int(code.replace('-', '')) + 1) % 10**8:08d}"
    for _ in range(5):
        assert "code is wrong" in one_sentence(refused_pair(beta, alpha.address, wrong))
    assert "tried too often" in one_sentence(refused_pair(beta, alpha.address, code))
    assert alpha.peers() == {} and json.loads(beta.mig("pair", "--list", "--json").out) == []
    err = beta.mig("pair", alpha.address, "12-34", check=11).err
    assert "not a pairing code" in one_sentence(err)


def refused_pair(daemon: Daemon, address: str, code: str) -> str:
    """The error of a failing ``mig pair``, tried again while the other host says to wait (3 tries, then 1 per 2 s)."""
    while "; wait " in (err := daemon.mig("pair", address, code, check=11).err):
        time.sleep(0.5)
    return err


def test_an_expired_code_is_refused(two: tuple[Daemon, Daemon]) -> None:
    alpha, beta = two
    code = json.loads(alpha.mig("pair", "--ttl", "1", "--json").out)["code"]
    time.sleep(1.2)
    err = beta.mig("pair", alpha.address, code, check=11).err
    assert "expired" in one_sentence(err)
    assert alpha.peers() == {}


def test_unpairing_refuses_the_other_host_at_once(two: tuple[Daemon, Daemon]) -> None:
    alpha, beta = two
    pair(alpha, beta)
    beta.mig("ping", "alpha")
    assert alpha.mig("unpair", "beta").out.startswith("unpaired beta")
    err = beta.mig("ping", "alpha", check=11).err
    assert "alpha has not paired with this host" in one_sentence(err)
    assert "mig pair" in err
    err = alpha.mig("ping", "beta", check=10).err
    assert "beta" in one_sentence(err)
    err = alpha.mig("unpair", "beta", check=10).err
    assert "no paired host" in one_sentence(err)


def test_pairing_and_identity_survive_a_restart(daemons: Daemons) -> None:
    alpha, beta = daemons.start("--name", "alpha"), daemons.start("--name", "beta")
    code = json.loads(alpha.mig("pair", "--json").out)["code"]
    paired = json.loads(beta.mig("pair", alpha.address, code, "--json").out)
    assert (paired["name"], paired["address"], paired["paired"]) == ("alpha", alpha.address, True)
    alpha_id = alpha.status()["device_id"]
    assert not alpha.stop()
    alpha = daemons.start("--name", "alpha", state_dir=alpha.dir)
    assert alpha.status()["device_id"] == alpha_id
    assert alpha.peers()["beta"]["paired"]
    assert (alpha.dir / "identity" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (alpha.dir / "checkpoints.sqlite").stat().st_mode & 0o022 == 0  # the paired table: ours alone to write
    assert (alpha.dir).stat().st_mode & 0o777 == 0o700
    assert json_state_files(alpha.dir) == []


# -- the peer port under attack: raw clients with identities of their own


def call_every_peer_rpc(ch: grpc.Channel) -> dict[str, grpc.RpcError]:
    """Call each method of the Peer service with an empty request; return the errors by method."""
    errors = {}
    for method in peer_pb2.DESCRIPTOR.services_by_name["Peer"].methods:
        request_class = getattr(peer_pb2, method.input_type.name)
        response_class = getattr(peer_pb2, method.output_type.name)
        call = ch.unary_unary(
            f"/migrated.v1.Peer/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            call(request_class(), timeout=10)
        except grpc.RpcError as exc:
            errors[method.name] = exc
    return errors


def test_an_unpaired_peer_is_denied_every_peer_rpc(two: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    alpha, beta = two
    pair(alpha, beta)
    before = paired_rows(alpha.dir)
    mallory = stranger(tmp_path)
    with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
        errors = call_every_peer_rpc(ch)
    methods = [m.name for m in peer_pb2.DESCRIPTOR.services_by_name["Peer"].methods]
    assert sorted(errors) == sorted(methods)
    for exc in errors.values():
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "mig pair" in (exc.details() or "")
    assert paired_rows(alpha.dir) == before
    assert "mallory" not in alpha.peers()


def test_the_pin_is_the_exact_client_certificate(two: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    """A paired peer's key signing another certificate, or the open CA re-issuing one, does not pass."""
    alpha, beta = two
    pair(alpha, beta)
    beta_key_pem = (beta.dir / "identity" / "key.pem").read_bytes()
    beta_key = serialization.load_pem_private_key(beta_key_pem, None)
    beta_cert = x509.load_pem_x509_certificate((beta.dir / "identity" / "cert.pem").read_bytes())
    assert isinstance(beta_key, ec.EllipticCurvePrivateKey)
    mallory_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    mallory_key_pem = mallory_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Signed by beta's (paired) key: TLS refuses it, as beta's certificate is no root of alpha's.
    signed_by_beta = issue(mallory_key.public_key(), beta_key, beta_cert.subject)
    with peer_channel(alpha, mallory_key_pem, signed_by_beta.public_bytes(pem)) as ch:
        errors = call_every_peer_rpc(ch)
    assert {exc.code() for exc in errors.values()} == {grpc.StatusCode.UNAVAILABLE}
    # Beta's own key in a new certificate from the open CA: TLS passes, the pin does not.
    ca_key = serialization.load_pem_private_key(OPEN_CA_KEY, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    reissued = issue(beta_key.public_key(), ca_key, x509.load_pem_x509_certificate(OPEN_CA_CERT).subject)
    with peer_channel(alpha, beta_key_pem, reissued.public_bytes(pem)) as ch:
        errors = call_every_peer_rpc(ch)
    assert {exc.code() for exc in errors.values()} == {grpc.StatusCode.PERMISSION_DENIED}
    # Beta's real client certificate passes the pin; empty requests are then refused for what they are.
    with peer_channel(alpha, beta_key_pem, (beta.dir / "identity" / "client.pem").read_bytes()) as ch:
        errors = call_every_peer_rpc(ch)
    assert "Ping" not in errors
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
    assert {exc.code() for exc in errors.values()} <= allowed, errors
    assert journal(alpha.dir, "destination") == []  # nothing recorded from garbage


def issue(public_key: Any, signer: ec.EllipticCurvePrivateKey, issuer: x509.Name) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "beta")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
        .sign(signer, hashes.SHA256())
    )


def test_a_forged_pairing_request_stores_nothing(two: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    alpha, _ = two
    alpha.mig("pair")
    mallory = stranger(tmp_path)
    with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
        stub = peer_pb2_grpc.PairingStub(ch)
        hello = peer_pb2.PeerHello(
            name="mallory", cert_pem=mallory.cert_pem, client_cert_pem=mallory.client_cert_pem, port=1
        )
        with pytest.raises(grpc.RpcError) as garbage:
            stub.PairBegin(peer_pb2.PairBeginRequest(client=hello, spake_message=b"\x00" * 33), timeout=10)
        assert garbage.value.code() == grpc.StatusCode.PERMISSION_DENIED
        other = stranger(tmp_path, "other")
        hello.cert_pem, hello.client_cert_pem = other.cert_pem, other.client_cert_pem  # not this connection's
        with pytest.raises(grpc.RpcError) as mismatch:
            stub.PairBegin(peer_pb2.PairBeginRequest(client=hello, spake_message=b"x"), timeout=10)
        assert "not the one used for this connection" in (mismatch.value.details() or "")
        with pytest.raises(grpc.RpcError) as unknown:
            stub.PairFinish(peer_pb2.PairFinishRequest(session="nope", confirm=b"x" * 32), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert alpha.peers() == {}
    assert paired_rows(alpha.dir) == []


def test_garbage_oversized_and_stalled_connections_leave_the_peer_port_serving(
    daemons: Daemons, tmp_path: Path
) -> None:
    alpha = daemons.start("--name", "alpha", "--handshake-timeout", "1")
    beta = daemons.start("--name", "beta")
    pair(alpha, beta)
    host, port = alpha.address.rsplit(":", 1)
    address = (host, int(port))
    # Stalled connections: TCP only, and a TLS handshake that never finishes.
    stalled = [socket.create_connection(address) for _ in range(20)]
    half = socket.create_connection(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    half.sendall(outgoing.read()[:20])  # a partial ClientHello
    stalled.append(half)
    # Garbage: random bytes, an HTTP request, a huge bogus TLS record.
    for junk in (bytes(range(256)) * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\xff\xff" + b"A" * 70000):
        with socket.create_connection(address) as sock:
            sock.sendall(junk)
    beta.mig("ping", "alpha")  # served while all of that hangs around
    # Oversized: over the 16 MiB message limit, from a paired peer.
    beta_ident = load_identity(beta.dir / "identity", "beta")
    with peer_channel(alpha, beta_ident.key_pem, beta_ident.client_cert_pem) as ch:
        stub = peer_pb2_grpc.PeerStub(ch)
        with pytest.raises(grpc.RpcError) as big:
            stub.Ping(peer_pb2.PingRequest(payload=b"\0" * (17 * 1024 * 1024)), timeout=30)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Ping(peer_pb2.PingRequest(payload=b"ok"), timeout=10).payload == b"ok"

    # The daemon drops connections whose handshake does not finish in time.
    def closed(sock: socket.socket) -> bool:
        sock.settimeout(0.05)
        try:
            return sock.recv(4096) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    wait_until(lambda: all(closed(sock) for sock in stalled), 20, what="the stalled connections to be dropped")
    for sock in stalled:
        sock.close()
    beta.mig("ping", "alpha")
    assert alpha.alive()


def test_configured_peers_are_listed_and_probed(daemons: Daemons) -> None:
    alpha = daemons.start("--name", "alpha")
    gone = "127.0.0.1:9"  # discard port: nothing listens there
    beta = daemons.start("--name", "beta", "--peer", alpha.address, "--peer", gone)
    rows = wait_until(lambda: (r := beta.peers()).get("alpha", {}).get("reachable") and r, 15, what="alpha probed")
    assert rows["alpha"]["device_id"] == alpha.status()["device_id"]
    assert rows["alpha"]["sources"] == ["config"] and not rows["alpha"]["paired"]
    assert rows[gone]["reachable"] is False and rows[gone]["sources"] == ["config"]
    err = beta.mig("ping", "alpha", check=11).err
    assert "not paired" in one_sentence(err)


def test_the_config_file_sets_peers_and_bad_settings_are_one_sentence(daemons: Daemons) -> None:
    alpha = daemons.start("--name", "alpha")
    state = daemons.new_dir()
    (state / "migrated.toml").write_text(f'name = "gamma"\npeers = ["{alpha.address}"]\n')
    gamma = daemons.start(state_dir=state)
    assert json.loads(gamma.mig("status", "--json").out)["host"] == "gamma"
    wait_until(lambda: gamma.peers().get("alpha", {}).get("reachable"), 15, what="alpha from the config file")
    for text, expected in (
        ("listen = [1]\n", "must be a str"),
        ("peers = \n", "not valid TOML"),
        ("colour = 'red'\n", "unknown settings colour"),
        ('peers = ["host:99999"]\n', "no valid port"),
    ):
        bad = daemons.new_dir()
        (bad / "migrated.toml").write_text(text)
        proc = subprocess.run([MIGRATED, "--dir", str(bad)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    taken = subprocess.run(
        [MIGRATED, "--dir", str(daemons.new_dir()), "--listen", alpha.address], capture_output=True, text=True
    )
    assert taken.returncode == 2 and "cannot listen on" in taken.stderr
