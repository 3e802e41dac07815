"""What every controller RPC mixin shares: the process's parts and the admin check."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2
from redis.asyncio import Redis

from relay.core.auth import SCOPE_ADMIN, SCOPE_VIEW, KeyRing, Principal
from relay.core.config import Settings
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


def stamp(target: timestamp_pb2.Timestamp, seconds: float) -> None:
    """Set a Timestamp from epoch seconds; 0 (never happened) leaves it unset."""
    if seconds > 0:
        target.FromMicroseconds(round(seconds * 1e6))
