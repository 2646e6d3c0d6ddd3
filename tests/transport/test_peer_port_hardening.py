"""The peer port against hosts that never paired: what they send is not read before the check, and they cannot
void a pairing code with garbage or guess it at speed. Real daemons and real gRPC on loopback."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil  # type: ignore[import-untyped]
import pytest

from migrated.transport._auth import OPEN_MESSAGE, TRIM_DELAY, OpenCalls, PairedOnly
from migrated.transport._errors import ErrorInterceptor
from migrated.transport._identity import TLS_NAME, Identity, load_identity
from migrated.transport._pairing import PairingClient, Party
from migrated.transport.v1 import peer_pb2, peer_pb2_grpc
from tests.conftest import Daemon, Daemons
from tests.helpers import one_sentence, peer_channel, stranger

OK, INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,
)
MiB = 1024 * 1024
LARGE = 15 * 1000 * 1000
PARALLEL = 8
ROUNDS = 2
RSS_BOUND = 40 * MiB  # reading and decoding one of the large messages would take about 45 MiB
# Pairing requests are read one per address at a time (never all eight at once), and the heap they used is trimmed.
PAIRING_PEAK_BOUND = 160 * MiB
PAIRING_AFTER_BOUND = 96 * MiB


def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return OK


def rss_growth(pid: int, flood: Callable[[], None], settle: float = 0.0) -> tuple[int, int, str]:
    """How far the RSS rose during ``flood`` (sampled every 10 ms) and ``settle`` s after it, and both in words."""
    process, done = psutil.Process(pid), threading.Event()
    before = peak = process.memory_info().rss

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        flood()
    finally:
        done.set()
        sampler.join()
    time.sleep(settle)
    after = process.memory_info().rss
    return (
        peak - before,
        after - before,
        f"{(peak - before) / MiB:.0f} MiB at the peak, {(after - before) / MiB:.0f} after",
    )


def test_large_calls_from_an_unpaired_host_are_refused_before_they_are_read(daemons: Daemons, tmp_path: Path) -> None:
    alpha = daemons.start("--name", "alpha")
    mallory = stranger(tmp_path)
    payload = b"\x5a" * LARGE

    def ping(data: bytes) -> grpc.StatusCode:
        with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
            stub = peer_pb2_grpc.PeerStub(ch)
            return status_of(lambda: stub.Ping(peer_pb2.PingRequest(payload=data), timeout=60))

    def flood() -> None:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for _ in range(ROUNDS):
                assert list(pool.map(lambda _: ping(payload), range(PARALLEL))) == [PERMISSION_DENIED] * PARALLEL

    assert ping(b"warm up") == PERMISSION_DENIED
    peak, after, grew = rss_growth(alpha.pid, flood)
    assert peak < RSS_BOUND and after < RSS_BOUND, grew
    assert alpha.alive()
    alpha.mig("status")


def test_large_pairing_requests_are_refused_few_at_a_time_and_their_memory_returned(
    daemons: Daemons, tmp_path: Path
) -> None:
    alpha = daemons.start("--name", "alpha")
    mallory = stranger(tmp_path)
    hello = hello_of(mallory, "x" * LARGE)

    def pair_begin(_: int) -> tuple[grpc.StatusCode, str]:
        with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
            try:
                peer_pb2_grpc.PairingStub(ch).PairBegin(peer_pb2.PairBeginRequest(client=hello), timeout=60)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
        return OK, ""

    def flood() -> None:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for _ in range(ROUNDS):
                for code, details in pool.map(pair_begin, range(PARALLEL)):
                    assert code != OK
                    if code == UNAVAILABLE:
                        assert details.startswith("the other host is busy with requests from unpaired hosts; wait")

    peak, after, grew = rss_growth(alpha.pid, flood, settle=2 * TRIM_DELAY)
    assert peak < PAIRING_PEAK_BOUND and after < PAIRING_AFTER_BOUND, grew
    assert alpha.alive()


def test_the_request_of_an_unpaired_caller_is_never_decoded(tmp_path: Path) -> None:
    alpha, beta, mallory = (load_identity(tmp_path / name, name) for name in ("alpha", "beta", "mallory"))
    decoded: list[bytes] = []

    def deserialize(raw: bytes) -> peer_pb2.PingRequest:
        decoded.append(raw)
        return peer_pb2.PingRequest.FromString(raw)

    async def ping(request: peer_pb2.PingRequest, context: Any) -> peer_pb2.PingReply:
        return peer_pb2.PingReply(payload=request.payload)

    async def pings(requests: Any, context: Any) -> peer_pb2.PingReply:
        return peer_pb2.PingReply(payload=b"".join([request.payload async for request in requests]))

    reply = peer_pb2.PingReply.SerializeToString
    handlers = {
        "Ping": grpc.unary_unary_rpc_method_handler(ping, deserialize, reply),
        "Pings": grpc.stream_unary_rpc_method_handler(pings, deserialize, reply),
    }

    async def call(address: str, who: Identity, method: str, *payloads: bytes) -> tuple[grpc.StatusCode, bytes]:
        creds = grpc.ssl_channel_credentials(alpha.cert_pem, who.key_pem, who.client_cert_pem)
        async with grpc.aio.secure_channel(address, creds, [("grpc.ssl_target_name_override", TLS_NAME)]) as ch:
            requests = [peer_pb2.PingRequest(payload=payload) for payload in payloads]
            send, answer = peer_pb2.PingRequest.SerializeToString, peer_pb2.PingReply.FromString
            try:
                if method.endswith("Pings"):
                    reply = await ch.stream_unary(method, send, answer)(iter(requests), timeout=10)
                else:
                    reply = await ch.unary_unary(method, send, answer)(requests[0], timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), b""
            return OK, reply.payload

    async def stalled(address: str, who: Identity, method: str) -> grpc.StatusCode:
        async def nothing() -> AsyncIterator[bytes]:
            await asyncio.sleep(10)
            yield b""

        creds = grpc.ssl_channel_credentials(alpha.cert_pem, who.key_pem, who.client_cert_pem)
        async with grpc.aio.secure_channel(address, creds, [("grpc.ssl_target_name_override", TLS_NAME)]) as ch:
            try:
                await ch.stream_unary(method, None, None)(nothing(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                assert "gave up waiting" in (exc.details() or "")
                return exc.code()
        return OK

    async def scenario() -> None:
        trusted = {beta.client_cert_hash}.__contains__
        guard = PairedOnly(("migrated.v1.Peer",), trusted, "not paired", OpenCalls(timeout=0.3))
        server = grpc.aio.server(interceptors=[ErrorInterceptor(), guard])
        for service in ("migrated.v1.Peer", "migrated.v1.Pairing"):  # guarded, and open to anyone
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        address = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', alpha.server_credentials())}"
        await server.start()
        try:
            for method in ("/migrated.v1.Peer/Ping", "/migrated.v1.Peer/Pings"):
                assert await call(address, mallory, method, b"secret", b"more") == (PERMISSION_DENIED, b"")
            assert decoded == []
            assert await call(address, beta, "/migrated.v1.Peer/Ping", b"hi") == (OK, b"hi")
            assert await call(address, beta, "/migrated.v1.Peer/Pings", b"a", b"b") == (OK, b"ab")
            assert len(decoded) == 3
            # An open service decodes what anyone sends, but nothing larger than a pairing message.
            assert await call(address, mallory, "/migrated.v1.Pairing/Ping", b"hi") == (OK, b"hi")
            big = b"x" * OPEN_MESSAGE
            assert await call(address, mallory, "/migrated.v1.Pairing/Ping", big) == (INVALID_ARGUMENT, b"")
            assert len(decoded) == 4
            # A call that never sends its request gives its place up after the timeout.
            assert await stalled(address, mallory, "/migrated.v1.Pairing/Ping") == UNAVAILABLE
            assert await call(address, mallory, "/migrated.v1.Pairing/Ping", b"again") == (OK, b"again")
        finally:
            await server.stop(None)

    asyncio.run(scenario())


# -- pairing codes against garbage and guessing


def hello_of(who: Identity, name: str) -> peer_pb2.PeerHello:
    return peer_pb2.PeerHello(name=name, cert_pem=who.cert_pem, client_cert_pem=who.client_cert_pem, port=1)


def admitted(call: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run a PairBegin call again while the daemon says to wait; return its result or its error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if "wait" not in (exc.details() or "") or time.monotonic() > deadline:
                return exc
        time.sleep(0.5)


def mig_pair(daemon: Daemon, address: str, code: str, timeout: float = 20.0) -> tuple[int, str, str]:
    """``mig pair ADDRESS CODE``, again while the other host says to wait."""
    deadline = time.monotonic() + timeout
    while True:
        result = daemon.mig("pair", address, code, check=None)
        if "wait" not in result.err or time.monotonic() > deadline:
            return result.code, result.out, result.err
        time.sleep(0.5)


@pytest.mark.slow
def test_malformed_pairing_attempts_do_not_void_the_code(daemons: Daemons, tmp_path: Path) -> None:
    alpha, beta = daemons.start("--name", "alpha"), daemons.start("--name", "beta")
    code = json.loads(alpha.mig("pair", "--json").out)["code"]
    mallory = stranger(tmp_path)
    garbage_spake = [b"", b"A", b"\x00" * 33, b"B" + bytes(32), b"x" * 100]
    with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
        stub = peer_pb2_grpc.PairingStub(ch)
        for spake in garbage_spake:
            request = peer_pb2.PairBeginRequest(client=hello_of(mallory, "mallory"), spake_message=spake)
            refused = admitted(functools.partial(stub.PairBegin, request, timeout=10))
            assert isinstance(refused, grpc.RpcError), refused
            assert refused.code() == PERMISSION_DENIED
            assert "malformed" in (refused.details() or "")
    status, out, err = mig_pair(beta, alpha.address, code)
    assert status == 0 and out.startswith("paired with alpha"), (status, out, err)
    assert alpha.peers()["beta"]["paired"]
    # Bytes that are no request at all are refused as such (and the daemon logs no traceback).
    with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
        raw = ch.unary_unary("/migrated.v1.Pairing/PairBegin", None, None)  # sends the bytes as they are
        refused = admitted(lambda: raw(b"\xff\xff\xff\xff", timeout=10))
        assert isinstance(refused, grpc.RpcError) and refused.code() == INVALID_ARGUMENT


@pytest.mark.slow
def test_pairing_attempts_are_limited_per_address_and_wrong_codes_spend_tries(daemons: Daemons, tmp_path: Path) -> None:
    alpha, beta = daemons.start("--name", "alpha"), daemons.start("--name", "beta")
    code = json.loads(alpha.mig("pair", "--json").out)["code"]
    wrong = f"{(int(code.replace('-', '')) + 1) % 10**8:08d}"
    mallory = stranger(tmp_path)
    me = Party("mallory", "", "")
    with peer_channel(alpha, mallory.key_pem, mallory.client_cert_pem) as ch:
        stub = peer_pb2_grpc.PairingStub(ch)

        def guess() -> peer_pb2.PairBeginReply:
            message = PairingClient(wrong, me).message
            request = peer_pb2.PairBeginRequest(client=hello_of(mallory, "mallory"), spake_message=message)
            return stub.PairBegin(request, timeout=10)

        for _ in range(3):
            assert guess().session  # a wrong code is answered like a right one: only the client can tell
        with pytest.raises(grpc.RpcError) as refused:
            guess()
        assert refused.value.code() == PERMISSION_DENIED
        details = refused.value.details() or ""
        assert details.startswith("too many pairing attempts came from 127.0.0.1; wait ")
        assert details.endswith(" s and try again") and "\n" not in details
        for _ in range(2):
            assert isinstance(admitted(guess), peer_pb2.PairBeginReply)
    # Five well-formed guesses spent the five tries of the code.
    status, _, err = mig_pair(beta, alpha.address, code)
    assert status == 11 and "tried too often" in one_sentence(err)
    assert "beta" not in alpha.peers()
