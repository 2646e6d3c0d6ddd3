"""The exception tree on gRPC, both ways: one server interceptor turns errors into ``context.abort``, and
``error_of`` turns a failed call back into the error class it stands for (the command line's calls to its
daemon and the daemon's calls to its peers alike), so callers catch classes, never match text."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from migrated.errors import (
    DaemonError,
    MigError,
    NotPairedError,
    PeerError,
    PeerUnreachableError,
    error_class,
)

__all__ = ["ERROR_KEY", "ErrorInterceptor", "error_of", "status_of"]

ERROR_KEY = "mig-error"
log = logging.getLogger("migrated.transport")


def status_of(error: MigError) -> grpc.StatusCode:
    """The gRPC status code of an error."""
    return grpc.StatusCode[error.grpc_status]


def error_of(exc: grpc.RpcError, callee: str, *, local: bool = False) -> MigError:
    """The error a failed call to ``callee`` stands for: the class the callee raised, or, when the call failed
    on the way, a sentence about the way (``local``: the daemon of this host, over its Unix socket)."""
    call: Any = exc if hasattr(exc, "code") else None  # a sync call, or an aio one (not a grpc.Call)
    details = (call.details() if call is not None else None) or str(exc)
    metadata: Any = (call.trailing_metadata() if call is not None else None) or ()
    kind = next((str(value) for key, value in metadata if key == ERROR_KEY), "")
    if kind:
        return error_class(kind)(details)
    code = call.code() if call is not None else None
    if local:
        return _local(code, callee, details)
    return _remote(code, callee, details)


def _local(code: grpc.StatusCode | None, callee: str, details: str) -> MigError:
    if code is grpc.StatusCode.UNAVAILABLE:
        return DaemonError(f"the daemon for {callee} stopped answering ({details}); check mig status")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DaemonError(f"the daemon for {callee} did not answer in time; check mig status")
    if code is grpc.StatusCode.CANCELLED:
        return DaemonError("the request was cancelled")
    return MigError(details)


def _remote(code: grpc.StatusCode | None, callee: str, details: str) -> MigError:
    if code is grpc.StatusCode.UNAVAILABLE:
        return PeerUnreachableError(
            f"{callee} cannot be reached, or the connection to it was lost; check that its daemon runs and the "
            "network between the hosts"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerUnreachableError(f"{callee} did not answer in time; check that its daemon runs")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return NotPairedError(f"{callee} refused this host: {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PeerError(f"{callee} refused a message as too large: {details}")
    if code is grpc.StatusCode.CANCELLED:
        return PeerUnreachableError(f"the call to {callee} was cancelled")
    return PeerError(f"{callee} failed the call ({code.name if code else 'unknown'}: {details})")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if isinstance(exc, MigError):
        await context.abort(status_of(exc), exc.message, trailing_metadata=((ERROR_KEY, type(exc).__name__),))
    log.exception("internal error")
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"the daemon failed with {type(exc).__name__}: {exc}; see daemon.log in its state directory",
    )


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the stubs make it generic; the runtime class is not
    _Interceptor = grpc.aio.ServerInterceptor


class ErrorInterceptor(_Interceptor):
    """Turn a ``MigError`` raised by a handler into a status with its message and class name."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(inner: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            failure = exc
        await _abort(context, _bare(failure))  # outside the handler: see _bare

    return call


def _wrap_stream(inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        failure: Exception | None = None
        try:
            async for item in inner(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            failure = exc
        if failure is not None:
            await _abort(context, _bare(failure))

    return call


def _bare(exc: Exception) -> Exception:
    """``exc`` without the handler's frames, unless it is a bug that must be logged whole. Aborting while the
    error is handled, with its traceback, forms a cycle (abort, error, frames, call) that holds the request
    until a full garbage collection."""
    return exc.with_traceback(None) if isinstance(exc, MigError) else exc
