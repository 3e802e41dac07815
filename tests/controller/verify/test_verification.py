"""VerifyMigration: a per-workspace diff of legacy against new, resumable, rate-limited, stored."""

from __future__ import annotations

import asyncio
import time

import grpc

from relay.controller.common.lease import Lease
from relay.controller.stages.facts import read_evidence
from relay.core import codec
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as jpb
from relay.v1 import verification_pb2 as pb
from tests.job_testkit import execute, refusal, write_legacy_job
from tests.migration_testkit import verify


async def copy_to_new(redis, job_id: str, listed: bool = True, **changes: str) -> None:
    """What a backfill makes of a legacy record: the same hash under the new key, and an index entry."""
    record = codec.decode(await redis.hgetall(KEYS.legacy_job(job_id)))
    workspace_id = record["workspace_id"]
    await redis.hset(KEYS.new_job(workspace_id, job_id), mapping={**record, **changes})
    if listed:
        await redis.zadd(KEYS.job_index(workspace_id), {codec.index_member(job_id, record["enqueued_at"]): 0})


async def messy_dataset(redis) -> dict[str, str]:
    ids: dict[str, str] = {}
    for n in range(3):
        ids[f"match{n}"] = await write_legacy_job(redis, "ws-a")
        await copy_to_new(redis, ids[f"match{n}"])
    ids["missing"] = await write_legacy_job(redis, "ws-a")
    ids["differing"] = await write_legacy_job(redis, "ws-a")
    await copy_to_new(redis, ids["differing"], status="completed", result='{"ok":true}')
    ids["unlisted"] = await write_legacy_job(redis, "ws-a")
    await copy_to_new(redis, ids["unlisted"], listed=False)
    ids["behind"] = await write_legacy_job(redis, "ws-a", rev="1")  # updated since in the new layout only
    await copy_to_new(redis, ids["behind"], rev="2", status="running")
    ids["only_new"] = await write_legacy_job(redis, "ws-a")
    await copy_to_new(redis, ids["only_new"])
    await redis.delete(KEYS.legacy_job(ids["only_new"]))
    for n in range(2):
        ids[f"b{n}"] = await write_legacy_job(redis, "ws-b")
        await copy_to_new(redis, ids[f"b{n}"])
    await redis.set(KEYS.legacy_job("not-a-hash"), "garbage")
    await write_legacy_job(redis, "Bad WS", job_id="bad-workspace")
    await redis.hset(KEYS.legacy_job("no-workspace"), mapping={"status": "pending"})
    return ids


async def test_the_diff_counts_each_kind_of_difference_per_workspace(relay, keys, redis):
    ids = await messy_dataset(redis)
    events = await verify(relay.controller, keys.md("admin"), batch_size=4)
    assert events[0].kind == pb.VERIFICATION_EVENT_KIND_STARTED
    assert events[-1].kind == pb.VERIFICATION_EVENT_KIND_COMPLETED
    result = events[-1].verification
    assert result.state == pb.VERIFICATION_STATE_COMPLETED and result.percent_done == 100
    assert not result.clean and not result.legacy_covered
    assert result.invalid_legacy == 3
    diffs = {d.workspace_id: d for d in result.workspaces}
    a = diffs["ws-a"]
    assert (a.matching, a.missing_in_new, a.differing, a.only_in_new, a.unlisted) == (4, 1, 1, 1, 1)
    assert a.legacy_behind == 1  # not a difference: the new copy is newer, and JobService serves it
    assert dict(a.differing_fields) == {"status": 1, "result": 1}
    assert {ids["missing"], ids["differing"], ids["only_new"], ids["unlisted"]} == set(a.sample_job_ids)
    b = diffs["ws-b"]
    assert (b.matching, b.missing_in_new, b.differing, b.only_in_new, b.unlisted) == (2, 0, 0, 0, 0)
    stored = await relay.controller.GetVerification(pb.GetVerificationRequest(), metadata=keys.md("admin"))
    assert stored == result
    # The facts the stage rules read: all workspaces dirty, ws-b clean on its own.
    assert not (await read_evidence(redis, "")).verification.clean
    assert (await read_evidence(redis, "ws-b")).verification.clean
    assert not (await read_evidence(redis, "ws-a")).verification.clean


async def test_a_workspace_verification_looks_at_that_workspace_only(relay, keys, redis):
    await messy_dataset(redis)
    result = (await verify(relay.controller, keys.md("admin"), workspace_id="ws-b"))[-1].verification
    assert [d.workspace_id for d in result.workspaces] == ["ws-b"]
    assert result.clean and result.workspace_id == "ws-b"
    assert (await read_evidence(redis, "ws-b")).verification.clean
    assert (await read_evidence(redis, "")).verification is None


async def test_get_verification_before_any_is_not_found(relay, keys):
    refused = await refusal(
        relay.controller.GetVerification(pb.GetVerificationRequest(), metadata=keys.md("admin"))
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "NO_VERIFICATION")


async def test_an_interrupted_verification_resumes_from_its_checkpoint(relay, keys, redis):
    for _ in range(60):
        await copy_to_new(redis, await write_legacy_job(redis, "ws-a"))
    md = keys.md("admin")
    call = relay.controller.VerifyMigration(
        pb.VerifyMigrationRequest(batch_size=5, rate_limit=200), metadata=md
    )
    async for event in call:
        if event.kind == pb.VERIFICATION_EVENT_KIND_PROGRESS and event.verification.scanned_legacy >= 10:
            break
    call.cancel()
    for _ in range(100):  # the controller notices the caller went away
        stored = await relay.controller.GetVerification(pb.GetVerificationRequest(), metadata=md)
        if stored.state == pb.VERIFICATION_STATE_INTERRUPTED and not await redis.exists(KEYS.operation_lease):
            break
        await asyncio.sleep(0.02)
    assert stored.state == pb.VERIFICATION_STATE_INTERRUPTED
    assert 10 <= stored.scanned_legacy < 60
    resumed = (await verify(relay.controller, md, resume=True))[-1].verification
    assert resumed.verification_id == stored.verification_id
    assert resumed.clean and resumed.state == pb.VERIFICATION_STATE_COMPLETED
    assert resumed.workspaces[0].matching >= 60  # SCAN may return a key twice, never miss one
    nothing = await refusal(verify(relay.controller, md, resume=True))
    assert (nothing.code, nothing.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_TO_RESUME")


async def test_a_verification_keeps_to_its_rate_limit(relay, keys, redis):
    pipe = redis.pipeline(transaction=False)
    for n in range(200):
        pipe.hset(KEYS.legacy_job(f"job-{n}"), mapping={"workspace_id": "ws-a", "status": "pending"})
    await pipe.execute()
    began = time.monotonic()
    result = (await verify(relay.controller, keys.md("admin"), rate_limit=400, batch_size=50))[
        -1
    ].verification
    assert result.scanned_legacy == 200
    assert time.monotonic() - began >= 0.4  # 200 keys at 400/s, less the quarter-second burst


async def test_only_one_long_operation_runs_at_a_time(relay, keys, redis):
    other = Lease(redis, KEYS.operation_lease, "cleanup-123@elsewhere")
    assert await other.acquire()
    try:
        refused = await refusal(verify(relay.controller, keys.md("admin")))
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OPERATION_RUNNING")
        assert "cleanup-123@elsewhere" in refused.message
    finally:
        await other.release()


async def test_live_status_updates_during_a_verification_are_not_differences(start_relay, keys, redis):
    relay = await start_relay(stage=Stage.DUAL_WRITE)
    job_ids = []
    for _ in range(10):
        job_ids += await execute(relay.jobs, keys.md("ws_a"), count=30)
    stop = asyncio.Event()

    async def worker(mine: list[str]) -> None:
        statuses = [jpb.JOB_STATUS_RUNNING, jpb.JOB_STATUS_COMPLETED]
        for status in statuses:
            for job_id in mine:
                request = jpb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=job_id, status=status)
                await relay.jobs.UpdateJobStatus(request, metadata=keys.md("worker"))
        stop.set()

    updates = asyncio.create_task(worker(job_ids))
    results = []
    while not stop.is_set():
        results.append((await verify(relay.controller, keys.md("admin"), batch_size=10))[-1].verification)
    await updates
    for result in results:
        assert result.clean, result
        assert result.workspaces[0].matching >= 300
