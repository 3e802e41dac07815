"""A listing that a backfill overtakes still returns every job exactly once.

The backfill indexes legacy jobs while a caller pages: a job it indexes behind the listing's position
would be in neither phase without the late index, and one it indexes ahead would be listed twice.
"""

from __future__ import annotations

from relay.core.stages import Stage
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import job_service_pb2 as pb
from tests.backfill_support import events_of
from tests.job_testkit import execute, write_legacy_jobs


async def _page(jobs, md, token: str, size: int = 25) -> tuple[list[str], str]:
    reply = await jobs.ListJobs(pb.ListJobsRequest(page_size=size, page_token=token), metadata=md)
    return [j.job_id for j in reply.jobs], reply.next_page_token


async def test_paging_across_a_whole_backfill_lists_each_job_once(start_relay, redis, keys):
    relay = await start_relay(stage=Stage.READ_NEW)
    md = keys.md("ws_a")
    legacy = await write_legacy_jobs(redis, "ws-a", 200)  # unindexed, as the old system left them
    await write_legacy_jobs(redis, "ws-b", 100)
    new = await execute(relay.jobs, md, count=30)

    seen, token = await _page(relay.jobs, md, "")
    more, token = await _page(relay.jobs, md, token)
    seen += more
    assert token, "the listing is under way when the backfill starts"

    events = await events_of(
        relay.controller.StartBackfill(bpb.StartBackfillRequest(batch_size=50), metadata=keys.md("admin"))
    )
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    assert events[-1].backfill.progress.migrated == 300

    while token:
        more, token = await _page(relay.jobs, md, token)
        seen += more
    assert len(seen) == len(set(seen)), "no job is listed twice"
    assert set(seen) == set(legacy) | set(new), "no job is hidden"


async def test_a_listing_begun_after_the_backfill_needs_no_legacy_phase(start_relay, redis, keys):
    relay = await start_relay(stage=Stage.READ_NEW)
    md = keys.md("ws_a")
    legacy = await write_legacy_jobs(redis, "ws-a", 60)
    events = await events_of(
        relay.controller.StartBackfill(bpb.StartBackfillRequest(), metadata=keys.md("admin"))
    )
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED

    seen, token, pages = [], "", 0
    while True:
        more, token = await _page(relay.jobs, md, token, size=20)
        seen += more
        pages += 1
        if not token:
            break
    assert seen == sorted(seen, key=lambda j: legacy.index(j), reverse=True), "newest first, from the index"
    assert pages == 3
