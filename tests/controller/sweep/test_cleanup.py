"""CleanupLegacy: deletes legacy keys only when safe, each deletion checked in one atomic step."""

from __future__ import annotations

import asyncio

import grpc

from relay.controller.common.lease import Lease
from relay.controller.stages.facts import read_evidence
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import cleanup_pb2 as pb
from relay.v1 import stage_pb2
from tests.controller.verify.test_verification import copy_to_new
from tests.job_testkit import refusal, snapshot, write_legacy_job
from tests.migration_testkit import SETTLE, cleanup, get_stage, reverse_copy, set_stage, settle, verify


async def controller(start_relay, stage=Stage.READ_NEW, **overrides):
    return await start_relay(stage=stage, stage_settle_seconds=SETTLE, **overrides)


async def migrated_jobs(redis, workspace_id: str, count: int, status: str = "completed") -> list[str]:
    ids = []
    for _ in range(count):
        job_id = await write_legacy_job(redis, workspace_id, status=status)
        await copy_to_new(redis, job_id)
        ids.append(job_id)
    return ids


async def into_new_only(relay, md) -> None:
    """A clean verification, then NEW_ONLY, then the settle time."""
    assert (await verify(relay.controller, md))[-1].verification.clean
    await set_stage(relay.controller, md, Stage.NEW_ONLY)
    await settle()


async def test_cleanup_is_refused_while_legacy_keys_are_still_read(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await migrated_jobs(redis, "ws-a", 3)
    before = await snapshot(redis)
    refused = await refusal(cleanup(relay.controller, md, dry_run=False))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STAGE_NOT_NEW_ONLY")
    await set_stage(relay.controller, md, Stage.READ_NEW, "ws-b")  # a workspace that stays behind
    await into_new_only(relay, md)
    refused = await refusal(cleanup(relay.controller, md))
    assert refused.reason == "STAGE_NOT_NEW_ONLY" and "ws-b" in refused.message
    assert len(await redis.keys("ai:jobs:*")) == 3
    assert {k for k in before if k.startswith(b"ai:jobs:")} == set(await redis.keys("ai:jobs:*"))


async def test_cleanup_needs_a_recent_verification_and_no_backfill(start_relay, keys, redis):
    relay = await controller(start_relay, Stage.NEW_ONLY, verification_max_age_seconds=0.5)
    md = keys.md("admin")
    await migrated_jobs(redis, "ws-a", 2)
    assert (await refusal(cleanup(relay.controller, md))).reason == "VERIFICATION_REQUIRED"
    await verify(relay.controller, md)
    backfill = Lease(redis, KEYS.backfill_lease, "backfill-7@elsewhere")
    assert await backfill.acquire()
    try:
        refused = await refusal(cleanup(relay.controller, md))
        assert (refused.reason, "backfill-7@elsewhere" in refused.message) == ("BACKFILL_RUNNING", True)
    finally:
        await backfill.release()
    await asyncio.sleep(0.6)
    assert (await refusal(cleanup(relay.controller, md))).reason == "VERIFICATION_OUTDATED"
    assert len(await redis.keys("ai:jobs:*")) == 2


async def test_a_dry_run_counts_and_writes_nothing_at_all(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await migrated_jobs(redis, "ws-a", 5)
    await redis.rpush(KEYS.legacy_queue, "gone-1", "gone-2")
    await redis.set("ai:idempotency:Bad WS:x", "job")
    before = await snapshot(redis)
    events = await cleanup(relay.controller, md, dry_run=True, batch_size=2)
    result = events[-1].cleanup
    assert events[-1].kind == pb.CLEANUP_EVENT_KIND_COMPLETED and result.dry_run
    assert (result.done, result.queue_entries_removed, result.idempotency_deleted) == (5, 2, 1)
    assert "an execute would be refused now" in events[0].cleanup.reason
    again = (await cleanup(relay.controller, md, dry_run=True, batch_size=2))[-1].cleanup
    assert (again.done, again.queue_entries_removed, again.idempotency_deleted) == (5, 2, 1)
    assert await snapshot(redis) == before


async def test_each_legacy_key_goes_only_when_its_new_copy_is_equal_or_newer(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    done = await migrated_jobs(redis, "ws-a", 4)
    [pending] = await migrated_jobs(redis, "ws-b", 1, status="pending")
    [newer_new, newer_legacy, same_rev_other_data, lost_new] = await migrated_jobs(redis, "ws-b", 4)
    await redis.set(KEYS.legacy_job("not-a-hash"), "garbage")
    await write_legacy_job(redis, "Bad WS", job_id="bad-workspace")
    await redis.rpush(KEYS.legacy_queue, done[0], "gone", pending, done[1])
    await redis.set(KEYS.idempotency("ws-a", "req-1"), done[0], ex=3600)
    for junk in ("ai:idempotency:Bad WS:x", "ai:idempotency:ws-a:a:b", "ai:idempotency:ws-a"):
        await redis.set(junk, "job")
    await into_new_only(relay, md)
    # Changes after the verification, which only each deletion's own check can see:
    await redis.hset(KEYS.new_job("ws-b", newer_new), mapping={"rev": "3", "status": "failed"})
    await redis.hset(KEYS.legacy_job(newer_legacy), mapping={"rev": "2", "status": "failed"})
    await redis.hset(KEYS.legacy_job(same_rev_other_data), "result", '{"changed":true}')
    await redis.delete(KEYS.new_job("ws-b", lost_new))

    events = await cleanup(relay.controller, md, batch_size=3)
    result = events[-1].cleanup
    assert result.state == pb.CLEANUP_STATE_COMPLETED and not result.dry_run
    assert result.done == 5  # the four done jobs and the one whose new copy is newer
    assert (result.kept_pending, result.kept_legacy_newer, result.kept_differing) == (1, 1, 1)
    assert (result.kept_missing_new, result.kept_invalid) == (1, 2)
    left = {k.decode() for k in await redis.keys("ai:jobs:*")}
    assert left == {
        KEYS.legacy_job(j)
        for j in (pending, newer_legacy, same_rev_other_data, lost_new, "not-a-hash", "bad-workspace")
    }
    # The queue is drained where claimers take it, up to the first job still pending.
    assert result.queue_entries_removed == 2
    assert await redis.lrange(KEYS.legacy_queue, 0, -1) == [pending.encode(), done[1].encode()]
    # Relay's own idempotency keys stay; only keys it could never read go.
    assert result.idempotency_deleted == 3
    assert await redis.get(KEYS.idempotency("ws-a", "req-1")) == done[0].encode()
    assert await redis.keys("ai:idempotency:*") == [KEYS.idempotency("ws-a", "req-1").encode()]
    # It kept valid records, so it does not let the stage move to LEGACY_CLEANED.
    assert not (await read_evidence(redis, "")).cleanup.complete
    refused = await refusal(set_stage(relay.controller, md, Stage.LEGACY_CLEANED))
    assert refused.reason == "CLEANUP_REQUIRED"


async def test_a_complete_cleanup_lets_the_stage_move_to_legacy_cleaned(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await migrated_jobs(redis, "ws-a", 6)
    await into_new_only(relay, md)
    assert (await refusal(set_stage(relay.controller, md, Stage.LEGACY_CLEANED))).reason == "CLEANUP_REQUIRED"
    result = (await cleanup(relay.controller, md))[-1].cleanup
    assert (result.done, result.kept_invalid) == (6, 0)
    assert await redis.keys("ai:jobs:*") == []
    await set_stage(relay.controller, md, Stage.LEGACY_CLEANED)
    assert (await get_stage(relay.controller, md)).stage == stage_pb2.STAGE_LEGACY_CLEANED


async def test_max_keys_stops_a_cleanup_that_resume_continues(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await migrated_jobs(redis, "ws-a", 40)
    await into_new_only(relay, md)
    events = await cleanup(relay.controller, md, batch_size=5, max_keys=10)
    stopped = events[-1]
    assert stopped.kind == pb.CLEANUP_EVENT_KIND_STOPPED
    assert stopped.cleanup.state == pb.CLEANUP_STATE_INTERRUPTED and "max_keys" in stopped.cleanup.reason
    assert 10 <= stopped.cleanup.scanned < 20
    assert len(await redis.keys("ai:jobs:*")) == 40 - stopped.cleanup.done
    resumed = (await cleanup(relay.controller, md, resume=True))[-1].cleanup
    assert resumed.cleanup_id == stopped.cleanup_id and resumed.state == pb.CLEANUP_STATE_COMPLETED
    assert resumed.done >= 40 - stopped.cleanup.done
    assert await redis.keys("ai:jobs:*") == []
    assert (await read_evidence(redis, "")).cleanup.complete


async def test_a_cleanup_stops_when_a_stage_moves_back(start_relay, keys, redis):
    relay = await controller(start_relay)
    md = keys.md("admin")
    await migrated_jobs(redis, "ws-a", 60)
    await into_new_only(relay, md)
    assert (await reverse_copy(relay.controller, md))[-1].cleanup.state == pb.CLEANUP_STATE_COMPLETED
    call = relay.controller.CleanupLegacy(pb.CleanupLegacyRequest(batch_size=5, rate_limit=100), metadata=md)
    events = []
    async for event in call:
        events.append(event)
        if event.kind == pb.CLEANUP_EVENT_KIND_PROGRESS and len(events) == 2:
            await set_stage(relay.controller, md, Stage.READ_NEW, "ws-a")
    assert events[-1].kind == pb.CLEANUP_EVENT_KIND_STOPPED
    assert "moved back" in events[-1].cleanup.reason
    assert 0 < len(await redis.keys("ai:jobs:*")) < 60
