"""ReverseCopy and the way back: the legacy layout brought up to date so that a rollback loses nothing."""

from __future__ import annotations

import grpc

from relay.controller.common.lease import Lease
from relay.controller.stages.facts import read_evidence
from relay.core import codec
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import cleanup_pb2 as pb
from relay.v1 import job_service_pb2 as jpb
from relay.v1 import stage_pb2
from tests.controller.verify.test_verification import copy_to_new
from tests.job_testkit import execute, refusal, snapshot, write_legacy_job
from tests.migration_testkit import SETTLE, get_stage, reverse_copy, set_stage, settle, verify


async def new_record(redis, workspace_id: str, job_id: str, **fields: str) -> dict[str, str]:
    record = {
        "job_id": job_id,
        "workspace_id": workspace_id,
        "status": "completed",
        "action_provider": "openai",
        "action_name": "chat",
        "params": "{}",
        "actor_id": "a",
        "result": '{"n":1}',
        "error": "",
        "enqueued_at": codec.now_iso(),
        "rev": "3",
        **fields,
    }
    await redis.hset(KEYS.new_job(workspace_id, job_id), mapping=record)
    return record


async def legacy(redis, job_id: str) -> dict[str, str]:
    return codec.decode(await redis.hgetall(KEYS.legacy_job(job_id)))


async def test_reverse_copy_brings_missing_and_older_legacy_records_up_to_date(relay, keys, redis):
    only_new = await new_record(redis, "ws-a", "only-new")
    older = await new_record(redis, "ws-a", "older")
    await redis.hset(
        KEYS.legacy_job("older"), mapping={**older, "rev": "1", "status": "pending", "stale": "x"}
    )
    same = await new_record(redis, "ws-a", "same")
    await redis.hset(KEYS.legacy_job("same"), mapping=same)
    newer_legacy = await new_record(redis, "ws-a", "newer-legacy")
    await redis.hset(
        KEYS.legacy_job("newer-legacy"), mapping={**newer_legacy, "rev": "4", "status": "failed"}
    )
    differing = await new_record(redis, "ws-a", "differing")
    await redis.hset(KEYS.legacy_job("differing"), mapping={**differing, "result": '{"n":2}'})
    await new_record(redis, "ws-a", "taken")
    await write_legacy_job(redis, "ws-b", job_id="taken")  # another workspace's job with the same id
    await new_record(redis, "ws-b", "other-workspace")

    before = await snapshot(redis)
    dry = (await reverse_copy(relay.controller, keys.md("admin"), dry_run=True, workspace_id="ws-a"))[-1]
    assert (dry.cleanup.done, dry.cleanup.dry_run) == (2, True)
    assert await snapshot(redis) == before

    events = await reverse_copy(relay.controller, keys.md("admin"), workspace_id="ws-a", batch_size=2)
    result = events[-1].cleanup
    assert events[-1].kind == pb.CLEANUP_EVENT_KIND_COMPLETED
    assert (result.done, result.unchanged, result.kept_legacy_newer) == (2, 1, 1)
    assert (result.kept_differing, result.kept_invalid) == (1, 1)
    assert await legacy(redis, "only-new") == only_new
    assert await legacy(redis, "older") == older  # replaced whole: the stale field is gone
    assert (await legacy(redis, "newer-legacy"))["status"] == "failed"
    assert (await legacy(redis, "differing"))["result"] == '{"n":2}'
    assert (await legacy(redis, "taken"))["workspace_id"] == "ws-b"
    assert not await redis.exists(KEYS.legacy_job("other-workspace"))
    # It left records it could not copy, so no rollback may rely on it.
    evidence = await read_evidence(redis, "ws-a")
    assert evidence.reverse_copy is not None and not evidence.reverse_copy.complete


async def test_reverse_copy_is_refused_while_a_backfill_runs(relay, keys, redis):
    backfill = Lease(redis, KEYS.backfill_lease, "backfill-1@elsewhere")
    assert await backfill.acquire()
    try:
        refused = await refusal(reverse_copy(relay.controller, keys.md("admin")))
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BACKFILL_RUNNING")
    finally:
        await backfill.release()


async def test_rolling_back_from_new_only_needs_a_reverse_copy_on_each_side_of_the_resume(
    start_relay, keys, redis
):
    relay = await start_relay(stage=Stage.READ_NEW, stage_settle_seconds=SETTLE)
    md, ws_a = keys.md("admin"), keys.md("ws_a")
    old = await write_legacy_job(redis, "ws-a")
    await copy_to_new(redis, old)
    assert (await verify(relay.controller, md))[-1].verification.clean
    await set_stage(relay.controller, md, Stage.NEW_ONLY)
    await settle()
    [written_new_only] = await execute(relay.jobs, ws_a)
    assert not await redis.exists(KEYS.legacy_job(written_new_only))

    assert (
        await refusal(set_stage(relay.controller, md, Stage.LEGACY_ONLY))
    ).reason == "ROLLBACK_THROUGH_READ_NEW"
    assert (await refusal(set_stage(relay.controller, md, Stage.READ_NEW))).reason == "REVERSE_COPY_REQUIRED"
    await reverse_copy(relay.controller, md)
    assert await redis.exists(KEYS.legacy_job(written_new_only))
    [still_new_only] = await execute(relay.jobs, ws_a)  # after the copy, before the stage changes
    await set_stage(relay.controller, md, Stage.READ_NEW)
    await settle()
    reply = await relay.jobs.GetJob(jpb.GetJobRequest(job_id=still_new_only), metadata=ws_a)
    assert reply.job.job_id == still_new_only  # READ_NEW reads the new layout: nothing hidden

    refused = await refusal(set_stage(relay.controller, md, Stage.LEGACY_ONLY))
    assert refused.reason == "REVERSE_COPY_REQUIRED"
    assert "wrote the new layout only" in refused.message  # the first copy predates the resume
    await reverse_copy(relay.controller, md)
    await set_stage(relay.controller, md, Stage.DUAL_WRITE)
    await set_stage(relay.controller, md, Stage.LEGACY_ONLY)
    assert (await get_stage(relay.controller, md)).stage == stage_pb2.STAGE_LEGACY_ONLY
    await settle()
    for job_id in (old, written_new_only, still_new_only):
        reply = await relay.jobs.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=ws_a)
        assert reply.job.job_id == job_id
