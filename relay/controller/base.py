"""What every controller RPC mixin shares: the process's parts, the access check and the Timestamp helper.

A mixin's methods are declared ``@admin_rpc`` (migration:admin) or ``@viewer_rpc`` (migration:view or
admin) and take the request only: the decorator authenticates the caller before the method runs and
applies the error table (``rpc_method``), so no method can forget either.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from redis.asyncio import Redis

from relay.core.auth import SCOPE_ADMIN, SCOPE_VIEW, KeyRing, Principal
from relay.core.config import Settings
from relay.core.rpc_errors import rpc_method
from relay.core.stage_store import StageView
from relay.core.stores import Stores
from relay.core.telemetry import Metrics


@dataclass
class ControllerParts:
    #: The store of the new layout and Relay's state.
    redis: Redis
    settings: Settings
    keyring: KeyRing
    stages: StageView
    metrics: Metrics
    stores: Stores | None = None

    def __post_init__(self) -> None:
        if self.stores is None:
            self.stores = Stores.single(self.redis)


class ControllerBase:
    def __init__(self, parts: ControllerParts):
        self.parts = parts

    async def _admin(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = await self.parts.keyring.authenticate(context.invocation_metadata())
        principal.require(SCOPE_ADMIN)
        return principal

    async def _viewer(self, context: grpc.aio.ServicerContext) -> Principal:
        """Read-only RPCs: migration:view or migration:admin."""
        principal = await self.parts.keyring.authenticate(context.invocation_metadata())
        if SCOPE_ADMIN not in principal.scopes:
            principal.require(SCOPE_VIEW)
        return principal


M = TypeVar("M", bound=Message)


def mirror(message_type: type[M], source: object, **given: Any) -> M:
    """A ``message_type`` filled from ``source``: every scalar field that ``source`` holds under the same
    name (a count, a flag, a reason), then ``given`` (fields named otherwise, converted, or nested)."""
    fields = {
        f.name: getattr(source, f.name)
        for f in message_type.DESCRIPTOR.fields
        if f.type not in (f.TYPE_MESSAGE, f.TYPE_ENUM) and hasattr(source, f.name)
    }
    return message_type(**{**fields, **given})


def operation_event(event_type: type[M], kind: str, **fields: Any) -> M:
    """One event of a long operation's loop (verification, cleanup, reverse copy), stamped now: its
    ``kind`` is the enum value the loop's word names (``started``: ``<PREFIX>_EVENT_KIND_STARTED``)."""
    kinds = event_type.DESCRIPTOR.fields_by_name["kind"].enum_type
    suffix = f"_EVENT_KIND_{kind.upper()}"
    (number,) = [value.number for value in kinds.values if value.name.endswith(suffix)]
    event = event_type(kind=number, **fields)
    stamp(event.time, time.time())  # type: ignore[attr-defined]
    return event


def stamp(target: timestamp_pb2.Timestamp, seconds: float) -> None:
    """Set a Timestamp from epoch seconds; 0 (never happened) leaves it unset."""
    if seconds > 0:
        target.FromMicroseconds(round(seconds * 1e6))


Handler = Callable[[Any, Any], Any]


def admin_rpc(handler: Handler) -> Callable[..., Any]:
    """A servicer method that only migration:admin may call."""
    return _rpc(handler, ControllerBase._admin)


def viewer_rpc(handler: Handler) -> Callable[..., Any]:
    """A read-only servicer method: migration:view or migration:admin."""
    return _rpc(handler, ControllerBase._viewer)


def _rpc(handler: Handler, check: Callable[[Any, grpc.aio.ServicerContext], Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(handler):

        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(self, context)
            async for item in handler(self, request):
                yield item

        return rpc_method(functools.wraps(handler)(stream))

    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(self, context)
        return await handler(self, request)

    return rpc_method(functools.wraps(handler)(unary))
