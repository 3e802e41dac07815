"""The backfill when the legacy layout and the new one live in different stores (topologies 2 and 3):
the legacy Redis is scanned, each workspace's share of a batch written in one single-slot script, never
over an equal or newer record, never losing a live status update, counted exactly once across kill -9."""

from __future__ import annotations

import asyncio
import random

import grpc
from google.protobuf import struct_pb2

from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import job_service_pb2 as pb
from tests.backfill_support import (
    WORKSPACES,
    counts_add_up,
    events_of,
    legacy_record,
    seed_clean,
    spawn_controller,
    wait_serving,
    wait_until,
)
from tests.conftest import free_port
from tests.topologies.split_support import backfill, record, snapshot


def _by_ws(ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, job_id in enumerate(ids):
        out.setdefault(WORKSPACES[n % len(WORKSPACES)], []).append(job_id)
    return out


async def _invalid(split, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job_id = f"00000000-0000-4000-8000-{i:012d}"
        await split.legacy.hset(KEYS.legacy_job(job_id), mapping={"job_id": job_id, "status": "pending"})
        ids.append(job_id)
    await split.legacy.set(KEYS.legacy_job("not-a-hash"), "x")
    return ids


async def test_backfill_copies_every_record_with_exact_counts(start_split_relay, split, keys):
    ids = await seed_clean(split.legacy, 900)
    invalid = await _invalid(split, 5)
    # One record already newer in the new store, one equal: neither is overwritten.
    newer, equal = ids[0], ids[1]
    await split.new.hset(
        KEYS.new_job("ws-a", newer), mapping={**legacy_record(newer, "ws-a"), "rev": "5", "status": "failed"}
    )
    equal_record = await record(split.legacy, KEYS.legacy_job(equal))
    await split.new.hset(KEYS.new_job("ws-b", equal), mapping={**equal_record, "actor_id": "kept"})
    relay = await start_split_relay(stage=Stage.DUAL_WRITE, role="controller")
    events = await backfill(relay.controller, keys.md("admin"), batch_size=100)
    final = events[-1]
    assert final.kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, final.reason
    progress = final.backfill.progress
    assert counts_add_up(progress)
    assert progress.scanned == 900 + 5 + 1
    assert progress.migrated == 898 and progress.skipped_newer == 1 and progress.skipped_exists == 1
    assert progress.skipped_invalid == 6 and progress.errors == 0
    for ws, job_ids in _by_ws(ids).items():
        for job_id in job_ids:
            new = await record(split.new, KEYS.new_job(ws, job_id))
            if job_id == newer:
                assert new["status"] == "failed"
            elif job_id == equal:
                assert new["actor_id"] == "kept"
            else:
                assert new == await record(split.legacy, KEYS.legacy_job(job_id))
        assert await split.new.zcard(KEYS.job_index(ws)) == len(job_ids)
    # Nothing of the new layout on the legacy store.
    assert [k async for k in split.legacy.scan_iter(match="ai:job:*")] == []
    assert sorted(invalid) == sorted(j for j in final.backfill.progress.invalid_job_ids if j in invalid)


async def test_a_dry_run_writes_nothing_in_either_store(start_split_relay, split, keys):
    await seed_clean(split.legacy, 300)
    await _invalid(split, 3)
    relay = await start_split_relay(stage=Stage.DUAL_WRITE, role="controller")
    before = await snapshot(split.legacy), await snapshot(split.new)
    events = await backfill(relay.controller, keys.md("admin"), batch_size=50, dry_run=True)
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, events[-1].reason
    progress = events[-1].backfill.progress
    assert progress.scanned == 304 and progress.migrated == 300 and progress.skipped_invalid == 4
    assert (await snapshot(split.legacy), await snapshot(split.new)) == before


async def test_status_updates_racing_the_backfill_are_never_lost(start_split_relay, split, keys):
    targets = await seed_clean(split.legacy, 2000, workspaces=["ws-a"])
    await seed_clean(split.legacy, 2000, workspaces=["ws-b"])  # around and between them in SCAN order
    random.shuffle(targets)
    relay = await start_split_relay(stage=Stage.DUAL_WRITE)
    running = asyncio.create_task(backfill(relay.controller, keys.md("admin"), batch_size=20))

    async def begun() -> bool:
        return bool(await split.new.get(KEYS.backfill_current))

    await wait_until(begun)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for job_id in targets:
        queue.put_nowait(job_id)
    during: list[str] = []  # updates acknowledged while the backfill still ran

    async def worker() -> None:
        while not queue.empty():
            job_id = queue.get_nowait()
            request = pb.UpdateJobStatusRequest(
                workspace_id="ws-a",
                job_id=job_id,
                status=pb.JOB_STATUS_COMPLETED,
                result=struct_pb2.Value(string_value=f"done {job_id}"),
            )
            await relay.jobs.UpdateJobStatus(request, metadata=keys.md("worker"))
            if not running.done():
                during.append(job_id)

    await asyncio.gather(*(worker() for _ in range(16)))
    events = await running
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, events[-1].reason
    final = events[-1].backfill.progress
    assert final.scanned == 4000 and counts_add_up(final) and final.errors == 0
    lost = []
    for job_id in targets:
        legacy = await record(split.legacy, KEYS.legacy_job(job_id))
        new = await record(split.new, KEYS.new_job("ws-a", job_id))
        if new != legacy or legacy.get("status") != "completed" or "finished_at" not in legacy:
            lost.append(job_id)
    assert lost == []
    assert await split.new.zcard(KEYS.job_index("ws-a")) == 2000
    assert len(during) >= 200, "the updates raced the backfill"


async def test_a_backfill_killed_mid_run_resumes_with_exact_counts(split, keys_file):
    valid = 4000
    ids = await seed_clean(split.legacy, valid)
    invalid = await _invalid(split, 20)
    settings = {
        "legacy_redis_url": split.legacy_url,
        "backfill_lease_seconds": 1.0,
        "backfill_orphan_check_seconds": 0.2,
        "default_stage": "DUAL_WRITE",
    }
    first = spawn_controller(split.new_url, keys_file[0], free_port(), **settings)
    second = spawn_controller(split.new_url, keys_file[0], free_port(), **settings)
    try:
        await wait_serving(first.target)
        await wait_serving(second.target)
        async with grpc.aio.insecure_channel(first.target) as channel:
            stream = first.stub(channel).StartBackfill(
                bpb.StartBackfillRequest(rate_limit=4000, batch_size=100), metadata=keys_file[1].md("admin")
            )
            started = await anext(aiter(stream))
            backfill_id = started.backfill_id

            async def a_third_done() -> bool:
                scanned = await split.new.hget(KEYS.backfill(backfill_id), "scanned")
                return bool(scanned) and int(scanned) >= valid // 3

            await wait_until(a_third_done, within=30, interval=0.01)
            first.kill9()
        async with grpc.aio.insecure_channel(second.target) as channel:

            async def completed() -> bool:
                state = await split.new.hget(KEYS.backfill(backfill_id), "state")
                return state == b"COMPLETED"

            await wait_until(completed, within=60, interval=0.1)
            stream = second.stub(channel).WatchBackfill(
                bpb.WatchBackfillRequest(backfill_id=backfill_id), metadata=keys_file[1].md("admin")
            )
            final = (await events_of(stream))[-1].backfill.progress
            resumes = await split.new.hget(KEYS.backfill(backfill_id), "resumes")
    finally:
        first.stop()
        second.stop()
    assert int(resumes or 0) == 1, "the second controller took over from the checkpoint"
    assert counts_add_up(final)
    assert final.scanned == valid + len(invalid) + 1
    assert final.migrated == valid, final
    assert final.skipped_exists == 0 and final.errors == 0
    assert final.skipped_invalid == len(invalid) + 1
    missing = [
        job_id
        for ws, job_ids in _by_ws(ids).items()
        for job_id in job_ids
        if not await split.new.exists(KEYS.new_job(ws, job_id))
    ]
    assert missing == []


async def test_pause_resume_and_a_rate_limit_work_as_on_one_store(start_split_relay, split, keys):
    await seed_clean(split.legacy, 900)
    relay = await start_split_relay(stage=Stage.DUAL_WRITE, role="controller")
    md = keys.md("admin")
    stream = relay.controller.StartBackfill(bpb.StartBackfillRequest(rate_limit=1500), metadata=md)
    started = await anext(aiter(stream))
    backfill_id = started.backfill_id

    async def scanned_some() -> bool:
        return int(await split.new.hget(KEYS.backfill(backfill_id), "scanned") or 0) >= 100

    await wait_until(scanned_some)
    paused = await relay.controller.PauseBackfill(
        bpb.PauseBackfillRequest(backfill_id=backfill_id), metadata=md
    )
    assert paused.state == bpb.BACKFILL_STATE_PAUSED
    resumed = await relay.controller.ResumeBackfill(
        bpb.ResumeBackfillRequest(backfill_id=backfill_id), metadata=md
    )
    assert resumed.state == bpb.BACKFILL_STATE_RUNNING
    rest = await events_of(stream)
    kinds = [e.kind for e in rest]
    assert bpb.BACKFILL_EVENT_KIND_PAUSED in kinds and bpb.BACKFILL_EVENT_KIND_RESUMED in kinds
    assert rest[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    final = rest[-1].backfill.progress
    assert (final.scanned, final.migrated) == (900, 900)
    seconds = (rest[-1].time.ToNanoseconds() - started.time.ToNanoseconds()) / 1e9
    assert 900 / seconds <= 1500 * 1.1  # the rate limit holds
