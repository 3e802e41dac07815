"""The one table from domain errors to gRPC status codes, and the one place it is applied.

Every servicer method is wrapped by :func:`rpc_method`: a ``RelayError`` becomes its status with a
``google.rpc.ErrorInfo`` detail (AIP-193); Redis being unreachable becomes UNAVAILABLE; anything else is
logged with its traceback and reported as INTERNAL without details, since it is our bug, not the
caller's.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from redis import exceptions as redis_errors

from relay.core import errors

log = logging.getLogger("relay.rpc")

ERROR_DOMAIN = "relay.dev"

STATUS_OF: dict[type[errors.RelayError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Redis failures that mean "try again later", never a bug of ours or the caller's.
TRANSIENT_STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.TryAgainError,
    # A Redis Cluster between a primary's death and its replica's promotion.
    redis_errors.ClusterDownError,
    redis_errors.MasterDownError,
    redis_errors.SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
)


def _redirected_too_often(exc: BaseException) -> bool:
    """A Redis Cluster call that kept being redirected (MOVED, ASK) or told to try again (TRYAGAIN, while
    its slot's keys were being moved) until redis-py gave up: not executed, and worth a retry later."""
    return isinstance(exc, redis_errors.ClusterError) and "TTL exhausted" in str(exc)


def _torn_down_connection(exc: BaseException) -> bool:
    """redis-py's asyncio cluster client closes a dead node's connections while other calls are sending on
    them, and such a call fails with an AttributeError inside redis-py's connection module: a transient
    failure of the store, not a bug of ours."""
    if not isinstance(exc, AttributeError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith("redis/asyncio/connection.py")


def status_code_of(error: errors.RelayError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.RelayError) -> grpc.Status:
    code = status_code_of(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=code.value[0], message=error.message, details=[detail])
    return rpc_status.to_status(proto)


def classify(exc: BaseException) -> errors.RelayError | None:
    """The domain error an exception stands for, or None when it is a bug."""
    if isinstance(exc, errors.RelayError):
        return exc
    if isinstance(exc, redis_errors.MaxConnectionsError):
        # Every Redis connection stayed busy for the pool's timeout: the store is up, this process is
        # overloaded (DESIGN.md, invariant 10).
        return errors.ResourceExhausted(
            "the job store's connections are all busy, retry with backoff", reason="STORE_BUSY"
        )
    if isinstance(exc, TRANSIENT_STORE_ERRORS) or _torn_down_connection(exc) or _redirected_too_often(exc):
        return errors.Unavailable("the job store is unavailable, retry with backoff")
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN")):
        return errors.Unavailable("the job store is busy, retry with backoff")
    return None


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    error = classify(exc)
    if error is None:
        log.exception("unexpected failure in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return
    if isinstance(error, errors.Unavailable):
        log.warning("%s: %s (%s)", method, error.message, type(exc).__name__)
    await context.abort_with_status(to_status(error))


F = TypeVar("F", bound=Callable[..., Any])


def rpc_method(func: F) -> F:
    """Apply the error table to one servicer method, unary or server-streaming."""
    name = func.__qualname__
    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in func(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, name)

        return stream  # type: ignore[return-value]

    @functools.wraps(func)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await func(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, name)

    return unary  # type: ignore[return-value]


def error_info(call_error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, for clients and tests."""
    status = rpc_status.from_call(call_error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
