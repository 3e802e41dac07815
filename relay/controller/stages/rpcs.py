"""GetStage and SetStage: the migration stage of the global default or of one workspace."""

from __future__ import annotations

import functools
import logging

from relay.controller.base import ControllerBase, admin_rpc, stamp, viewer_rpc
from relay.controller.stages.control import ScopeStage, StageControl
from relay.controller.stages.outbox_rule import refuse_while_writes_owed
from relay.controller.stages.rules import RuleLimits
from relay.core.codec import parse_time
from relay.core.config import Settings
from relay.core.errors import InvalidArgument
from relay.core.ids import check_workspace_id
from relay.core.stages import Stage
from relay.v1 import stage_pb2

log = logging.getLogger("relay.stages")


def rule_limits(settings: Settings) -> RuleLimits:
    return RuleLimits(settings.stage_settle_seconds, settings.verification_max_age_seconds)


def setting_proto(scope: ScopeStage) -> stage_pb2.StageSetting:
    setting, history = scope.setting, scope.history
    message = stage_pb2.StageSetting(
        workspace_id=scope.workspace_id,
        stage=int(setting.stage),
        shadow_reads=setting.shadow_reads,
        inherited=scope.inherited,
        version=setting.version,
        source=setting.source,
    )
    updated = parse_time(setting.updated_at)
    if updated is not None:
        stamp(message.update_time, updated.timestamp())
    stamp(message.enter_time, history.entered_at)
    stamp(message.new_writes_start_time, history.new_writes_since)
    stamp(message.legacy_writes_stop_time, history.legacy_writes_stopped_at)
    stamp(message.legacy_writes_resume_time, history.legacy_writes_resumed_at)
    return message


def _workspace(value: str) -> str:
    return check_workspace_id(value) if value else ""


class StageRpcs(ControllerBase):
    @functools.cached_property
    def stage_control(self) -> StageControl:
        settings = self.parts.settings
        return StageControl(self.parts.redis, settings.default_stage, rule_limits(settings))

    @viewer_rpc
    async def GetStage(self, request: stage_pb2.GetStageRequest) -> stage_pb2.GetStageResponse:
        scope = await self.stage_control.get(_workspace(request.workspace_id))
        return stage_pb2.GetStageResponse(setting=setting_proto(scope))

    @admin_rpc
    async def SetStage(self, request: stage_pb2.SetStageRequest) -> stage_pb2.SetStageResponse:
        workspace_id = _workspace(request.workspace_id)
        if request.clear_override:
            if not workspace_id:
                raise InvalidArgument("workspace_id", "is required to clear an override")
            if request.stage != stage_pb2.STAGE_UNSPECIFIED or request.shadow_reads:
                raise InvalidArgument("stage", "must be unset when clear_override is true")
            new, previous = await self.stage_control.clear_override(workspace_id)
        else:
            if request.stage not in Stage._value2member_map_:
                raise InvalidArgument("stage", "must be one of STAGE_LEGACY_ONLY .. STAGE_LEGACY_CLEANED")
            stage = Stage(request.stage)
            if request.shadow_reads and stage is not Stage.READ_NEW:
                raise InvalidArgument("shadow_reads", "applies only to STAGE_READ_NEW")
            assert self.parts.stores is not None
            await refuse_while_writes_owed(self.parts.stores, workspace_id, stage)
            new, previous = await self.stage_control.set(workspace_id, stage, request.shadow_reads)
        log.info(
            "stage changed",
            extra={
                "workspace_id": workspace_id or "*",
                "stage": f"{previous.setting.stage.name} -> {new.setting.stage.name}",
            },
        )
        return stage_pb2.SetStageResponse(setting=setting_proto(new), previous=setting_proto(previous))
