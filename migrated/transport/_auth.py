"""The peer server's admission: every call to a guarded service checks the caller's certificate before it is read.

The check wraps the handler itself, so a method added later is guarded without anyone remembering to; gRPC's
interceptors cannot see the TLS peer, the handler's context can. gRPC reads and decodes a unary request before
it calls the handler, so each wrapped handler is registered as one that takes a stream of raw bytes: the check
runs before any of the caller's messages is read, and each message is decoded only after it. Calls to the open
services (pairing), which any caller may make, are read only while few are in progress (``OpenCalls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from migrated.errors import MigError, PeerError, UsageError
from migrated.transport._errors import ERROR_KEY
from migrated.transport._identity import cert_hash

__all__ = ["OpenCalls", "PairedOnly", "caller_cert_hash", "caller_cert_pem", "caller_host"]

Context = grpc.aio.ServicerContext[Any, Any]
Gate = Callable[[Context], contextlib.AbstractAsyncContextManager[None]]
Read = Callable[[AsyncIterator[bytes]], Awaitable[Any]]
OPEN_PER_HOST = 1  # a pairing is one call at a time
OPEN_TOTAL = 4  # each may hold a message of up to the server's limit (16 MiB) while it is read
OPEN_MESSAGE = 64 * 1024  # pairing messages are two certificates and a few names: well under this
OPEN_TIMEOUT = 10.0  # a call that stalls must not keep its place from others
TRIM_DELAY = 1.0

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the stubs make it generic; the runtime class is not
    _Interceptor = grpc.aio.ServerInterceptor


def caller_cert_pem(context: Context) -> bytes | None:
    """The client certificate the caller presented in the TLS handshake (PEM), if any."""
    certs = list(context.auth_context().get("x509_pem_cert") or ())
    return certs[0] if certs else None


def caller_cert_hash(context: Context) -> str | None:
    """SHA-256 (hex) of the caller's client certificate, if it presented one."""
    pem = caller_cert_pem(context)
    return None if pem is None else _pem_hash(pem)


@functools.lru_cache(maxsize=256)
def _pem_hash(pem: bytes) -> str:
    return cert_hash(pem)  # callers present the same few certificates again and again


def caller_host(context: Context) -> str:
    """The caller's IP address from ``ipv4:10.0.0.2:5555`` or ``ipv6:[::1]:5555``."""
    kind, _, rest = context.peer().partition(":")
    host = rest.rpartition(":")[0]
    return host.strip("[]") if kind in ("ipv4", "ipv6") else ""


class OpenCalls:
    """The calls to open services in progress: at most ``per_host`` from one address and ``total`` in all."""

    def __init__(self, per_host: int = OPEN_PER_HOST, total: int = OPEN_TOTAL, timeout: float = OPEN_TIMEOUT) -> None:
        self.per_host = per_host
        self.total = total
        self.timeout = timeout  # seconds one may take, reading included
        self._by_host: dict[str, int] = {}  # only hosts with calls in progress: at most ``total`` entries

    def enter(self, host: str) -> bool:
        """Count a call from ``host`` in, unless it would pass a limit."""
        if sum(self._by_host.values()) >= self.total or self._by_host.get(host, 0) >= self.per_host:
            return False
        self._by_host[host] = self._by_host.get(host, 0) + 1
        return True

    def leave(self, host: str) -> None:
        """A call that ``enter`` counted in has ended."""
        left = self._by_host.pop(host) - 1
        if left:
            self._by_host[host] = left

    def __len__(self) -> int:
        return sum(self._by_host.values())


class _Trim:
    """Give the heap that calls from unpaired hosts freed back to the system, at most once a ``TRIM_DELAY``."""

    def __init__(self) -> None:
        # glibc keeps the memory of a freed large message for reuse: a stranger's 16 MiB would stay in the RSS.
        self._malloc_trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
        self._pending = False

    def soon(self) -> None:
        """Trim after the current call is gone, unless a trim is due already."""
        if self._malloc_trim is not None and not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_later(TRIM_DELAY, self._run)

    def _run(self) -> None:
        self._pending = False
        assert self._malloc_trim is not None
        self._malloc_trim(0)


class PairedOnly(_Interceptor):
    """Refuse calls to the guarded services unless ``is_paired(certificate hash)``; admit open calls few at once."""

    def __init__(
        self,
        services: tuple[str, ...],
        is_paired: Callable[[str], bool],
        refusal: str,
        open_calls: OpenCalls | None = None,
    ) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._is_paired = is_paired
        self._refusal = refusal
        self._open_calls = OpenCalls() if open_calls is None else open_calls
        self._trim = _Trim()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler_call_details.method.startswith(self._prefixes):
            return _gated(handler, self._paired, None)
        return _gated(handler, self._open, OPEN_MESSAGE)

    @contextlib.asynccontextmanager
    async def _paired(self, context: Context) -> AsyncIterator[None]:
        digest = caller_cert_hash(context)
        if digest is None or not self._is_paired(digest):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, self._refusal, trailing_metadata=((ERROR_KEY, "NotPairedError"),)
            )
        yield

    @contextlib.asynccontextmanager
    async def _open(self, context: Context) -> AsyncIterator[None]:
        host = caller_host(context)
        if not self._open_calls.enter(host):
            raise PeerError("the other host is busy with requests from unpaired hosts; wait a moment and try again")
        try:
            async with asyncio.timeout(self._open_calls.timeout):
                yield
        except TimeoutError:
            raise PeerError("the other host gave up waiting for this request; try again in a moment") from None
        finally:
            self._open_calls.leave(host)
            self._trim.soon()


def _gated(handler: grpc.RpcMethodHandler[Any, Any], gate: Gate, limit: int | None) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, registered to take raw request streams, so that it passes ``gate`` before any message is read."""
    decode = _decoder(handler.request_deserializer, limit)
    shapes: tuple[tuple[Any, Callable[..., Any], Callable[..., Any], Callable[..., Any]], ...] = (
        (handler.unary_unary, grpc.stream_unary_rpc_method_handler, _unary_out, _first),
        (handler.unary_stream, grpc.stream_stream_rpc_method_handler, _stream_out, _first),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, _unary_out, _each),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, _stream_out, _each),
    )
    for behavior, make, wrap, read in shapes:
        if behavior is not None:
            return make(  # type: ignore[no-any-return]
                wrap(behavior, gate, functools.partial(read, decode=decode)),
                response_serializer=handler.response_serializer,
            )
    return handler


def _decoder(deserialize: Callable[[bytes], Any] | None, limit: int | None) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if limit is not None and len(raw) > limit:
            raise UsageError(
                f"the request has {len(raw)} bytes, more than the {limit} a host may send before it pairs; "
                "check that both hosts run the same migrated version"
            )
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except DecodeError:
            raise UsageError(
                "the request is not a valid message for this call; check that both hosts run the same migrated version"
            ) from None

    return decode


async def _first(requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]) -> Any:
    """The one request message of a call with a unary request."""
    messages = aiter(requests)
    async for raw in messages:
        if isinstance(messages, AsyncGenerator):
            await messages.aclose()  # gRPC's reader would hold on to the raw message for as long as the call lasts
        return decode(raw)
    raise UsageError("the call carried no request message; check that both hosts run the same migrated version")


async def _each(requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    """The request messages of a streaming call, each decoded as it is read."""
    return _decoded(requests, decode)


async def _decoded(requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    async for raw in requests:
        yield decode(raw)


def _unary_out(inner: Callable[..., Any], gate: Gate, read: Read) -> Callable[..., Any]:
    async def call(requests: AsyncIterator[bytes], context: Context) -> Any:
        async with gate(context):
            try:
                return await inner(await read(requests), context)
            except MigError as exc:
                raise _bare(exc) from None

    return call


def _stream_out(inner: Callable[..., Any], gate: Gate, read: Read) -> Callable[..., AsyncIterator[Any]]:
    async def call(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async with gate(context):
            try:
                async for item in inner(await read(requests), context):
                    yield item
            except MigError as exc:
                raise _bare(exc) from None

    return call


def _bare(error: MigError) -> MigError:
    """The handler's error without its traceback (the handler's frames, which hold the request)."""
    # The error interceptor aborts while it handles the error: the abort keeps the error, the traceback the frames,
    # the frames the call and the call the abort. That cycle would hold a large request until a full collection.
    return error.with_traceback(None)
