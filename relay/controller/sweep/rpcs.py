"""CleanupLegacy and ReverseCopy."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator

import grpc

from relay.controller.base import ControllerBase, stamp
from relay.controller.common.script_budget import ScriptBudget
from relay.controller.stages.control import StageControl
from relay.controller.stages.rpcs import rule_limits
from relay.controller.sweep.cleaner import Cleaner
from relay.controller.sweep.loop import Sweep, SweepRun, SweepState
from relay.controller.sweep.reverse_copier import ReverseCopier
from relay.controller.sweep.split_cleaner import SplitCleaner
from relay.controller.sweep.split_reverse_copier import SplitReverseCopier
from relay.core.ids import check_workspace_id
from relay.core.rpc_errors import rpc_method
from relay.v1 import cleanup_pb2 as pb

STATES = {
    SweepState.RUNNING: pb.CLEANUP_STATE_RUNNING,
    SweepState.COMPLETED: pb.CLEANUP_STATE_COMPLETED,
    SweepState.FAILED: pb.CLEANUP_STATE_FAILED,
    SweepState.STOPPED: pb.CLEANUP_STATE_INTERRUPTED,
}
KINDS = {
    "started": pb.CLEANUP_EVENT_KIND_STARTED,
    "progress": pb.CLEANUP_EVENT_KIND_PROGRESS,
    "completed": pb.CLEANUP_EVENT_KIND_COMPLETED,
    "failed": pb.CLEANUP_EVENT_KIND_FAILED,
    "stopped": pb.CLEANUP_EVENT_KIND_STOPPED,
}


def cleanup_proto(run: SweepRun) -> pb.Cleanup:
    message = pb.Cleanup(
        cleanup_id=run.operation_id,
        state=STATES.get(run.state, pb.CLEANUP_STATE_UNSPECIFIED),
        dry_run=run.dry_run,
        scanned=run.scanned,
        done=run.done,
        kept_missing_new=run.kept_missing_new,
        kept_legacy_newer=run.kept_legacy_newer,
        kept_invalid=run.kept_invalid,
        kept_differing=run.kept_differing,
        kept_pending=run.kept_pending,
        queue_entries_removed=run.queue_entries_removed,
        idempotency_deleted=run.idempotency_deleted,
        unchanged=run.unchanged,
        errors=run.errors,
        rate=run.rate,
        checkpoint=f"{run.phase}:{run.cursor}",
        reason=run.reason,
        phase=run.phase,
        total_estimate=run.total_estimate,
        percent_done=run.percent_done,
    )
    stamp(message.start_time, run.started_at)
    stamp(message.end_time, run.ended_at)
    return message


async def _events(sweep: Sweep, run: SweepRun) -> AsyncIterator[pb.CleanupEvent]:
    async for kind, state in sweep.loop(run):
        event = pb.CleanupEvent(cleanup_id=state.operation_id, kind=KINDS[kind], cleanup=cleanup_proto(state))
        stamp(event.time, time.time())
        yield event


class CleanupRpcs(ControllerBase):
    @functools.cached_property
    def cleaner(self) -> Cleaner:
        settings = self.parts.settings
        control = StageControl(self.parts.redis, settings.default_stage, rule_limits(settings))
        stores = self.parts.stores
        if stores is not None and not stores.shared:
            cleaner: Cleaner = SplitCleaner(stores, control)
        else:
            cleaner = Cleaner(self.parts.redis, control, metrics=self.parts.metrics)
        cleaner.budget = ScriptBudget(settings.backfill_script_budget_seconds)
        return cleaner

    @functools.cached_property
    def reverse_copier(self) -> ReverseCopier:
        stores = self.parts.stores
        if stores is not None and not stores.shared:
            copier: ReverseCopier = SplitReverseCopier(stores)
        else:
            copier = ReverseCopier(self.parts.redis, metrics=self.parts.metrics)
        copier.budget = ScriptBudget(self.parts.settings.backfill_script_budget_seconds)
        return copier

    @rpc_method
    async def CleanupLegacy(
        self, request: pb.CleanupLegacyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CleanupEvent]:
        await self._admin(context)
        run = await self.cleaner.prepare(
            dry_run=request.dry_run,
            workspace_id="",
            rate_limit=request.rate_limit,
            batch_size=request.batch_size,
            max_keys=request.max_keys,
            resume=request.resume,
        )
        async for event in _events(self.cleaner, run):
            yield event

    @rpc_method
    async def ReverseCopy(
        self, request: pb.ReverseCopyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CleanupEvent]:
        await self._admin(context)
        run = await self.reverse_copier.prepare(
            dry_run=request.dry_run,
            workspace_id=check_workspace_id(request.workspace_id) if request.workspace_id else "",
            rate_limit=request.rate_limit,
            batch_size=request.batch_size,
            max_keys=0,
            resume=request.resume,
        )
        async for event in _events(self.reverse_copier, run):
            yield event
