"""StartBackfill, WatchBackfill, GetBackfill, PauseBackfill, ResumeBackfill, CancelBackfill, UpdateBackfill.

Thin: authenticate, validate, call the process's :class:`BackfillEngine`, convert to protobuf (here
only). The backfill itself runs in the engine's background task, so a stream that ends or disconnects
never stops it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import duration_pb2

from relay.controller.backfill.engine import BackfillEngine
from relay.controller.backfill.events import BackfillEvent
from relay.controller.backfill.state import (
    CANCELLED,
    COMPLETED,
    DEFAULT_BATCH_SIZE,
    FAILED,
    INVALID_IDS_KEPT,
    ORPHANED,
    PAUSED,
    RUNNING,
    BackfillOptions,
    BackfillRecord,
    check_backfill_id,
    check_batch_size,
    check_rate_limit,
)
from relay.controller.base import ControllerBase, ControllerParts, admin_rpc, mirror, stamp, viewer_rpc
from relay.core import codec
from relay.core.errors import InvalidArgument
from relay.core.ids import is_workspace_id
from relay.v1 import backfill_pb2 as pb

STATE_TO_PROTO = {
    RUNNING: pb.BACKFILL_STATE_RUNNING,
    PAUSED: pb.BACKFILL_STATE_PAUSED,
    ORPHANED: pb.BACKFILL_STATE_ORPHANED,
    COMPLETED: pb.BACKFILL_STATE_COMPLETED,
    FAILED: pb.BACKFILL_STATE_FAILED,
    CANCELLED: pb.BACKFILL_STATE_CANCELLED,
}


def options_of(request: pb.StartBackfillRequest) -> BackfillOptions:
    """Validated options; every bad field is an InvalidArgument naming it."""
    if request.workspace_id and not is_workspace_id(request.workspace_id):
        raise InvalidArgument("workspace_id", "must be empty (all) or match ^[a-z0-9][a-z0-9_-]{0,31}$")
    if request.max_keys < 0:
        raise InvalidArgument("max_keys", "must be 0 (no limit) or more")
    return BackfillOptions(
        dry_run=request.dry_run,
        workspace_id=request.workspace_id,
        rate_limit=check_rate_limit(request.rate_limit),
        batch_size=check_batch_size(request.batch_size) or DEFAULT_BATCH_SIZE,
        max_keys=request.max_keys,
    )


def backfill_proto(record: BackfillRecord, state: str | None = None) -> pb.Backfill:
    """The record as protobuf, shown in ``state`` (its own when None)."""
    progress = mirror(
        pb.BackfillProgress,
        record.counts,
        rate=record.rate,
        percent_done=record.percent_done(),
        checkpoint=record.cursor,
        total_estimate=record.target,
        invalid_job_ids=record.invalid_ids[:INVALID_IDS_KEPT],
        rescans=record.rescans,
        migrated_in_earlier_passes=record.migrated_earlier,
    )
    eta = record.eta_seconds()
    if eta is not None:
        progress.eta.CopyFrom(duration_pb2.Duration(seconds=int(eta), nanos=int((eta % 1) * 1e9)))
    options = mirror(
        pb.BackfillOptions, record.options, rate_limit=record.rate_limit_now, batch_size=record.batch_size_now
    )
    message = mirror(
        pb.Backfill, record, state=STATE_TO_PROTO[state or record.state], options=options, progress=progress
    )
    for text, target in (
        (record.create_time, message.create_time),
        (record.update_time, message.update_time),
        (record.end_time, message.end_time),
    ):
        moment = codec.parse_time(text)
        if moment is not None:
            stamp(target, moment.timestamp())
    return message


def event_proto(event: BackfillEvent) -> pb.BackfillEvent:
    message = pb.BackfillEvent(
        backfill_id=event.record.backfill_id,
        kind=event.kind,
        backfill=backfill_proto(event.record, event.state),
        reason=event.reason,
    )
    stamp(message.time, event.time)
    return message


def _control_rpc(action: str) -> Any:
    """PauseBackfill, ResumeBackfill and CancelBackfill: one operator's request each, by its engine verb."""

    async def control(self: BackfillRpcs, request: Any) -> pb.Backfill:
        method = getattr(self.backfills, action)
        return backfill_proto(*await method(check_backfill_id(request.backfill_id)))

    control.__name__ = f"{action.capitalize()}Backfill"
    control.__qualname__ = f"BackfillRpcs.{control.__name__}"
    return admin_rpc(control)


class BackfillRpcs(ControllerBase):
    def __init__(self, parts: ControllerParts):
        super().__init__(parts)
        self.backfills = BackfillEngine(parts.redis, parts.settings, parts.metrics, stores=parts.stores)

    @admin_rpc
    async def StartBackfill(self, request: pb.StartBackfillRequest) -> AsyncIterator[pb.BackfillEvent]:
        async for event in await self.backfills.start_backfill(options_of(request)):
            yield event_proto(event)

    @viewer_rpc
    async def WatchBackfill(self, request: pb.WatchBackfillRequest) -> AsyncIterator[pb.BackfillEvent]:
        async for event in self.backfills.watch(check_backfill_id(request.backfill_id, required=False)):
            yield event_proto(event)

    @viewer_rpc
    async def GetBackfill(self, request: pb.GetBackfillRequest) -> pb.Backfill:
        backfill_id = check_backfill_id(request.backfill_id, required=False)
        return backfill_proto(*await self.backfills.get(backfill_id))

    PauseBackfill = _control_rpc("pause")
    ResumeBackfill = _control_rpc("resume")
    CancelBackfill = _control_rpc("cancel")

    @admin_rpc
    async def UpdateBackfill(self, request: pb.UpdateBackfillRequest) -> pb.Backfill:
        backfill_id = check_backfill_id(request.backfill_id)
        rate = check_rate_limit(request.rate_limit) if request.update_rate_limit else None
        batch = check_batch_size(request.batch_size) or None
        if rate is None and batch is None:
            raise InvalidArgument("update_rate_limit", "or batch_size must ask for a change")
        return backfill_proto(*await self.backfills.update(backfill_id, rate, batch))
