"""StartBackfill, WatchBackfill, GetBackfill, PauseBackfill, ResumeBackfill, CancelBackfill, UpdateBackfill.

Thin: authenticate (migration:admin), validate, call the process's :class:`BackfillEngine`. The backfill
itself runs in the engine's background task, so a stream that ends or disconnects never stops it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from relay.controller.backfill.engine import BackfillEngine
from relay.controller.backfill.state import (
    BackfillOptions,
    check_backfill_id,
    check_batch_size,
    check_rate_limit,
)
from relay.controller.base import ControllerBase, ControllerParts
from relay.core.errors import InvalidArgument
from relay.core.rpc_errors import rpc_method
from relay.v1 import backfill_pb2 as pb


class BackfillRpcs(ControllerBase):
    def __init__(self, parts: ControllerParts):
        super().__init__(parts)
        self.backfills = BackfillEngine(parts.redis, parts.settings, parts.metrics, stores=parts.stores)

    @rpc_method
    async def StartBackfill(
        self, request: pb.StartBackfillRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BackfillEvent]:
        await self._admin(context)
        options = BackfillOptions.from_request(request)
        async for event in await self.backfills.start_backfill(options):
            yield event

    @rpc_method
    async def WatchBackfill(
        self, request: pb.WatchBackfillRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BackfillEvent]:
        await self._viewer(context)
        async for event in self.backfills.watch(check_backfill_id(request.backfill_id, required=False)):
            yield event

    @rpc_method
    async def GetBackfill(
        self, request: pb.GetBackfillRequest, context: grpc.aio.ServicerContext
    ) -> pb.Backfill:
        await self._viewer(context)
        return await self.backfills.get(check_backfill_id(request.backfill_id, required=False))

    @rpc_method
    async def PauseBackfill(
        self, request: pb.PauseBackfillRequest, context: grpc.aio.ServicerContext
    ) -> pb.Backfill:
        await self._admin(context)
        return await self.backfills.pause(check_backfill_id(request.backfill_id))

    @rpc_method
    async def ResumeBackfill(
        self, request: pb.ResumeBackfillRequest, context: grpc.aio.ServicerContext
    ) -> pb.Backfill:
        await self._admin(context)
        return await self.backfills.resume(check_backfill_id(request.backfill_id))

    @rpc_method
    async def CancelBackfill(
        self, request: pb.CancelBackfillRequest, context: grpc.aio.ServicerContext
    ) -> pb.Backfill:
        await self._admin(context)
        return await self.backfills.cancel(check_backfill_id(request.backfill_id))

    @rpc_method
    async def UpdateBackfill(
        self, request: pb.UpdateBackfillRequest, context: grpc.aio.ServicerContext
    ) -> pb.Backfill:
        await self._admin(context)
        backfill_id = check_backfill_id(request.backfill_id)
        rate = check_rate_limit(request.rate_limit) if request.update_rate_limit else None
        batch = check_batch_size(request.batch_size) or None
        if rate is None and batch is None:
            raise InvalidArgument("update_rate_limit", "or batch_size must ask for a change")
        return await self.backfills.update(backfill_id, rate, batch)
