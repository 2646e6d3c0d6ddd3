"""Raw gRPC streaming throughput between two processes: the physical limit of a chunk transfer between hosts,
beside a raw TCP stream of the same bytes, in the same run.

A client streams N bytes as M-byte messages (64 KiB, the size of our chunks, and 1 MiB) to a server that only
counts them and answers with the count at the end of the stream; the time runs from the start of the stream
until the client has the answer. Four transports, each a server and a client in their own processes:

- ``tcp``: a raw TCP socket, ``sendall`` of each message, the server ``recv_into`` one buffer (the baseline);
- ``tcp_mtls``: the same over Python's ``ssl`` with the daemons' certificates (what TLS alone costs);
- ``grpc``: a client-streaming call of the generic API (bytes in, bytes out, no proto) to a grpc.aio server,
  without TLS, from a synchronous client whose request iterator is a generator;
- ``grpc_mtls``: the same with mutual TLS as the daemons set it up.

Two placements: both on 127.0.0.1 in the root namespace, and across two network namespaces of the test bed
(``tests.netbed``: veth pairs on a bridge; needs root, skipped with a message otherwise). Traffic goes only to
127.0.0.1 or the bed's addresses. In each placement the four servers run at once and one client process streams
to them: first a warm-up per transport and message size (connection, TLS handshake, HTTP/2 windows), then
``--repeats`` rounds that each stream the total once per message size and transport, in an order that rotates
from round to round, so that a slow spell of a shared machine falls on all transports alike. The figures are the
median MB/s (10^6 bytes) and the ratio to raw TCP of the same placement and message size, with the CPU time of
the client and of the server per stream (a share of one core; above 100 % when several threads work). The bench
also reports how many cores other processes kept busy meanwhile (``other_load_cores``) and warns when that is
more than 0.2: on a 2-core machine the figures are then not worth much. ``--pin`` puts the client on the first
CPU and the servers on the last, as if on two hosts (the default leaves placement to the scheduler).

Run: ``python -m bench.grpc_stream [--total-mib 512] [--sizes-kib 64 1024] [--repeats 3] [--pin] [--no-netns]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from bench._common import PYTHON, summary, write_results
from migrated.transport._identity import TLS_NAME, channel_options, load_identity
from migrated.transport._open_ca import OPEN_CA_CERT

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("tcp", "tcp_mtls", "grpc", "grpc_mtls")
SERVICE = "bench.Sink"
METHOD = f"/{SERVICE}/Put"
MAX_MESSAGE = 16 << 20
HEADER = struct.Struct("!Q")  # raw TCP: the bytes that follow
REPLY = struct.Struct("!Qd")  # the bytes the server counted, and its CPU seconds so far
START_TIMEOUT = 20.0
RECV_BUFFER = 1 << 20
OTHER_LOAD_WARNING = 0.2  # cores

Send = Callable[[bytes, int], tuple[int, float]]  # stream N copies of a message; the server's (bytes, CPU seconds)
Popen = Callable[..., "subprocess.Popen[bytes]"]


# The server side: `--serve KIND ADDR`, prints its port, ends when its stdin closes.


def _exit_with_stdin() -> None:
    """End this process as soon as stdin reaches EOF: the bench closed it, or the bench died."""

    def watch() -> None:
        with contextlib.suppress(OSError):  # the raw fd: a daemon thread in a buffered read breaks the exit
            while os.read(0, 4096):
                pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _announce(port: int) -> None:
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None at EOF before the first one."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            if data:
                raise ConnectionError("the peer closed in the middle of a header")
            return None
        data += chunk
    return data


def _serve_tcp(tls: bool, addr: str, identities: Path) -> None:
    context = None
    if tls:
        server_dir = identities / "server"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(server_dir / "cert.pem", server_dir / "key.pem")
        context.load_verify_locations(cadata=OPEN_CA_CERT.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server((addr, 0))
    _announce(listener.getsockname()[1])
    buffer = memoryview(bytearray(RECV_BUFFER))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True)
        with conn:
            while (header := _recv_exact(conn, HEADER.size)) is not None:
                (total,) = HEADER.unpack(header)
                got = 0
                while got < total:
                    n = conn.recv_into(buffer, min(RECV_BUFFER, total - got))
                    if not n:
                        raise ConnectionError(f"the client closed after {got} of {total} bytes")
                    got += n
                conn.sendall(REPLY.pack(got, time.process_time()))


async def _serve_grpc(tls: bool, addr: str, identities: Path) -> None:
    import grpc.aio

    async def put(requests: AsyncIterator[bytes], context: Any) -> bytes:
        count = 0
        async for message in requests:
            count += len(message)
        return REPLY.pack(count, time.process_time())

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Put": grpc.stream_unary_rpc_method_handler(put)})
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    )
    server.add_generic_rpc_handlers((handler,))
    if tls:
        credentials = load_identity(identities / "server", "server").server_credentials()
        port = server.add_secure_port(f"{addr}:0", credentials)
    else:
        port = server.add_insecure_port(f"{addr}:0")
    await server.start()
    _announce(port)
    await server.wait_for_termination()


def serve(kind: str, addr: str, identities: Path) -> None:
    _exit_with_stdin()
    if kind.startswith("grpc"):
        asyncio.run(_serve_grpc(kind == "grpc_mtls", addr, identities))
    else:
        _serve_tcp(kind == "tcp_mtls", addr, identities)


# The client side: `--send ADDR KIND:PORT...`, prints its samples as JSON.


@contextlib.contextmanager
def _tcp_sender(tls: bool, addr: str, port: int, identities: Path) -> Iterator[Send]:
    sock = socket.create_connection((addr, port), timeout=START_TIMEOUT)
    sock.settimeout(None)  # blocking, no poll() per call; the bench kills a client that hangs
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=identities / "server" / "cert.pem")
        context.load_cert_chain(identities / "client" / "client.pem", identities / "client" / "key.pem")
        sock = context.wrap_socket(sock, server_hostname=TLS_NAME)

    def send(payload: bytes, count: int) -> tuple[int, float]:
        sock.sendall(HEADER.pack(len(payload) * count))
        for _ in range(count):
            sock.sendall(payload)
        reply = _recv_exact(sock, REPLY.size)
        if reply is None:
            raise ConnectionError("the server closed without answering")
        got, cpu = REPLY.unpack(reply)
        return got, cpu

    with sock:
        yield send


@contextlib.contextmanager
def _grpc_sender(tls: bool, addr: str, port: int, identities: Path) -> Iterator[Send]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.enable_http_proxy", 0),  # never through a proxy from the environment: bed or loopback only
    ]
    target = f"{addr}:{port}"
    if tls:
        server = load_identity(identities / "server", "server")
        client = load_identity(identities / "client", "client")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=server.cert_pem, private_key=client.key_pem, certificate_chain=client.client_cert_pem
        )
        channel = grpc.secure_channel(target, credentials, options=[*channel_options(), *options])
    else:
        channel = grpc.insecure_channel(target, options=options)
    put = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)

    def send(payload: bytes, count: int) -> tuple[int, float]:
        def messages() -> Iterator[bytes]:
            for _ in range(count):
                yield payload

        got, cpu = REPLY.unpack(put(messages(), timeout=60 + len(payload) * count / 10e6))
        return got, cpu

    with channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        yield send


def send(
    addr: str, targets: list[tuple[str, int]], sizes: list[int], total: int, warmup: int, repeats: int, identities: Path
) -> None:
    """Stream to every server: a warm-up per transport and size, then ``repeats`` rounds that each stream ``total``
    bytes once per size and transport, the transports in a rotating order, so that a slow spell of a shared machine
    falls on all of them alike."""
    _exit_with_stdin()
    payloads = {size: os.urandom(size) for size in sizes}
    results: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind, _ in targets}
    with contextlib.ExitStack() as stack:
        streams: dict[str, Send] = {}
        server_cpu: dict[str, float] = {}
        for kind, port in targets:
            sender = _grpc_sender if kind.startswith("grpc") else _tcp_sender
            streams[kind] = stack.enter_context(sender(kind.endswith("_mtls"), addr, port, identities))
            for size in sizes:
                _, server_cpu[kind] = streams[kind](payloads[size], max(1, warmup // size))
                count = max(1, total // size)
                results[kind][str(size)] = {
                    "bytes": count * size,
                    "elapsed_s": [],
                    "client_cpu_s": [],
                    "server_cpu_s": [],
                }
        kinds = list(streams)
        for round_ in range(repeats):
            for size in sizes:
                for kind in kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]:
                    row = results[kind][str(size)]
                    cpu = time.process_time()
                    start = time.perf_counter()
                    got, server_now = streams[kind](payloads[size], row["bytes"] // size)
                    row["elapsed_s"].append(time.perf_counter() - start)
                    row["client_cpu_s"].append(time.process_time() - cpu)
                    row["server_cpu_s"].append(server_now - server_cpu[kind])
                    server_cpu[kind] = server_now
                    if got != row["bytes"]:
                        raise RuntimeError(f"the {kind} server counted {got} bytes of {row['bytes']}")
    json.dump(results, sys.stdout)


# The bench: the servers and a client in each placement, then the table.


def _pinned(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["--cpu", str(cpu)]


def _start_server(
    popen: Popen, kind: str, addr: str, identities: Path, cpu: int | None
) -> tuple[subprocess.Popen[bytes], int]:
    argv = [PYTHON, "-m", "bench.grpc_stream", "--serve", kind, addr, "--identities", str(identities), *_pinned(cpu)]
    proc = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    line = b""
    if select.select([proc.stdout], [], [], START_TIMEOUT)[0]:
        line = proc.stdout.readline()
    if not line.strip().isdigit():
        _stop(proc)
        raise RuntimeError(f"the {kind} server on {addr} did not start (exit status {proc.returncode})")
    return proc, int(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the process's stdin (servers and clients end on that); kill it if it is still there after 5 s."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _client(
    popen: Popen, addr: str, ports: dict[str, int], args: argparse.Namespace, identities: Path, cpu: int | None
) -> dict[str, Any]:
    argv = [PYTHON, "-m", "bench.grpc_stream", "--send", addr, *(f"{kind}:{port}" for kind, port in ports.items())]
    argv += ["--identities", str(identities), "--sizes", *(str(kib << 10) for kib in args.sizes_kib)]
    argv += ["--total", str(args.total_mib << 20), "--warmup", str(args.warmup_mib << 20)]
    argv += ["--repeats", str(args.repeats), *_pinned(cpu)]
    proc = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)  # its stderr is ours
    streams = len(ports) * len(args.sizes_kib)
    timeout = 60 + streams * (args.warmup_mib + args.repeats * args.total_mib) * 1.05 / 10  # at least 10 MB/s
    assert proc.stdout is not None
    out = b""
    try:
        deadline = time.monotonic() + timeout
        while select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            out += chunk
        else:
            raise RuntimeError(f"the client to {addr} took more than {timeout:.0f} s")
        proc.wait(START_TIMEOUT)
    finally:
        _stop(proc)  # the client ends when its stdin closes, so also when this bench fails or is interrupted
    if proc.returncode != 0:
        raise RuntimeError(f"the client to {addr} failed with exit status {proc.returncode} (its stderr is above)")
    result: dict[str, Any] = json.loads(out)
    return result


def _measure(row: dict[str, Any]) -> dict[str, Any]:
    elapsed = row["elapsed_s"]
    return {
        **row,
        "mb_per_s": summary([row["bytes"] / t / 1e6 for t in elapsed]),
        "client_cpu_share": summary([c / t for c, t in zip(row["client_cpu_s"], elapsed, strict=True)]),
        "server_cpu_share": summary([c / t for c, t in zip(row["server_cpu_s"], elapsed, strict=True)]),
    }


def _placement(
    name: str, server_popen: Popen, client_popen: Popen, addr: str, args: argparse.Namespace, identities: Path
) -> dict[str, Any]:
    print(f"{name}: streaming to {addr} ...", file=sys.stderr, flush=True)
    client_cpu, server_cpu = _cpus(args.pin)
    machine_before, ours_before, start = _machine_cpu(), _our_cpu(), time.perf_counter()
    servers = []
    try:
        ports = {}
        for kind in KINDS:
            server, ports[kind] = _start_server(server_popen, kind, addr, identities, server_cpu)
            servers.append(server)
        raw = _client(client_popen, addr, ports, args, identities, client_cpu)
    finally:
        for server in servers:
            _stop(server)
    # CPU the machine spent beyond this bench and its (waited-for) children: other load that skews the figures.
    other = (_machine_cpu() - machine_before) - (_our_cpu() - ours_before)
    results: dict[str, Any] = {"server_addr": addr, "other_load_cores": other / (time.perf_counter() - start)}
    if results["other_load_cores"] > OTHER_LOAD_WARNING:
        print(
            f"warning: other processes kept {results['other_load_cores']:.1f} cores busy while {name} was measured; "
            "its figures are not reliable",
            file=sys.stderr,
        )
    for kind in KINDS:
        results[kind] = {size: _measure(row) for size, row in raw[kind].items()}
    for kind in KINDS[1:]:
        for size, row in results[kind].items():
            row["ratio_to_tcp"] = row["mb_per_s"]["median"] / results["tcp"][size]["mb_per_s"]["median"]
    return results


def _machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq), from /proc/stat."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _our_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _cpus(pin: bool) -> tuple[int | None, int | None]:
    """The CPUs for the client and the servers: the first and the last one this process may use, with ``--pin``."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return cpus[0], cpus[-1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.netbed import NetBed, netbed_available

    identities = Path(tempfile.mkdtemp(prefix="mig", dir="/tmp"))
    placements: dict[str, Any] = {}
    try:
        load_identity(identities / "server", "server")
        load_identity(identities / "client", "client")
        placements["loopback"] = _placement(
            "loopback", subprocess.Popen, subprocess.Popen, "127.0.0.1", args, identities
        )
        ok, reason = netbed_available() if not args.no_netns else (False, "--no-netns")
        if ok:
            with NetBed(2) as bed:
                placements["netns"] = _placement("netns", bed[1].popen, bed[0].popen, bed[1].addr, args, identities)
        else:
            print(f"skipping the placement across network namespaces: {reason}", file=sys.stderr)
            placements["netns"] = {"skipped": reason}
    finally:
        shutil.rmtree(identities, ignore_errors=True)
    return placements


def _table(placements: dict[str, Any]) -> str:
    header = f"{'placement':<10} {'transport':<10} {'message':>8} {'MB/s':>7} {'x tcp':>6}"
    lines = [f"{header} {'client cpu':>10} {'server cpu':>10}"]
    for name, placement in placements.items():
        if "skipped" in placement:
            lines.append(f"{name:<10} skipped: {placement['skipped']}")
            continue
        for kind in KINDS:
            for size, row in placement[kind].items():
                ratio = row.get("ratio_to_tcp", 1.0)
                lines.append(
                    f"{name:<10} {kind:<10} {int(size) >> 10:>4} KiB {row['mb_per_s']['median']:>7.0f} {ratio:>6.2f} "
                    f"{row['client_cpu_share']['median']:>10.0%} {row['server_cpu_share']['median']:>10.0%}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--total-mib", type=int, default=512, help="bytes per measured stream, in MiB")
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=[64, 1024], help="message sizes, in KiB")
    parser.add_argument("--warmup-mib", type=int, default=64, help="bytes of the warm-up stream, in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-netns", action="store_true", help="only the loopback placement")
    parser.add_argument("--pin", action="store_true", help="the client on the first CPU, the servers on the last")
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "ADDR"), help=argparse.SUPPRESS)
    parser.add_argument("--send", nargs="+", metavar="ADDR KIND:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--identities", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.serve or args.send):  # so that the servers, the client and the namespaces go also on SIGTERM
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.serve:
        serve(args.serve[0], args.serve[1], args.identities)
        return
    if args.send:
        addr, *targets = args.send
        ports = [(kind, int(port)) for kind, _, port in (target.partition(":") for target in targets)]
        send(addr, ports, args.sizes, args.total, args.warmup, args.repeats, args.identities)
        return
    start = time.perf_counter()
    placements = run(args)
    runtime = time.perf_counter() - start
    settings = {
        "total_bytes": args.total_mib << 20,
        "warmup_bytes": args.warmup_mib << 20,
        "message_sizes": [kib << 10 for kib in args.sizes_kib],
        "repeats": args.repeats,
        "pinned": dict(zip(("client_cpu", "server_cpu"), _cpus(args.pin), strict=True)),
    }
    path = write_results("grpc_stream", {**settings, "placements": placements, "runtime_s": runtime})
    print(_table(placements))
    print(f"\n{runtime:.0f} s; written to {path}")


if __name__ == "__main__":
    main()
