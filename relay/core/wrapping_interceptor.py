"""A server interceptor that wraps each method's handler once and hands out the wrapped one from then on.

grpc asks every interceptor for the handler of every RPC; building a wrapper per call would cost each RPC
a few closures, so the wrapped handler is kept per method. A method grpc does not know (no handler) is not
kept: its name is the caller's to choose, and the cache stays bounded by the methods served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses say how a handler is wrapped (:meth:`wrap`); each method's is wrapped once."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrapped[method] = self.wrap(handler, method)
        return wrapped

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` (``/package.Service/Method``) as this interceptor serves it."""
        raise NotImplementedError
