"""Requests whose bytes are not a valid message get INVALID_ARGUMENT, not grpc's UNKNOWN.

grpc decodes a request before any servicer code runs, and reports a decoding failure (corrupt wire
format, a string that is not UTF-8, nesting beyond protobuf's depth limit) as UNKNOWN. This interceptor
wraps each method's decoder so that such bytes become a marker, and the method answers the marker with
the same INVALID_ARGUMENT + ErrorInfo as any other bad input, through the one error table.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from relay.core.errors import InvalidArgument
from relay.core.rpc_errors import to_status
from relay.core.wrapping_interceptor import WrappingInterceptor


class _Malformed:
    """Stands in for a request that could not be decoded."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


def _decoder(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def safe_decode(raw: bytes) -> Any:
        try:
            return decode(raw)
        except (DecodeError, RecursionError) as exc:
            return _Malformed(str(exc) or type(exc).__name__)

    return safe_decode


async def _refuse(context: grpc.aio.ServicerContext, malformed: _Malformed) -> None:
    error = InvalidArgument("request", "is not a valid message of this method", reason="MALFORMED_REQUEST")
    error.metadata["problem"] = malformed.problem[:200]
    await context.abort_with_status(to_status(error))


def _guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_streaming or handler.request_deserializer is None:
        return handler  # Relay has no client-streaming methods; leave anything else as it is
    if handler.response_streaming:
        stream = handler.unary_stream
        if not inspect.isasyncgenfunction(stream):
            # A handler that writes through context.write() (grpc_health's Watch) stays a coroutine.
            return handler._replace(  # type: ignore[attr-defined]
                request_deserializer=_decoder(handler.request_deserializer),
                unary_stream=_guarded_coroutine(stream),
            )

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Malformed):
                await _refuse(context, request)
                return
            async for item in stream(request, context):
                yield item

        return handler._replace(  # type: ignore[attr-defined]
            request_deserializer=_decoder(handler.request_deserializer), unary_stream=unary_stream
        )
    return handler._replace(  # type: ignore[attr-defined]
        request_deserializer=_decoder(handler.request_deserializer),
        unary_unary=_guarded_coroutine(handler.unary_unary),
    )


def _guarded_coroutine(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await _refuse(context, request)
            return None
        return await behaviour(request, context)

    return guarded


class MalformedRequestInterceptor(WrappingInterceptor):
    """Guards every method's request decoding."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _guard(handler)
