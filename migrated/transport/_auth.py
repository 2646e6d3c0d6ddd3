"""The paired-only check of the peer server: every method of a guarded service checks the caller's certificate.

The check wraps the handler itself, so it runs before any of the caller's messages reaches the servicer, and a
method added later is guarded without anyone remembering to. gRPC's interceptors cannot see the TLS peer, the
handler's context can.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from migrated.transport._errors import ERROR_KEY
from migrated.transport._identity import cert_hash

__all__ = ["PairedOnly", "caller_cert_hash", "caller_cert_pem"]

Context = grpc.aio.ServicerContext[Any, Any]

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


class PairedOnly(_Interceptor):
    """Refuse every call to the guarded services unless ``is_paired(certificate hash)``."""

    def __init__(self, services: tuple[str, ...], is_paired: Callable[[str], bool], refusal: str) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._is_paired = is_paired
        self._refusal = refusal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        return _guarded(handler, self._check)

    async def _check(self, context: Context) -> None:
        digest = caller_cert_hash(context)
        if digest is None or not self._is_paired(digest):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, self._refusal, trailing_metadata=((ERROR_KEY, "NotPairedError"),)
            )


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], check: Callable[[Context], Awaitable[None]]
) -> grpc.RpcMethodHandler[Any, Any]:
    kinds: dict[str, Callable[..., Any]] = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for kind, make in kinds.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            wrap = _wrap_stream if kind.endswith("_stream") else _wrap_unary
            return make(  # type: ignore[no-any-return]
                wrap(behavior, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _wrap_unary(inner: Callable[..., Any], check: Callable[[Context], Awaitable[None]]) -> Callable[..., Any]:
    async def call(request: Any, context: Context) -> Any:
        await check(context)
        return await inner(request, context)

    return call


def _wrap_stream(
    inner: Callable[..., Any], check: Callable[[Context], Awaitable[None]]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        await check(context)
        async for item in inner(request, context):
            yield item

    return call
