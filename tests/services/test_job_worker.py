"""Workers: ClaimJob hands each pending job (from either queue) to exactly one worker, oldest first;
UpdateJobStatus moves it on, touching only the copies that exist in the layouts the stage uses."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.protobuf import struct_pb2

from relay.core import codec
from relay.core.keys import KEYS
from relay.core.lua.jobs import CLAIM
from relay.core.page_token import PageTokenCodec
from relay.core.stage_store import StageView
from relay.core.stages import Stage
from relay.core.telemetry import build_metrics
from relay.services.job_store import JobStore
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import LEGACY_FIELDS, execute, old_timestamp, refusal, snapshot, write_legacy_job


def _update(job_id: str, status: int, workspace_id: str = "ws-a", **fields) -> pb.UpdateJobStatusRequest:
    return pb.UpdateJobStatusRequest(workspace_id=workspace_id, job_id=job_id, status=status, **fields)


def _result(value: object) -> struct_pb2.Value:
    out = struct_pb2.Value()
    out.struct_value.update(value) if isinstance(value, dict) else out.list_value.extend(value)
    return out


async def _hash(redis, key: str) -> dict[str, str]:
    return codec.decode(await redis.hgetall(key))


async def _claim(relay, keys) -> pb.Job | None:
    reply = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=keys.md("worker"))
    return reply.job if reply.HasField("job") else None


# --- UpdateJobStatus: which copies ------------------------------------------------------------------


@pytest.mark.parametrize("stage", [Stage.LEGACY_ONLY, Stage.DUAL_WRITE, Stage.READ_NEW], ids=lambda s: s.name)
async def test_updating_a_legacy_only_job_changes_the_legacy_record_and_creates_no_new_one(
    start_relay, redis, keys, stage
):
    """The old system's bug: this update created a partial new-layout hash (status and a timestamp)."""
    relay = await start_relay(stage=stage)
    job_id = await write_legacy_job(redis, "ws-a", enqueued_at=old_timestamp(0))
    before = await _hash(redis, KEYS.legacy_job(job_id))
    md = keys.md("worker")
    await relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=md)
    done = await relay.jobs.UpdateJobStatus(
        _update(job_id, pb.JOB_STATUS_COMPLETED, result=_result({"answer": 42})), metadata=md
    )
    assert await redis.exists(KEYS.new_job("ws-a", job_id)) == 0
    after = await _hash(redis, KEYS.legacy_job(job_id))
    assert {f: after[f] for f in LEGACY_FIELDS - {"status", "result"}} == {
        f: before[f] for f in LEGACY_FIELDS - {"status", "result"}
    }
    assert after["status"] == "completed"
    assert json.loads(after["result"]) == {"answer": 42}
    started, finished = codec.parse_time(after["started_at"]), codec.parse_time(after["finished_at"])
    assert started is not None and finished is not None and started <= finished
    assert after["started_at"].endswith("+00:00")
    assert done.job.status == pb.JOB_STATUS_COMPLETED
    assert done.job.result.struct_value["answer"] == 42
    assert (done.job.action_provider, done.job.actor_id) == ("openai", "legacy-user")


@pytest.mark.parametrize("stage", [Stage.DUAL_WRITE, Stage.READ_NEW, Stage.NEW_ONLY], ids=lambda s: s.name)
async def test_updating_a_new_only_job_creates_no_legacy_record(start_relay, redis, keys, stage):
    relay = await start_relay(stage=stage)
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    await redis.delete(KEYS.legacy_job(job_id))
    await relay.jobs.UpdateJobStatus(
        _update(job_id, pb.JOB_STATUS_FAILED, error="boom"), metadata=keys.md("worker")
    )
    assert await redis.exists(KEYS.legacy_job(job_id)) == 0
    new = await _hash(redis, KEYS.new_job("ws-a", job_id))
    assert (new["status"], new["error"]) == ("failed", "boom")


@pytest.mark.parametrize("stage", [Stage.DUAL_WRITE, Stage.READ_NEW], ids=lambda s: s.name)
async def test_updating_a_job_in_both_layouts_keeps_the_copies_equal(start_relay, redis, keys, stage):
    relay = await start_relay(stage=stage)
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    await relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=keys.md("worker"))
    await relay.jobs.UpdateJobStatus(
        _update(job_id, pb.JOB_STATUS_COMPLETED, result=_result([1, "two"])), metadata=keys.md("worker")
    )
    legacy, new = (
        await _hash(redis, KEYS.legacy_job(job_id)),
        await _hash(redis, KEYS.new_job("ws-a", job_id)),
    )
    assert legacy == new
    assert (new["status"], new["result"], new["rev"]) == ("completed", '[1,"two"]', "3")


@pytest.mark.parametrize("stage", [Stage.NEW_ONLY, Stage.LEGACY_CLEANED], ids=lambda s: s.name)
async def test_once_legacy_is_left_behind_a_legacy_only_job_is_not_found_and_unchanged(
    start_relay, redis, keys, stage
):
    relay = await start_relay(stage=stage)
    job_id = await write_legacy_job(redis, "ws-a")
    before = await snapshot(redis)
    missing = await refusal(
        relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=keys.md("worker"))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert await snapshot(redis) == before


async def test_at_new_only_an_update_writes_the_new_copy_only(start_relay, redis, keys):
    dual = await start_relay(stage=Stage.READ_NEW)
    [job_id] = await execute(dual.jobs, keys.md("ws_a"))
    legacy_before = await _hash(redis, KEYS.legacy_job(job_id))
    new_only = await start_relay(stage=Stage.NEW_ONLY)
    await new_only.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=keys.md("worker"))
    assert await _hash(redis, KEYS.legacy_job(job_id)) == legacy_before
    assert (await _hash(redis, KEYS.new_job("ws-a", job_id)))["status"] == "running"


async def test_updates_made_while_rolled_back_to_legacy_only_are_not_lost_going_forward(
    start_relay, redis, keys
):
    """Rolled back to legacy only, updates write the legacy copy; the next update at a later stage brings
    the new copy up to date whole, not just the fields it changes."""
    forward = await start_relay(stage=Stage.READ_NEW)
    back = await start_relay(stage=Stage.LEGACY_ONLY)
    [job_id] = await execute(forward.jobs, keys.md("ws_a"))
    md = keys.md("worker")
    await back.jobs.UpdateJobStatus(
        _update(job_id, pb.JOB_STATUS_RUNNING, result=_result({"partial": 1})), metadata=md
    )
    seen = (await forward.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert (seen.status, seen.result.struct_value["partial"]) == (pb.JOB_STATUS_RUNNING, 1)
    await forward.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_COMPLETED), metadata=md)
    job = (await forward.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert (job.status, job.result.struct_value["partial"]) == (pb.JOB_STATUS_COMPLETED, 1)
    assert await _hash(redis, KEYS.legacy_job(job_id)) == await _hash(redis, KEYS.new_job("ws-a", job_id))


# --- UpdateJobStatus: the lifecycle -----------------------------------------------------------------


@pytest.mark.parametrize("final", [pb.JOB_STATUS_COMPLETED, pb.JOB_STATUS_FAILED])
@pytest.mark.parametrize("layout", ["legacy", "new"])
async def test_a_finished_job_cannot_change_status(relay, redis, keys, final, layout):
    if layout == "legacy":
        job_id = await write_legacy_job(redis, "ws-a")
    else:
        [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    md = keys.md("worker")
    await relay.jobs.UpdateJobStatus(_update(job_id, final), metadata=md)
    before = await snapshot(redis)
    for status in (pb.JOB_STATUS_RUNNING, pb.JOB_STATUS_COMPLETED, pb.JOB_STATUS_FAILED):
        refused = await refusal(relay.jobs.UpdateJobStatus(_update(job_id, status), metadata=md))
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_FINISHED")
    assert await snapshot(redis) == before


async def test_a_job_finished_by_the_old_system_cannot_change_status(relay, redis, keys):
    job_id = await write_legacy_job(redis, "ws-a", status="completed", result='{"ok": true}')
    refused = await refusal(
        relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=keys.md("worker"))
    )
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION


async def test_running_twice_keeps_the_first_start_time(relay, redis, keys):
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    md = keys.md("worker")
    first = (await relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=md)).job
    await asyncio.sleep(0.01)
    again = (await relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=md)).job
    assert again.start_time == first.start_time
    assert again.revision == first.revision + 1


async def test_finishing_a_pending_job_sets_both_times(relay, keys):
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    job = (
        await relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_COMPLETED), metadata=keys.md("worker"))
    ).job
    assert job.HasField("start_time") and job.HasField("finish_time")
    assert job.enqueue_time.ToDatetime() <= job.start_time.ToDatetime() <= job.finish_time.ToDatetime()


# --- ClaimJob ---------------------------------------------------------------------------------------


async def test_claims_go_round_the_queues_fifo_within_each_and_mark_jobs_running(start_relay, redis, keys):
    relay = await start_relay(stage=Stage.READ_NEW)
    legacy_era = await start_relay(stage=Stage.LEGACY_ONLY)
    oldest = await write_legacy_job(redis, "ws-b", queue=True, enqueued_at=old_timestamp(0))
    older = await write_legacy_job(redis, "ws-a", queue=True, enqueued_at=old_timestamp(1))
    [new1] = await execute(relay.jobs, keys.md("ws_a"))
    [legacy_late] = await execute(legacy_era.jobs, keys.md("ws_b"))  # a legacy-only workspace, later
    [new2, new3] = await execute(relay.jobs, keys.md("ws_b"), count=2)
    order = []
    while (job := await _claim(relay, keys)) is not None:
        order.append(job.job_id)
        assert job.status == pb.JOB_STATUS_RUNNING and job.HasField("start_time")
    assert sorted(order) == sorted([oldest, older, new1, legacy_late, new2, new3])
    # FIFO within each queue: the legacy queue, ws-a's and ws-b's.
    for queue in ([oldest, older, legacy_late], [new1], [new2, new3]):
        assert [j for j in order if j in queue] == queue
    # Round robin: the first three claims served three different queues.
    assert {order[0], order[1], order[2]} & {new1} and {order[0], order[1], order[2]} & {new2}
    assert (await _hash(redis, KEYS.legacy_job(oldest)))["status"] == "running"
    assert await redis.exists(KEYS.new_job("ws-b", oldest)) == 0, "a claim creates no copy either"
    for key in (KEYS.legacy_queue, KEYS.queue("ws-a"), KEYS.queue("ws-b"), KEYS.legacy_claiming):
        assert await redis.llen(key) == 0


async def test_a_busy_workspace_never_starves_a_quiet_one(start_relay, keys):
    relay = await start_relay(stage=Stage.NEW_ONLY)
    await execute(relay.jobs, keys.md("ws_a"), count=50)
    [quiet] = await execute(relay.jobs, keys.md("ws_b"))
    first_two = [(await _claim(relay, keys)).job_id for _ in range(2)]
    assert quiet in first_two


async def test_many_concurrent_workers_get_each_job_exactly_once(start_relay, redis, keys):
    relay = await start_relay(stage=Stage.READ_NEW)
    legacy = [
        await write_legacy_job(redis, "ws-b", queue=True, enqueued_at=old_timestamp(n)) for n in range(15)
    ]
    new = await execute(relay.jobs, keys.md("ws_a"), count=15)
    replicas = [relay, await start_relay(stage=Stage.READ_NEW)]
    jobs = await asyncio.gather(*(_claim(replicas[n % 2], keys) for n in range(45)))
    claimed = [j.job_id for j in jobs if j is not None]
    assert sorted(claimed) == sorted(legacy + new)
    assert await _claim(relay, keys) is None
    for job_id in legacy:
        assert (await _hash(redis, KEYS.legacy_job(job_id)))["rev"] == "1"


async def test_entries_of_gone_finished_or_messy_jobs_are_skipped(relay, redis, keys):
    await redis.rpush(KEYS.legacy_queue, "no-such-job", "bad:id")
    await redis.set(KEYS.legacy_job("not-a-hash"), "x")
    await redis.rpush(KEYS.legacy_queue, "not-a-hash")
    done = await write_legacy_job(redis, "ws-a", status="completed", queue=True)
    other = await write_legacy_job(redis, "", queue=True)  # no workspace: nobody's job
    real = await write_legacy_job(redis, "ws-a", queue=True)
    assert (await _claim(relay, keys)).job_id == real
    assert await _claim(relay, keys) is None
    assert (await _hash(redis, KEYS.legacy_job(done)))["status"] == "completed"
    assert (await _hash(redis, KEYS.legacy_job(other)))["status"] == "pending"
    assert await redis.llen(KEYS.legacy_claiming) == 0


async def test_a_claimed_job_can_then_be_completed_by_the_worker(relay, keys):
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    job = await _claim(relay, keys)
    done = await relay.jobs.UpdateJobStatus(
        _update(job.job_id, pb.JOB_STATUS_COMPLETED, workspace_id=job.workspace_id),
        metadata=keys.md("worker"),
    )
    assert (done.job.job_id, done.job.status) == (job_id, pb.JOB_STATUS_COMPLETED)


async def test_an_entry_whose_claimer_died_is_put_back_after_the_claim_timeout(redis, monkeypatch):
    """A claimer that takes an entry and dies before marking the job leaves it in the claiming list; the
    next claim after the timeout puts it back at the head of its queue."""
    stages = StageView(redis, Stage.READ_NEW)
    store = JobStore(redis, stages, PageTokenCodec(b"k"), build_metrics(), claim_timeout_seconds=1.0)
    job_id = await write_legacy_job(redis, "ws-a", queue=True)

    async def die(*args, **kwargs):
        raise ConnectionError("the claimer died")

    monkeypatch.setitem(store._claims._legacy_lua._scripts, CLAIM, die)
    with pytest.raises(ConnectionError):
        await store.claim()
    monkeypatch.undo()
    assert await redis.lrange(KEYS.legacy_claiming, 0, -1) == [job_id.encode()]
    assert await store.claim() is None, "not before the timeout"
    await asyncio.sleep(1.0)
    record = await store.claim()
    assert record is not None and record["job_id"] == job_id and record["status"] == "running"
    assert await redis.llen(KEYS.legacy_claiming) == 0
    assert await redis.hlen(KEYS.legacy_claim_times) == 0
