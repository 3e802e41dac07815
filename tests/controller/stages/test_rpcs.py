"""GetStage and SetStage: the global default, workspace overrides, refusals, and every replica seeing it."""

from __future__ import annotations

import asyncio
import time

import grpc

from relay import server
from relay.core.config import Settings
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as jpb
from relay.v1 import stage_pb2
from tests.job_testkit import execute, refusal
from tests.migration_testkit import SETTLE, get_stage, pretend_backfill_completed, set_stage, settle


async def controller(start_relay, stage=Stage.LEGACY_ONLY):
    return await start_relay(stage=stage, stage_settle_seconds=SETTLE)


async def test_without_a_stored_stage_the_environment_default_is_in_force(start_relay, keys):
    relay = await controller(start_relay, Stage.DUAL_WRITE)
    setting = await get_stage(relay.controller, keys.md("admin"))
    assert (setting.stage, setting.source, setting.inherited) == (
        stage_pb2.STAGE_DUAL_WRITE,
        "environment",
        False,
    )
    inherited = await get_stage(relay.controller, keys.md("admin"), "ws-a")
    assert (inherited.stage, inherited.inherited, inherited.workspace_id) == (
        stage_pb2.STAGE_DUAL_WRITE,
        True,
        "ws-a",
    )


async def test_the_old_systems_flags_give_the_default_stage_at_start_up(redis_server, redis, keys_file, keys):
    env = {"AI_JOBS_NEW_SCHEMA": "off", "READ_PREFERS_NEW": "on", "READ_FALLBACK_OLD": "on"}
    settings = Settings.from_env(
        env,
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        api_keys_file=str(keys_file[0]),
        metrics_listen="",
    )
    app = await server.start(settings, "all")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            from relay.v1 import job_service_pb2_grpc, migration_controller_pb2_grpc

            stub = migration_controller_pb2_grpc.MigrationControllerStub(channel)
            setting = await get_stage(stub, keys.md("admin"))
            assert (setting.stage, setting.source) == (stage_pb2.STAGE_LEGACY_ONLY, "environment")
            [job_id] = await execute(job_service_pb2_grpc.JobServiceStub(channel), keys.md("ws_a"))
        assert await redis.exists(KEYS.legacy_job(job_id)) == 1
        assert await redis.exists(KEYS.new_job("ws-a", job_id)) == 0
    finally:
        await app.stop(0.5)
    flags = {
        "": Stage.READ_NEW,
        "AI_JOBS_NEW_SCHEMA=off": Stage.LEGACY_ONLY,
        "READ_PREFERS_NEW=off": Stage.DUAL_WRITE,
        "READ_FALLBACK_OLD=off": Stage.NEW_ONLY,
        "READ_FALLBACK_OLD=0": Stage.NEW_ONLY,
    }
    for flag, stage in flags.items():
        env = dict([flag.split("=")]) if flag else {}
        assert Settings.from_env(env).default_stage is stage, flag


async def test_a_stage_walks_forward_one_step_at_a_time_and_records_its_history(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    reply = await set_stage(relay.controller, md, Stage.DUAL_WRITE)
    assert reply.previous.stage == stage_pb2.STAGE_LEGACY_ONLY
    assert reply.setting.stage == stage_pb2.STAGE_DUAL_WRITE
    assert reply.setting.source == "redis" and reply.setting.version == 1
    assert reply.setting.new_writes_start_time.seconds > 0
    skipped = await refusal(set_stage(relay.controller, md, Stage.NEW_ONLY))
    assert (skipped.code, skipped.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STAGE_SKIPPED")
    assert "READ_NEW" in skipped.message


async def test_read_new_is_refused_until_a_backfill_started_after_dual_write_completed(
    start_relay, keys, redis
):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await pretend_backfill_completed(redis)  # before dual-write: it cannot have seen later legacy writes
    await set_stage(relay.controller, md, Stage.DUAL_WRITE)
    refused = await refusal(set_stage(relay.controller, md, Stage.READ_NEW))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BACKFILL_REQUIRED")
    assert "relayctl backfill start --execute" in refused.message
    assert refused.metadata["to"] == "READ_NEW"
    assert (await get_stage(relay.controller, md)).stage == stage_pb2.STAGE_DUAL_WRITE
    await settle()
    await pretend_backfill_completed(redis)
    reply = await set_stage(relay.controller, md, Stage.READ_NEW, shadow=True)
    assert reply.setting.stage == stage_pb2.STAGE_READ_NEW and reply.setting.shadow_reads


async def test_a_workspace_override_moves_alone_and_is_cleared_only_in_the_global_stage(
    start_relay, keys, redis
):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await set_stage(relay.controller, md, Stage.DUAL_WRITE, "ws-a")
    await settle()
    await pretend_backfill_completed(redis, "ws-a")
    await set_stage(relay.controller, md, Stage.READ_NEW, "ws-a")
    own = await get_stage(relay.controller, md, "ws-a")
    assert (own.stage, own.inherited) == (stage_pb2.STAGE_READ_NEW, False)
    other = await get_stage(relay.controller, md, "ws-b")
    assert (other.stage, other.inherited) == (stage_pb2.STAGE_LEGACY_ONLY, True)
    # A backfill of one workspace does not cover the global default.
    await set_stage(relay.controller, md, Stage.DUAL_WRITE)
    await settle()
    await pretend_backfill_completed(redis, "ws-a")
    assert (await refusal(set_stage(relay.controller, md, Stage.READ_NEW))).reason == "BACKFILL_REQUIRED"

    clear = stage_pb2.SetStageRequest(workspace_id="ws-a", clear_override=True)
    differs = await refusal(relay.controller.SetStage(clear, metadata=md))
    assert (differs.code, differs.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OVERRIDE_DIFFERS")
    await set_stage(relay.controller, md, Stage.DUAL_WRITE, "ws-a")  # backward: reads both layouts still
    reply = await relay.controller.SetStage(clear, metadata=md)
    assert reply.setting.inherited and reply.setting.stage == stage_pb2.STAGE_DUAL_WRITE
    assert await redis.hexists(KEYS.stage, "ws-a") == 0


async def test_bad_requests_are_refused_precisely_and_change_nothing(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    cases = [
        stage_pb2.SetStageRequest(),
        stage_pb2.SetStageRequest(stage=99),
        stage_pb2.SetStageRequest(stage=stage_pb2.STAGE_DUAL_WRITE, shadow_reads=True),
        stage_pb2.SetStageRequest(workspace_id="Bad WS", stage=stage_pb2.STAGE_DUAL_WRITE),
        stage_pb2.SetStageRequest(clear_override=True),
        stage_pb2.SetStageRequest(workspace_id="ws-a", clear_override=True, stage=stage_pb2.STAGE_DUAL_WRITE),
    ]
    for request in cases:
        refused = await refusal(relay.controller.SetStage(request, metadata=md))
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, request
    denied = await refusal(set_stage(relay.controller, keys.md("ws_a"), Stage.DUAL_WRITE))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert await redis.exists(KEYS.stage, KEYS.stage_history) == 0


async def test_every_jobservice_process_follows_a_stage_change_within_a_second(start_relay, keys, redis):
    # Replicas at the production refresh interval; the change notice makes them faster still.
    replicas = [
        await start_relay(stage=Stage.LEGACY_ONLY, role="jobs", stage_refresh_seconds=0.5) for _ in range(2)
    ]
    relay = await start_relay(stage=Stage.LEGACY_ONLY, role="controller")
    for replica in replicas:
        [job_id] = await execute(replica.jobs, keys.md("ws_a"))
        assert not await redis.exists(KEYS.new_job("ws-a", job_id))
    await set_stage(relay.controller, keys.md("admin"), Stage.DUAL_WRITE)
    changed = time.monotonic()

    async def seen_by(replica) -> float:
        while True:
            [job_id] = await execute(replica.jobs, keys.md("ws_a"))
            if await redis.exists(KEYS.new_job("ws-a", job_id)):
                return time.monotonic() - changed
            await asyncio.sleep(0.02)

    delays = await asyncio.wait_for(asyncio.gather(*(seen_by(r) for r in replicas)), timeout=5)
    assert max(delays) < 1.0, delays
    for replica in replicas:
        assert replica.app.stages.for_workspace("ws-a").stage is Stage.DUAL_WRITE
        reply = await replica.jobs.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))
        assert reply.job.job_id == job_id
