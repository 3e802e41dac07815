"""JobService when the legacy layout and the new layout live in different stores (topologies 2 and 3).

Each specification runs against a real Redis Cluster (3 primaries, a replica each) and against a second
single Redis, with the legacy layout on its own single Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
from redis import exceptions as redis_errors

from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.core.stores import TopologyError, open_stores
from relay.services.split_writes import SplitWrites
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import execute, list_all, old_timestamp, refusal, write_legacy_job

WRITING_BOTH = [Stage.DUAL_WRITE, Stage.READ_NEW]


async def _claim(relay, keys) -> pb.Job | None:
    reply = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=keys.md("worker"))
    return reply.job if reply.HasField("job") else None


def _update(job_id: str, status: int, workspace_id: str = "ws-a") -> pb.UpdateJobStatusRequest:
    return pb.UpdateJobStatusRequest(job_id=job_id, workspace_id=workspace_id, status=status)


async def _hash(redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}


# --- configuration -------------------------------------------------------------------------------


async def test_a_cluster_named_as_the_legacy_store_is_refused(redis_cluster, redis_server):
    with pytest.raises(TopologyError, match="legacy layout cannot live in a cluster"):
        await open_stores(redis_server.url, redis_cluster.url)


async def test_a_cluster_without_a_legacy_store_is_refused(redis_cluster):
    with pytest.raises(TopologyError, match="RELAY_LEGACY_REDIS_URL"):
        await open_stores(redis_cluster.url, "")


async def test_the_topology_is_detected_from_the_urls(split):
    stores = await open_stores(split.new_url, split.legacy_url)
    try:
        assert stores.topology.value == ("split-cluster" if split.kind == "cluster" else "split-single")
    finally:
        await stores.aclose()


# --- writes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(Stage)[:4])
async def test_execute_writes_each_layout_the_stage_writes_in_its_own_store(
    start_split_relay, split, keys, stage
):
    relay = await start_split_relay(stage=stage)
    [job_id] = await execute(relay.jobs, keys.md("ws_a"), client_request_id="r1")
    legacy = await _hash(split.legacy, KEYS.legacy_job(job_id))
    new = await _hash(split.new, KEYS.new_job("ws-a", job_id))
    assert bool(legacy) == stage.writes_legacy
    assert bool(new) == stage.writes_new
    if legacy and new:
        assert legacy == new
    # Nothing of the new layout on the legacy store, nothing of the legacy layout on the new one.
    assert await split.legacy.exists(KEYS.new_job("ws-a", job_id)) == 0
    assert await split.new.exists(KEYS.legacy_job(job_id)) == 0
    assert await split.legacy.hlen(KEYS.legacy_outbox) == 0, "settled"
    if stage.writes_new:
        assert await split.new.lrange(KEYS.queue("ws-a"), 0, -1) == [job_id.encode()]
        assert await split.legacy.llen(KEYS.legacy_queue) == 0
    else:
        assert await split.legacy.lrange(KEYS.legacy_queue, 0, -1) == [job_id.encode()]
    got = await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))
    assert got.job.job_id == job_id


@pytest.mark.parametrize("stage", WRITING_BOTH)
async def test_200_concurrent_replays_of_one_client_request_id_make_one_job(
    start_split_relay, split, keys, stage
):
    relay = await start_split_relay(stage=stage)
    request = pb.ExecuteRequest(
        actions=[pb.Action(provider="openai", action="chat", client_request_id="once")]
    )
    replies = await asyncio.gather(
        *(relay.jobs.Execute(request, metadata=keys.md("ws_a")) for _ in range(200))
    )
    assert len({tuple(r.job_ids) for r in replies}) == 1
    [_job_id] = replies[0].job_ids
    assert await split.new.llen(KEYS.queue("ws-a")) == 1
    assert len([k async for k in split.legacy.scan_iter(match="ai:jobs:*")]) == 1


async def test_a_replay_returns_the_original_job_across_stage_changes(start_split_relay, keys):
    ids = set()
    for stage in (Stage.LEGACY_ONLY, Stage.DUAL_WRITE, Stage.READ_NEW, Stage.NEW_ONLY):
        relay = await start_split_relay(stage=stage)
        ids.add(tuple(await execute(relay.jobs, keys.md("ws_a"), client_request_id="across")))
    assert len(ids) == 1


@pytest.mark.parametrize("stage", WRITING_BOTH)
async def test_a_status_update_reaches_both_stores_whole(start_split_relay, split, keys, stage):
    relay = await start_split_relay(stage=stage)
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    reply = await relay.jobs.UpdateJobStatus(
        _update(job_id, pb.JOB_STATUS_COMPLETED), metadata=keys.md("worker")
    )
    assert reply.job.status == pb.JOB_STATUS_COMPLETED
    legacy = await _hash(split.legacy, KEYS.legacy_job(job_id))
    new = await _hash(split.new, KEYS.new_job("ws-a", job_id))
    assert legacy == new and new["status"] == "completed" and new["rev"] == "2"
    again = await refusal(
        relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_FAILED), metadata=keys.md("worker"))
    )
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_legacy_only_job_is_read_and_updated_through_the_fallback(start_split_relay, split, keys):
    relay = await start_split_relay(stage=Stage.READ_NEW)
    job_id = await write_legacy_job(split.legacy, "ws-a", enqueued_at=old_timestamp(5))
    got = await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))
    assert got.job.status == pb.JOB_STATUS_PENDING
    await relay.jobs.UpdateJobStatus(_update(job_id, pb.JOB_STATUS_RUNNING), metadata=keys.md("worker"))
    # The update starts from the legacy copy and writes the layout reads prefer first: the new copy is
    # created whole, indexed, and the legacy one brought up to the same revision (so a backfill racing
    # the update can never leave the new copy behind).
    new = await _hash(split.new, KEYS.new_job("ws-a", job_id))
    assert new == await _hash(split.legacy, KEYS.legacy_job(job_id))
    assert new["status"] == "running" and new["action_name"] == "chat"
    assert await split.new.zcard(KEYS.job_index("ws-a")) == 1


async def test_a_crash_between_the_stores_is_repaired_from_the_outbox(
    start_split_relay, split, keys, monkeypatch
):
    relay = await start_split_relay(stage=Stage.DUAL_WRITE)
    writes: SplitWrites = relay.app.job_store.split

    async def crash(*args, **kwargs):
        raise redis_errors.ConnectionError("the process died between the stores")

    monkeypatch.setattr(writes, "_enqueue_half", _fail_second(writes._enqueue_half, crash))
    err = await refusal(execute(relay.jobs, keys.md("ws_a"), client_request_id="crashy"))
    assert err.code == grpc.StatusCode.UNAVAILABLE
    monkeypatch.undo()
    [owed] = (await split.legacy.hgetall(KEYS.legacy_outbox)).values()
    assert json.loads(owed)["op"] == "enqueue"
    [(field, _)] = (await split.legacy.hgetall(KEYS.legacy_outbox)).items()
    job_id = field.decode().partition(":")[2]
    assert await split.new.exists(KEYS.new_job("ws-a", job_id)) == 0
    # A retry with the same client_request_id is the same job.
    assert await execute(relay.jobs, keys.md("ws_a"), client_request_id="crashy") == [job_id]
    assert await writes.repair_outboxes() == 1
    assert await split.legacy.hlen(KEYS.legacy_outbox) == 0
    new = await _hash(split.new, KEYS.new_job("ws-a", job_id))
    assert new == await _hash(split.legacy, KEYS.legacy_job(job_id))
    assert await split.new.lrange(KEYS.queue("ws-a"), 0, -1) == [job_id.encode()]
    assert (await _claim(relay, keys)).job_id == job_id


def _fail_second(original, crash):
    async def wrapper(layout, *args, first, **kwargs):
        if not first:
            await crash()
        return await original(layout, *args, first=first, **kwargs)

    return wrapper


# --- isolation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(Stage)[:4])
async def test_another_workspaces_job_looks_missing_in_both_layouts(start_split_relay, split, keys, stage):
    relay = await start_split_relay(stage=stage)
    [mine] = await execute(relay.jobs, keys.md("ws_a"))
    legacy_b = await write_legacy_job(split.legacy, "ws-b")
    [new_b] = await execute(relay.jobs, keys.md("ws_b"))
    missing = await refusal(
        relay.jobs.GetJob(pb.GetJobRequest(job_id=str(uuid.uuid4())), metadata=keys.md("ws_a"))
    )
    for other in (legacy_b, new_b):
        err = await refusal(relay.jobs.GetJob(pb.GetJobRequest(job_id=other), metadata=keys.md("ws_a")))
        assert err.same_as(missing)
        upd = await refusal(
            relay.jobs.UpdateJobStatus(_update(other, pb.JOB_STATUS_RUNNING), metadata=keys.md("worker"))
        )
        assert upd.code == grpc.StatusCode.NOT_FOUND
    listed, _ = await list_all(relay.jobs, keys.md("ws_a"))
    assert [j.job_id for j in listed] == [mine]


async def test_a_new_layout_record_of_another_workspace_under_this_workspaces_key_is_served_to_nobody(
    start_split_relay, split, keys
):
    relay = await start_split_relay(stage=Stage.NEW_ONLY)
    [job_id] = await execute(relay.jobs, keys.md("ws_b"))
    forged = await _hash(split.new, KEYS.new_job("ws-b", job_id))
    await split.new.hset(KEYS.new_job("ws-a", job_id), mapping=forged)
    err = await refusal(relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a")))
    assert err.code == grpc.StatusCode.NOT_FOUND


# --- listing and claims ----------------------------------------------------------------------------


async def test_paging_returns_every_job_once_with_inserts_between_pages(start_split_relay, split, keys):
    relay = await start_split_relay(stage=Stage.READ_NEW)
    legacy = {await write_legacy_job(split.legacy, "ws-a", enqueued_at=old_timestamp(n)) for n in range(25)}
    new = set(await execute(relay.jobs, keys.md("ws_a"), count=25))
    seen: list[str] = []
    token, inserted = "", set()
    while True:
        page = await relay.jobs.ListJobs(
            pb.ListJobsRequest(page_size=7, page_token=token), metadata=keys.md("ws_a")
        )
        seen += [j.job_id for j in page.jobs]
        inserted |= set(await execute(relay.jobs, keys.md("ws_a")))  # newer than the listing: may be left out
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "no job twice"
    assert set(seen) >= legacy | new, "every job that existed when the listing began"
    assert set(seen) <= legacy | new | inserted


async def test_many_workers_claim_every_job_of_every_queue_exactly_once(start_split_relay, split, keys):
    relay = await start_split_relay(stage=Stage.READ_NEW)
    other = await start_split_relay(stage=Stage.READ_NEW)
    legacy = [
        await write_legacy_job(split.legacy, "ws-b", queue=True, enqueued_at=old_timestamp(n))
        for n in range(10)
    ]
    new = await execute(relay.jobs, keys.md("ws_a"), count=20) + await execute(
        relay.jobs, keys.md("ws_b"), count=10
    )
    jobs = await asyncio.gather(*(_claim((relay, other)[n % 2], keys) for n in range(60)))
    claimed = [j.job_id for j in jobs if j is not None]
    assert sorted(claimed) == sorted(legacy + new)
    assert await _claim(relay, keys) is None
    for job_id in new:
        assert (await _hash(split.new, KEYS.new_job("ws-a" if job_id in new[:20] else "ws-b", job_id)))[
            "status"
        ] == "running"
    for job_id in legacy:
        assert (await _hash(split.legacy, KEYS.legacy_job(job_id)))["status"] == "running"
