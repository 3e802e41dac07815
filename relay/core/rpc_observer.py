"""Every RPC observed the same way: a request id, a duration by method and status code, one log line.

The request id is the caller's ``x-request-id`` when it is a plausible id, else a new one. It is set in
:data:`relay.core.logs.request_id` for everything logged while the RPC runs, and returned as
``x-request-id`` in the trailing metadata of every answer, errors included: grpc's ``abort`` replaces
the trailing metadata with its own, so the method sees a thin context wrapper whose ``abort`` adds the
id back. Nothing is sent early, so observing costs no extra network write.

The log line holds the method, the status code and the duration, never the request or the response.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from relay.core import logs
from relay.core.telemetry import Metrics
from relay.core.wrapping_interceptor import WrappingInterceptor

log = logging.getLogger("relay.rpc")

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: Probes that run every few seconds: logged at DEBUG so they do not drown the access log.
QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
_ids = random.Random()


def request_id_from(metadata: Any) -> str:
    """The caller's request id when it is a plausible one, else a new id (random, not secret: no system
    call per RPC for it)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
            return value
    return f"{_ids.getrandbits(128):032x}"


def _with_request_id(metadata: Any, request_id: str) -> tuple[tuple[str, Any], ...]:
    kept = tuple((k, v) for k, v in metadata or () if k != REQUEST_ID_HEADER)
    return (*kept, (REQUEST_ID_HEADER, request_id))


class _RequestContext:
    """The servicer context as the method sees it: the same, except that trailing metadata it sets or
    aborts with always keeps the request id, and the invocation metadata is built once per RPC (grpc
    builds a new tuple at every ``invocation_metadata()``; the observer and the method's authentication
    both read it)."""

    __slots__ = ("_context", "_metadata", "_request_id")

    def __init__(self, context: grpc.aio.ServicerContext, request_id: str, metadata: Any):
        self._context = context
        self._request_id = request_id
        self._metadata = metadata
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def invocation_metadata(self) -> Any:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(_with_request_id(metadata, self._request_id))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        metadata = _with_request_id(trailing_metadata or self._context.trailing_metadata(), self._request_id)
        await self._context.abort(code, details, metadata)

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)


def _code_name(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate.name
    return default.name


class _Observation:
    """One RPC in flight, as a ``with`` block around it: its request id is current until the block ends,
    which records how it ended."""

    __slots__ = ("_observer", "_start", "_token", "code", "context", "method")

    def __init__(self, observer: RpcObserver, method: str, context: grpc.aio.ServicerContext):
        self._observer = observer
        self.method = method
        self.code = grpc.StatusCode.UNKNOWN.name
        metadata = context.invocation_metadata()
        rid = request_id_from(metadata)
        self._token = logs.request_id.set(rid)
        self.context = _RequestContext(context, rid, metadata)
        self._start = time.perf_counter()

    def __enter__(self) -> _Observation:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        if exc is None:
            self.code = _code_name(self.context, grpc.StatusCode.OK)  # a method may set_code() and return
        else:
            self._failed(exc)
        self._finish()

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED.name
        elif isinstance(exc, grpc.aio.AbortError):
            self.code = _code_name(self.context, grpc.StatusCode.UNKNOWN)
        else:
            self.code = grpc.StatusCode.UNKNOWN.name  # what grpc answers for an escaped exception

    def _finish(self) -> None:
        seconds = time.perf_counter() - self._start
        try:
            self._observer.record(self.method, self.code, seconds)
        finally:
            # Not contextlib.suppress: that is an object made per RPC for a case that almost never happens.
            try:  # noqa: SIM105
                logs.request_id.reset(self._token)
            except ValueError:  # a stream closed from another context
                pass


class RpcObserver(WrappingInterceptor):
    """Times, counts and logs every RPC."""

    def __init__(self, metrics: Metrics, quiet_methods: frozenset[str] = QUIET_METHODS):
        super().__init__()
        self._metrics = metrics
        self._quiet = quiet_methods
        self._attributes: dict[tuple[str, str], dict[str, str]] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        attributes = self._attributes.get((method, code))
        if attributes is None:
            attributes = self._attributes.setdefault((method, code), {"method": method, "code": code})
        self._metrics.rpc_duration.record(seconds, attributes)
        level = logging.DEBUG if "/" + method in self._quiet else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "rpc finished",
                extra={"method": method, "code": code, "duration_ms": round(seconds * 1000, 3)},
            )

    def wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        method = full_method.lstrip("/")
        replace = handler._replace  # type: ignore[attr-defined]
        if handler.unary_unary is not None:
            return replace(unary_unary=self._coroutine(handler.unary_unary, method))
        if handler.stream_unary is not None:
            return replace(stream_unary=self._coroutine(handler.stream_unary, method))
        if handler.unary_stream is not None:
            return replace(unary_stream=self._any(handler.unary_stream, method))
        if handler.stream_stream is not None:
            return replace(stream_stream=self._any(handler.stream_stream, method))
        return handler

    def _any(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        # A streaming method is an async generator, or a coroutine writing through context.write()
        # (grpc_health's Watch); each keeps its kind.
        if inspect.isasyncgenfunction(behaviour):
            return self._generator(behaviour, method)
        return self._coroutine(behaviour, method)

    def _coroutine(
        self, behaviour: Callable[..., Awaitable[Any]], method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _Observation(self, method, context) as observation:
                return await behaviour(request, observation.context)

        return observed

    def _generator(self, behaviour: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., Any]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with _Observation(self, method, context) as observation:
                async for item in behaviour(request, observation.context):
                    yield item

        return observed
