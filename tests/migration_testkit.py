"""Helpers for the stage, verification, cleanup and rollback specifications."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE
from typing import Any

from redis.asyncio import Redis

from relay.controller.stages.facts import record_backfill_completed, redis_now
from relay.core.keys import KEYS
from relay.core.stages import GLOBAL_FIELD, Stage, StageSetting
from relay.v1 import cleanup_pb2, stage_pb2, verification_pb2

#: The settle time the specifications run controllers with (production: 2 s).
SETTLE = 0.3


async def set_stage(
    controller: Any, md: Any, stage: Stage, workspace_id: str = "", shadow: bool = False
) -> stage_pb2.SetStageResponse:
    return await controller.SetStage(
        stage_pb2.SetStageRequest(workspace_id=workspace_id, stage=int(stage), shadow_reads=shadow),
        metadata=md,
    )


async def get_stage(controller: Any, md: Any, workspace_id: str = "") -> stage_pb2.StageSetting:
    return (
        await controller.GetStage(stage_pb2.GetStageRequest(workspace_id=workspace_id), metadata=md)
    ).setting


async def force_stage(redis: Redis, workspace_id: str, setting: StageSetting | None) -> None:
    """Put a scope straight into ``setting`` (None: remove a workspace's override, or the global default)
    and notify the replicas, as the controller's write does.

    It bypasses the stage rules, and the history the controller keeps, on purpose: for specifications
    of what a replica does in a stage that the rules would refuse to reach from a fresh store.
    """
    field = workspace_id or GLOBAL_FIELD
    if setting is None:
        await redis.hdel(KEYS.stage, field)
    else:
        await redis.hset(KEYS.stage, field, setting.to_json())
    await redis.publish(KEYS.stage_channel, field)


async def settle() -> None:
    """Wait until every replica is taken to have seen the last stage change."""
    await asyncio.sleep(SETTLE + 0.05)


async def pretend_backfill_completed(redis: Redis, workspace_id: str = "") -> None:
    """Record, as the backfill engine does when it completes, a backfill that started now.

    Only for specifications of the stage rules themselves, where no legacy-only record exists that a
    backfill would have to copy.
    """
    await record_backfill_completed(redis, workspace_id, await redis_now(redis), "spec")


async def verify(controller: Any, md: Any, **request: Any) -> list[verification_pb2.VerificationEvent]:
    call = controller.VerifyMigration(verification_pb2.VerifyMigrationRequest(**request), metadata=md)
    return [event async for event in call]


async def cleanup(controller: Any, md: Any, **request: Any) -> list[cleanup_pb2.CleanupEvent]:
    call = controller.CleanupLegacy(cleanup_pb2.CleanupLegacyRequest(**request), metadata=md)
    return [event async for event in call]


async def reverse_copy(controller: Any, md: Any, **request: Any) -> list[cleanup_pb2.CleanupEvent]:
    call = controller.ReverseCopy(cleanup_pb2.ReverseCopyRequest(**request), metadata=md)
    return [event async for event in call]


async def relayctl(target: str, api_key: str, *args: str) -> tuple[int, str, str]:
    """Run the real relayctl against a test server: (exit code, stdout, stderr)."""
    env = {**os.environ, "RELAY_TARGET": target, "RELAY_API_KEY": api_key, "COLUMNS": "120"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from relay.clients.relayctl import main; main()",
        *args,
        env=env,
        stdout=PIPE,
        stderr=PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()
