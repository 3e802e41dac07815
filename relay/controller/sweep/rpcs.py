"""CleanupLegacy and ReverseCopy."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from relay.controller.base import ControllerBase, admin_rpc, mirror, operation_event, stamp
from relay.controller.common.script_budget import ScriptBudget
from relay.controller.stages.control import StageControl
from relay.controller.stages.rpcs import rule_limits
from relay.controller.sweep.cleaner import Cleaner
from relay.controller.sweep.loop import Sweep, SweepRun, SweepState
from relay.controller.sweep.reverse_copier import ReverseCopier
from relay.controller.sweep.split_cleaner import SplitCleaner
from relay.controller.sweep.split_reverse_copier import SplitReverseCopier
from relay.core.ids import check_workspace_id
from relay.v1 import cleanup_pb2 as pb

STATES = {
    SweepState.RUNNING: pb.CLEANUP_STATE_RUNNING,
    SweepState.COMPLETED: pb.CLEANUP_STATE_COMPLETED,
    SweepState.FAILED: pb.CLEANUP_STATE_FAILED,
    SweepState.STOPPED: pb.CLEANUP_STATE_INTERRUPTED,
}


def cleanup_proto(run: SweepRun) -> pb.Cleanup:
    message = mirror(
        pb.Cleanup,
        run,
        cleanup_id=run.operation_id,
        state=STATES.get(run.state, pb.CLEANUP_STATE_UNSPECIFIED),
        checkpoint=f"{run.phase}:{run.cursor}",
    )
    stamp(message.start_time, run.started_at)
    stamp(message.end_time, run.ended_at)
    return message


async def _events(
    sweep: Sweep, request: pb.CleanupLegacyRequest | pb.ReverseCopyRequest, workspace_id: str, max_keys: int
) -> AsyncIterator[pb.CleanupEvent]:
    run = await sweep.prepare(
        dry_run=request.dry_run,
        workspace_id=workspace_id,
        rate_limit=request.rate_limit,
        batch_size=request.batch_size,
        max_keys=max_keys,
        resume=request.resume,
    )
    async for kind, state in sweep.loop(run):
        yield operation_event(
            pb.CleanupEvent, kind, cleanup_id=state.operation_id, cleanup=cleanup_proto(state)
        )


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

    @admin_rpc
    async def CleanupLegacy(self, request: pb.CleanupLegacyRequest) -> AsyncIterator[pb.CleanupEvent]:
        async for event in _events(self.cleaner, request, "", request.max_keys):
            yield event

    @admin_rpc
    async def ReverseCopy(self, request: pb.ReverseCopyRequest) -> AsyncIterator[pb.CleanupEvent]:
        workspace_id = check_workspace_id(request.workspace_id) if request.workspace_id else ""
        async for event in _events(self.reverse_copier, request, workspace_id, max_keys=0):
            yield event
