"""Reading and changing the stage table, with the rules of ``stage_rules`` checked in the same transaction.

A change is an optimistic transaction (WATCH on the stage table and its history): two controllers changing
stages at once never both pass the rules against the same old state. Replicas are then notified through
``relay.core.stage_store``'s channel and see the change within their refresh interval even without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import WatchError

from relay.controller.stages.facts import read_evidence, redis_now
from relay.controller.stages.rules import (
    Evidence,
    RuleLimits,
    StageHistory,
    check_transition,
    next_history,
    scope_name,
    stricter_history,
)
from relay.core.errors import FailedPrecondition, Unavailable
from relay.core.keys import KEYS
from relay.core.stages import GLOBAL_FIELD, Stage, StageSetting

#: Attempts at a stage change that another controller keeps racing.
MAX_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class ScopeStage:
    """The setting in force for one workspace ("" for the global default), and its history."""

    workspace_id: str
    setting: StageSetting
    history: StageHistory
    inherited: bool = False


@dataclass(frozen=True, slots=True)
class _Write:
    key: str
    field: str
    value: str | None  # None deletes the field


Decision = Callable[
    [ScopeStage, ScopeStage, ScopeStage | None, float, Evidence], tuple[ScopeStage, list[_Write]]
]


class StageControl:
    def __init__(self, redis: Redis, default_stage: Stage, limits: RuleLimits):
        self._redis = redis
        self._fallback = StageSetting(default_stage, source="environment")
        self.limits = limits

    # --- reads -------------------------------------------------------------------------------
    async def get(self, workspace_id: str) -> ScopeStage:
        fields = [workspace_id or GLOBAL_FIELD, GLOBAL_FIELD]
        stages = await self._redis.hmget(KEYS.stage, fields)
        histories = await self._redis.hmget(KEYS.stage_history, fields)
        return self._resolve(workspace_id, stages, histories)[0]

    async def stages_in_force(self) -> tuple[Stage, dict[str, Stage]]:
        """The global default's stage and every workspace override's."""
        raw = await self._redis.hgetall(KEYS.stage)
        default = self._fallback.stage
        overrides: dict[str, Stage] = {}
        for field, value in raw.items():
            name = field.decode()
            stage = StageSetting.from_json(value).stage
            if name == GLOBAL_FIELD:
                default = stage
            else:
                overrides[name] = stage
        return default, overrides

    def _resolve(
        self, workspace_id: str, stages: Sequence[bytes | None], histories: Sequence[bytes | None]
    ) -> tuple[ScopeStage, ScopeStage, ScopeStage | None]:
        """(in force for the scope, the global default, the workspace's own override or None)."""
        stored_global = stages[1]
        default = ScopeStage(
            "",
            StageSetting.from_json(stored_global) if stored_global else self._fallback,
            StageHistory.from_json(histories[1]),
        )
        if not workspace_id:
            return default, default, None
        if stages[0]:
            own = ScopeStage(
                workspace_id, StageSetting.from_json(stages[0]), StageHistory.from_json(histories[0])
            )
            return own, default, own
        inherited = ScopeStage(workspace_id, default.setting, default.history, inherited=True)
        return inherited, default, None

    # --- changes -----------------------------------------------------------------------------
    async def set(self, workspace_id: str, stage: Stage, shadow_reads: bool) -> tuple[ScopeStage, ScopeStage]:
        """Move one scope to ``stage``; refused (FailedPrecondition) when the move could lose or hide data."""

        def decide(
            previous: ScopeStage, default: ScopeStage, own: ScopeStage | None, now: float, evidence: Evidence
        ) -> tuple[ScopeStage, list[_Write]]:
            current = previous.setting.stage
            refusal = check_transition(
                current, stage, previous.history, evidence, now, self.limits, workspace_id
            )
            if refusal is not None:
                raise FailedPrecondition(
                    refusal.message,
                    reason=refusal.reason,
                    metadata={"workspace_id": workspace_id, "from": current.name, "to": stage.name},
                )
            setting = StageSetting(
                stage,
                shadow_reads,
                version=previous.setting.version + 1,
                updated_at=datetime.fromtimestamp(now, UTC).isoformat(),
            )
            history = next_history(current, stage, previous.history, now)
            field = workspace_id or GLOBAL_FIELD
            writes = [
                _Write(KEYS.stage, field, setting.to_json()),
                _Write(KEYS.stage_history, field, history.to_json()),
            ]
            return ScopeStage(workspace_id, setting, history), writes

        return await self._change(workspace_id, decide)

    async def clear_override(self, workspace_id: str) -> tuple[ScopeStage, ScopeStage]:
        """Let a workspace follow the global default again; only while both are in the same stage.

        The global default then carries the stricter of the two histories, so no rule forgets what the
        workspace went through (for example legacy writes that had stopped for it alone).
        """

        def decide(
            previous: ScopeStage, default: ScopeStage, own: ScopeStage | None, now: float, evidence: Evidence
        ) -> tuple[ScopeStage, list[_Write]]:
            if own is None:
                return previous, []
            if own.setting.stage != default.setting.stage:
                raise FailedPrecondition(
                    f"{scope_name(workspace_id)} is in {own.setting.stage.name} and the global default in "
                    f"{default.setting.stage.name}; set the workspace to {default.setting.stage.name} first "
                    "(the rules for that move apply), then clear its override",
                    reason="OVERRIDE_DIFFERS",
                    metadata={"workspace_id": workspace_id},
                )
            merged = stricter_history(own.history, default.history)
            writes = [_Write(KEYS.stage, workspace_id, None), _Write(KEYS.stage_history, workspace_id, None)]
            if merged != default.history:
                writes.append(_Write(KEYS.stage_history, GLOBAL_FIELD, merged.to_json()))
            return ScopeStage(workspace_id, default.setting, merged, inherited=True), writes

        return await self._change(workspace_id, decide)

    async def _change(self, workspace_id: str, decide: Decision) -> tuple[ScopeStage, ScopeStage]:
        fields = [workspace_id or GLOBAL_FIELD, GLOBAL_FIELD]
        for _ in range(MAX_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(KEYS.stage, KEYS.stage_history)
                    stages = await pipe.hmget(KEYS.stage, fields)
                    histories = await pipe.hmget(KEYS.stage_history, fields)
                    now = await redis_now(self._redis)
                    evidence = await read_evidence(self._redis, workspace_id)
                    previous, default, own = self._resolve(workspace_id, stages, histories)
                    result, writes = decide(previous, default, own, now, evidence)
                    if not writes:
                        await pipe.unwatch()
                        return result, previous
                    pipe.multi()
                    for write in writes:
                        if write.value is None:
                            pipe.hdel(write.key, write.field)
                        else:
                            pipe.hset(write.key, write.field, write.value)
                    await pipe.execute()
                except WatchError:
                    continue
            await self._redis.publish(KEYS.stage_channel, workspace_id or GLOBAL_FIELD)
            return result, previous
        raise Unavailable("the stage table kept changing under this request; retry")
