"""Peer RPCs: round trip and throughput of ``Peer.Ping`` over mutual TLS with the paired check, beside the same call
without TLS, in the same run.

Three servers answer the same Ping on loopback, each in its own process:

- ``plain``: a bare grpc.aio server without TLS (the baseline);
- ``mtls``: the same server with the daemon's credentials and its paired-only check (what TLS and the pin cost);
- ``daemon``: a real ``migrated`` that the client is paired with (the whole path).

The client is one synchronous gRPC channel, warmed up first. Round trips are empty pings; throughput is 1 MiB
payloads echoed back (so 2 MiB cross per call).

Run: ``python -m bench.peer_rpc [--calls N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench._common import PYTHON, Daemon, summary, write_results
from migrated.transport._identity import TLS_NAME, load_identity
from migrated.transport.v1 import peer_pb2, peer_pb2_grpc

PAYLOAD = 1024 * 1024


async def _serve(mode: str, identity_dir: Path, client_hash: str, port_file: Path) -> None:
    import grpc.aio

    from migrated.transport._auth import PairedOnly

    class Echo(peer_pb2_grpc.PeerServicer):  # only Ping is served
        async def Ping(self, request: peer_pb2.PingRequest, context: Any) -> peer_pb2.PingReply:
            return peer_pb2.PingReply(name="bench", payload=request.payload)

    options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
    if mode == "plain":
        server = grpc.aio.server(options=options)
    else:
        server = grpc.aio.server(
            options=options, interceptors=[PairedOnly(("migrated.v1.Peer",), lambda h: h == client_hash, "no")]
        )
    peer_pb2_grpc.add_PeerServicer_to_server(Echo(), server)  # type: ignore[abstract]
    if mode == "plain":
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", load_identity(identity_dir, "server").server_credentials())
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(port))
    await server.wait_for_termination()


def _measure(channel: grpc.Channel, calls: int) -> dict[str, Any]:
    stub = peer_pb2_grpc.PeerStub(channel)
    for _ in range(20):
        stub.Ping(peer_pb2.PingRequest(), timeout=10)
    rtts = []
    for _ in range(calls):
        start = time.perf_counter()
        stub.Ping(peer_pb2.PingRequest(), timeout=10)
        rtts.append((time.perf_counter() - start) * 1000)
    payload = os.urandom(PAYLOAD)
    rounds = max(20, calls // 20)
    start = time.perf_counter()
    for _ in range(rounds):
        assert len(stub.Ping(peer_pb2.PingRequest(payload=payload), timeout=30).payload) == PAYLOAD
    elapsed = time.perf_counter() - start
    return {"rtt_ms": summary(rtts), "echo_mb_per_s": 2 * PAYLOAD * rounds / elapsed / 1e6}


def _server_process(mode: str, identity_dir: Path, client_hash: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"{mode}.port"
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.peer_rpc", "--serve", mode, str(identity_dir), client_hash, str(port_file)]
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the {mode} server did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def run(calls: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="migbench"))
    client = load_identity(tmp / "client", "client")
    server_dir = tmp / "server"
    server = load_identity(server_dir, "server")
    results: dict[str, Any] = {}
    procs = []
    try:
        for mode in ("plain", "mtls"):
            proc, port = _server_process(mode, server_dir, client.client_cert_hash, tmp)
            procs.append(proc)
            if mode == "plain":
                channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_options())
            else:
                creds = grpc.ssl_channel_credentials(server.cert_pem, client.key_pem, client.client_cert_pem)
                channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=_options(tls=True))
            with channel:
                results[mode] = _measure(channel, calls)
        with Daemon() as alpha, Daemon() as beta:
            code = json.loads(alpha.mig("pair", "--json").stdout)["code"]
            listen = json.loads(alpha.mig("status", "--json").stdout)["listen"]
            beta.mig("pair", listen, code)
            beta_id = load_identity(beta.dir / "state" / "identity", "beta")
            creds = grpc.ssl_channel_credentials(
                (alpha.dir / "state" / "identity" / "cert.pem").read_bytes(),
                beta_id.key_pem,
                beta_id.client_cert_pem,
            )
            with grpc.secure_channel(listen, creds, options=_options(tls=True)) as channel:
                results["daemon"] = _measure(channel, calls)
            start = time.perf_counter()
            beta.mig("ping", "-c", "1", listen)
            results["mig_ping_command_ms"] = (time.perf_counter() - start) * 1000
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    plain = results["plain"]["rtt_ms"]["median"]
    results["mtls_over_plain_rtt"] = results["mtls"]["rtt_ms"]["median"] / plain
    results["daemon_over_plain_rtt"] = results["daemon"]["rtt_ms"]["median"] / plain
    results["mtls_over_plain_throughput"] = results["mtls"]["echo_mb_per_s"] / results["plain"]["echo_mb_per_s"]
    return results


def _options(tls: bool = False) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 16 << 20)]
    options.append(("grpc.max_send_message_length", 16 << 20))
    if tls:
        options.append(("grpc.ssl_target_name_override", TLS_NAME))
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", nargs=4, metavar=("MODE", "IDENTITY_DIR", "CLIENT_HASH", "PORT_FILE"))
    args = parser.parse_args()
    if args.serve:
        mode, identity_dir, client_hash, port_file = args.serve
        asyncio.run(_serve(mode, Path(identity_dir), client_hash, Path(port_file)))
        return
    results = run(args.calls)
    path = write_results("peer_rpc", {"calls": args.calls, **results})
    json.dump(results, sys.stdout, indent=2)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
