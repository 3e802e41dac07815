"""Execute: one job per action, written to the layouts the stage says, idempotent per client_request_id."""

from __future__ import annotations

import asyncio

import pytest

from relay.core import codec
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import LEGACY_FIELDS, execute, write_legacy_job

ALL_STAGES = list(Stage)


async def _count(redis, pattern: str) -> int:
    return len([k async for k in redis.scan_iter(match=pattern, count=1000)])


@pytest.mark.parametrize("stage", [Stage.LEGACY_ONLY, Stage.READ_NEW, Stage.NEW_ONLY], ids=lambda s: s.name)
async def test_200_concurrent_executes_with_one_client_request_id_make_exactly_one_job(
    start_relay, redis, keys, stage
):
    relay = await start_relay(stage=stage)
    request = pb.ExecuteRequest(
        actions=[pb.Action(provider="openai", action="chat", client_request_id="retry-me")], actor_id="me"
    )
    replies = await asyncio.gather(
        *(relay.jobs.Execute(request, metadata=keys.md("ws_a")) for _ in range(200))
    )
    ids = {tuple(r.job_ids) for r in replies}
    assert len(ids) == 1
    [(job_id,)] = ids
    assert await _count(redis, "ai:jobs:*") == (1 if stage.writes_legacy else 0)
    assert await _count(redis, "ai:job:*") == (1 if stage.writes_new else 0)
    assert await redis.llen(KEYS.legacy_queue) + await redis.llen(KEYS.queue("ws-a")) == 1
    assert await redis.zcard(KEYS.job_index("ws-a")) == 1
    # The idempotency key of each layout the stage writes.
    written = [KEYS.idempotency("ws-a", "retry-me")] if stage.writes_legacy else []
    written += [KEYS.new_idempotency("ws-a", "retry-me")] if stage.writes_new else []
    for key in written:
        assert await redis.get(key) == job_id.encode()
        assert 23 * 3600 < await redis.ttl(key) <= 24 * 3600


async def test_a_replay_after_the_job_moved_on_returns_the_original_job(relay, redis, keys):
    [job_id] = await execute(relay.jobs, keys.md("ws_a"), client_request_id="once")
    await relay.jobs.UpdateJobStatus(
        pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_COMPLETED),
        metadata=keys.md("worker"),
    )
    assert await execute(relay.jobs, keys.md("ws_a"), client_request_id="once") == [job_id]
    assert await redis.zcard(KEYS.job_index("ws-a")) == 1


async def test_a_batch_returns_one_id_per_action_in_order_and_repeats_within_it_share_a_job(relay, keys):
    actions = [
        pb.Action(provider="openai", action="first", client_request_id="x"),
        pb.Action(provider="openai", action="second"),
        pb.Action(provider="openai", action="first-again", client_request_id="x"),
    ]
    reply = await relay.jobs.Execute(pb.ExecuteRequest(actions=actions), metadata=keys.md("ws_a"))
    first, second, again = reply.job_ids
    assert again == first != second
    get = relay.jobs.GetJob
    assert (await get(pb.GetJobRequest(job_id=first), metadata=keys.md("ws_a"))).job.action_name == "first"
    assert (await get(pb.GetJobRequest(job_id=second), metadata=keys.md("ws_a"))).job.action_name == "second"
    assert reply.queue_depth == 2


async def test_queue_depth_counts_both_queues(relay, redis, keys):
    await write_legacy_job(redis, "ws-b", queue=True)
    reply = await relay.jobs.Execute(
        pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")] * 3), metadata=keys.md("ws_a")
    )
    assert reply.queue_depth == 4


@pytest.mark.parametrize("stage", ALL_STAGES, ids=lambda s: s.name)
async def test_execute_writes_the_layouts_and_queue_the_stage_says(start_relay, redis, keys, stage):
    relay = await start_relay(stage=stage)
    request = pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")], actor_id="me")
    request.actions[0].params.update({"prompt": "hi", "n": 2})
    [job_id] = (await relay.jobs.Execute(request, metadata=keys.md("ws_a"))).job_ids

    legacy = await redis.hgetall(KEYS.legacy_job(job_id))
    new = await redis.hgetall(KEYS.new_job("ws-a", job_id))
    assert bool(legacy) is stage.writes_legacy
    assert bool(new) is stage.writes_new
    for record in (r for r in (legacy, new) if r):
        fields = codec.decode(record)
        assert set(fields) >= LEGACY_FIELDS, "every field the old system wrote, for its readers"
        assert fields["status"] == "pending"
        assert fields["workspace_id"] == "ws-a"
        assert fields["params"] == '{"n":2,"prompt":"hi"}'
        assert fields["result"] == ""
        assert codec.parse_time(fields["enqueued_at"]) is not None
    if legacy and new:
        assert legacy == new
    # Workers of the old system read ai:queue:pending; it gets the job only while no new copy exists.
    assert await redis.lrange(KEYS.legacy_queue, 0, -1) == ([] if stage.writes_new else [job_id.encode()])
    assert await redis.lrange(KEYS.queue("ws-a"), 0, -1) == ([job_id.encode()] if stage.writes_new else [])
    assert await redis.zcard(KEYS.job_index("ws-a")) == 1
