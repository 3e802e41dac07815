"""A live status update racing the backfill is never lost (the old script lost one in ten): each batch is
copied in one Lua step, and UpdateJobStatus sets every copy that exists in one Lua step, so each update
lands wholly before or wholly after the copy of its job."""

from __future__ import annotations

import asyncio
import random

import grpc
from google.protobuf import struct_pb2

from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import job_service_pb2 as jpb
from tests.backfill_support import events_of, seed_clean, wait_until

UPDATES = 2000
#: Keys/s of the backfill while the updates run: 4,000 keys take 16 s, which outlasts 2,000 updates even on
#: a loaded machine (at 500/s a load average of 6 let the backfill finish first); it is then unthrottled.
RACING_RATE = 250


async def test_two_thousand_status_updates_racing_the_backfill_all_survive(relay, redis, keys):
    targets = await seed_clean(redis, UPDATES, workspaces=["ws-a"])
    await seed_clean(redis, 2000, workspaces=["ws-b"])  # around and between them in SCAN order
    random.shuffle(targets)
    backfill = asyncio.create_task(
        events_of(
            relay.controller.StartBackfill(
                bpb.StartBackfillRequest(rate_limit=RACING_RATE), metadata=keys.md("admin")
            )
        )
    )

    async def scanned() -> int:
        try:
            got = await relay.controller.GetBackfill(bpb.GetBackfillRequest(), metadata=keys.md("admin"))
        except grpc.aio.AioRpcError:
            return 0  # not started yet
        return got.progress.scanned

    await wait_until(scanned)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for job_id in targets:
        queue.put_nowait(job_id)

    async def worker() -> None:
        while not queue.empty():
            job_id = queue.get_nowait()
            result = struct_pb2.Value(string_value=f"done {job_id}")
            await relay.jobs.UpdateJobStatus(
                jpb.UpdateJobStatusRequest(
                    workspace_id="ws-a", job_id=job_id, status=jpb.JOB_STATUS_COMPLETED, result=result
                ),
                metadata=keys.md("worker"),
            )

    before = (
        await relay.controller.GetBackfill(bpb.GetBackfillRequest(), metadata=keys.md("admin"))
    ).progress
    await asyncio.gather(*(worker() for _ in range(16)))
    after = await relay.controller.GetBackfill(bpb.GetBackfillRequest(), metadata=keys.md("admin"))
    # Slow enough to outlast the updates on a loaded machine; then let it finish unthrottled.
    await relay.controller.UpdateBackfill(
        bpb.UpdateBackfillRequest(backfill_id=after.backfill_id, rate_limit=0, update_rate_limit=True),
        metadata=keys.md("admin"),
    )
    events = await backfill

    # The updates ran while the backfill copied: it had begun before the first and not finished at the last.
    assert 0 < before.scanned < after.progress.scanned < 4000
    final = events[-1].backfill.progress
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    assert (final.scanned, final.migrated) == (4000, 4000)
    pipe = redis.pipeline(transaction=False)
    for job_id in targets:
        pipe.hmget(KEYS.new_job("ws-a", job_id), "status", "finished_at", "result", "rev")
        pipe.hmget(KEYS.legacy_job(job_id), "status", "finished_at", "result", "rev")
    replies = await pipe.execute()
    lost = [
        job_id
        for job_id, new, legacy in zip(targets, replies[::2], replies[1::2], strict=True)
        if new[0] != b"completed" or new[1] is None or new != legacy
    ]
    assert lost == []
    for job_id in targets[:20]:
        job = (await relay.jobs.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
        assert job.status == jpb.JOB_STATUS_COMPLETED
