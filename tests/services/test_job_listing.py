"""ListJobs: newest first, every job exactly once, paging that always ends (AIP-158).

Jobs in the new layout come from the workspace index; jobs only in the legacy layout, written by the old
system and not indexed yet, follow in storage order, each page a bounded SCAN.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import grpc
import pytest

from relay.core.keys import KEYS
from relay.core.page_token import PageTokenCodec
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import execute, list_all, refusal, write_legacy_jobs

LEGACY_READING = [Stage.LEGACY_ONLY, Stage.DUAL_WRITE, Stage.READ_NEW]


def _newest_first(jobs: list[pb.Job]) -> bool:
    order = [(j.enqueue_time.ToNanoseconds(), j.job_id) for j in jobs]
    return order == sorted(order, reverse=True)


async def _fill(relay, keys, count: int, per_call: int = 50) -> list[str]:
    ids: list[str] = []
    for _ in range(count // per_call):
        ids += await execute(relay.jobs, keys.md("ws_a"), count=per_call)
    return ids


async def _other_workspaces_legacy_keys(redis, count: int) -> None:
    """Legacy records of many other workspaces, plus messy keys of no workspace, around the caller's."""
    for n in range(0, count, 500):
        await write_legacy_jobs(redis, f"ws-other-{n // 500}", min(500, count - n))
    await redis.set("ai:jobs:not-a-hash", "x")
    await redis.rpush("ai:jobs:a-list", "x")
    await redis.hset("ai:jobs:no-workspace", mapping={"status": "pending"})


# --- the index ----------------------------------------------------------------------------------


async def test_paging_through_1000_jobs_with_inserts_between_pages_returns_each_once_newest_first(
    relay, keys
):
    original = set(await _fill(relay, keys, 1000))
    seen: list[pb.Job] = []
    token = ""
    for _ in range(200):
        reply = await relay.jobs.ListJobs(
            pb.ListJobsRequest(page_size=37, page_token=token), metadata=keys.md("ws_a")
        )
        seen += reply.jobs
        token = reply.next_page_token
        if not token:
            break
        await execute(relay.jobs, keys.md("ws_a"), count=2)  # newer than the listing's start
    assert not token, "paging ended"
    counts = Counter(j.job_id for j in seen)
    assert all(counts[job_id] == 1 for job_id in original)
    assert max(counts.values()) == 1
    assert _newest_first(seen)


@pytest.mark.parametrize("status", [pb.JOB_STATUS_PENDING, pb.JOB_STATUS_COMPLETED])
async def test_a_status_filter_returns_exactly_the_jobs_with_that_status(relay, keys, status):
    ids = await _fill(relay, keys, 100)
    done = set(ids[::3])
    await asyncio.gather(
        *(
            relay.jobs.UpdateJobStatus(
                pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=j, status=pb.JOB_STATUS_COMPLETED),
                metadata=keys.md("worker"),
            )
            for j in done
        )
    )
    listed, _ = await list_all(relay.jobs, keys.md("ws_a"), page_size=9, status=status)
    expected = done if status == pb.JOB_STATUS_COMPLETED else set(ids) - done
    assert Counter(j.job_id for j in listed) == Counter(expected)


async def test_page_size_zero_means_50_and_above_500_means_500(relay, keys):
    await _fill(relay, keys, 550)
    md = keys.md("ws_a")
    assert len((await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=0), metadata=md)).jobs) == 50
    for size in (501, 10_000, 2**31 - 1):
        assert len((await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=size), metadata=md)).jobs) == 500


async def test_a_negative_page_size_is_invalid(relay, keys):
    bad = await refusal(relay.jobs.ListJobs(pb.ListJobsRequest(page_size=-1), metadata=keys.md("ws_a")))
    assert (bad.code, bad.metadata) == (grpc.StatusCode.INVALID_ARGUMENT, {"field": "page_size"})


async def test_a_token_reused_with_another_status_filter_is_invalid(relay, keys):
    await _fill(relay, keys, 50)
    md = keys.md("ws_a")
    first = await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=10), metadata=md)
    for status in (pb.JOB_STATUS_PENDING, pb.JOB_STATUS_FAILED):
        reused = await refusal(
            relay.jobs.ListJobs(
                pb.ListJobsRequest(page_size=10, page_token=first.next_page_token, status=status), metadata=md
            )
        )
        assert (reused.code, reused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_FILTERS")
    # Changing page_size is allowed (AIP-158).
    reply = await relay.jobs.ListJobs(
        pb.ListJobsRequest(page_size=3, page_token=first.next_page_token), metadata=md
    )
    assert len(reply.jobs) == 3


async def test_forged_truncated_and_bit_flipped_tokens_are_invalid(relay, keys):
    await _fill(relay, keys, 50)
    md = keys.md("ws_a")
    token = (await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=5), metadata=md)).next_page_token
    body = token.partition(".")[0]
    bad = [
        "",  # stands for "start": checked below that it is not an error
        "forged",
        "forged.token",
        PageTokenCodec(b"another secret").encode("ws-a", "status=", {"p": "index", "m": ""}),
        token[:-1],
        token[: len(token) // 2],
        body,
        token + "A",
        token + "." + token,
        "x" * 5000,
        "\u00e9t\u00e9.\u00e9t\u00e9",
    ]
    bad += [
        token[:n] + chr(ord(token[n]) ^ (1 << bit)) + token[n + 1 :]
        for n in (0, 7, len(token) - 1)
        for bit in range(7)
    ]
    assert (await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=5, page_token=bad[0]), metadata=md)).jobs
    for forged in bad[1:]:
        refused = await refusal(
            relay.jobs.ListJobs(pb.ListJobsRequest(page_size=5, page_token=forged), metadata=md)
        )
        assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID"), (
            forged
        )


async def test_an_empty_workspace_lists_one_empty_page_that_ends(relay, keys):
    reply = await relay.jobs.ListJobs(pb.ListJobsRequest(), metadata=keys.md("ws_a"))
    assert (list(reply.jobs), reply.next_page_token) == ([], "")


# --- legacy-only jobs, not indexed yet -------------------------------------------------------------


@pytest.mark.parametrize("stage", LEGACY_READING, ids=lambda s: s.name)
async def test_unindexed_legacy_jobs_among_thousands_of_other_keys_are_each_listed_once(
    start_relay, redis, keys, stage
):
    await _other_workspaces_legacy_keys(redis, 3000)
    mine = await write_legacy_jobs(redis, "ws-a", 120)
    relay = await start_relay(stage=stage)
    listed, pages = await list_all(relay.jobs, keys.md("ws_a"), page_size=7)
    assert Counter(j.job_id for j in listed) == Counter(mine)
    assert {j.workspace_id for j in listed} == {"ws-a"}
    assert pages <= len(mine) // 7 + 3123 // 500 + 2


@pytest.mark.parametrize("stage", LEGACY_READING, ids=lambda s: s.name)
async def test_unindexed_legacy_jobs_can_be_filtered_by_status(start_relay, redis, keys, stage):
    await _other_workspaces_legacy_keys(redis, 1000)
    mine = await write_legacy_jobs(redis, "ws-a", 60)  # every third one is completed
    relay = await start_relay(stage=stage)
    listed, _ = await list_all(relay.jobs, keys.md("ws_a"), page_size=4, status=pb.JOB_STATUS_COMPLETED)
    assert Counter(j.job_id for j in listed) == Counter(mine[::3])


async def test_unindexed_legacy_jobs_are_not_listed_once_legacy_reads_stop(start_relay, redis, keys):
    await write_legacy_jobs(redis, "ws-a", 20)
    relay = await start_relay(stage=Stage.NEW_ONLY)
    listed, pages = await list_all(relay.jobs, keys.md("ws_a"))
    assert (listed, pages) == ([], 1)


async def test_a_completed_backfill_ends_the_legacy_scan(start_relay, redis, keys):
    """Once every legacy record is indexed (the backfill sets the flag), listing reads the index only."""
    await write_legacy_jobs(redis, "ws-a", 20)
    await redis.set(KEYS.legacy_indexed, "1")
    relay = await start_relay(stage=Stage.READ_NEW)
    listed, pages = await list_all(relay.jobs, keys.md("ws_a"))
    assert (listed, pages) == ([], 1)


async def test_a_page_of_legacy_jobs_costs_a_bounded_number_of_scans(start_relay, redis, keys):
    await _other_workspaces_legacy_keys(redis, 6000)
    await write_legacy_jobs(redis, "ws-a", 30)
    relay = await start_relay(stage=Stage.READ_NEW)
    token, pages = "", 0
    while True:
        await redis.config_resetstat()
        reply = await relay.jobs.ListJobs(
            pb.ListJobsRequest(page_size=10, page_token=token), metadata=keys.md("ws_a")
        )
        stats = await redis.info("commandstats")
        scans = stats.get("cmdstat_scan", {}).get("calls", 0)
        hash_reads = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("hgetall", "hmget", "hget"))
        assert scans <= 20
        assert hash_reads <= 20 * 500
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert pages < 20


async def test_legacy_paging_survives_the_keyspace_growing_between_pages(start_relay, redis, keys):
    """Other keys arriving (here: new-layout records of another workspace) make Redis resize its table,
    which changes what a SCAN cursor covers; the legacy keys themselves do not change."""
    await _other_workspaces_legacy_keys(redis, 1500)
    mine = await write_legacy_jobs(redis, "ws-a", 300)
    relay = await start_relay(stage=Stage.DUAL_WRITE)
    seen: list[str] = []
    token = ""
    for page in range(1000):
        reply = await relay.jobs.ListJobs(
            pb.ListJobsRequest(page_size=7, page_token=token), metadata=keys.md("ws_a")
        )
        seen += [j.job_id for j in reply.jobs]
        token = reply.next_page_token
        if not token:
            break
        pipe = redis.pipeline(transaction=False)
        for _ in range(150 * (page % 4)):
            pipe.hset(KEYS.new_job("ws-c", str(uuid.uuid4())), mapping={"status": "pending"})
        await pipe.execute()
    assert not token
    assert Counter(seen) == Counter(mine)


# --- both layouts at once --------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(Stage)[:4], ids=lambda s: s.name)
async def test_a_mix_of_layouts_lists_every_visible_job_exactly_once(start_relay, redis, keys, stage):
    legacy_era = await start_relay(stage=Stage.LEGACY_ONLY)
    dual_era = await start_relay(stage=Stage.READ_NEW)
    raw_legacy = await write_legacy_jobs(redis, "ws-a", 25)  # the old system's, not indexed
    indexed_legacy = await execute(legacy_era.jobs, keys.md("ws_a"), count=15)
    both = await execute(dual_era.jobs, keys.md("ws_a"), count=15)
    new_only = await execute(dual_era.jobs, keys.md("ws_a"), count=15)
    await redis.delete(*[KEYS.legacy_job(j) for j in new_only])
    await _other_workspaces_legacy_keys(redis, 1000)

    relay = await start_relay(stage=stage)
    listed, _ = await list_all(relay.jobs, keys.md("ws_a"), page_size=6)
    visible = both
    if stage.reads_legacy:
        visible = visible + raw_legacy + indexed_legacy
    if stage.reads_new:
        visible = visible + new_only
    assert Counter(j.job_id for j in listed) == Counter(visible)
    indexed_part = [j for j in listed if j.job_id not in set(raw_legacy)]
    assert _newest_first(indexed_part)
    assert listed[: len(indexed_part)] == indexed_part, "indexed jobs come first, newest first"


# --- the boundary between the index and the legacy scan --------------------------------------------


async def test_every_page_size_crosses_from_the_index_to_legacy_jobs_without_a_gap(relay, redis, keys):
    indexed = await execute(relay.jobs, keys.md("ws_a"), count=10)
    legacy = await write_legacy_jobs(redis, "ws-a", 5)
    for page_size in range(1, 17):
        listed, pages = await list_all(relay.jobs, keys.md("ws_a"), page_size=page_size)
        assert [j.job_id for j in listed[:10]] == [j.job_id for j in listed[:10] if j.job_id in indexed]
        assert Counter(j.job_id for j in listed) == Counter(indexed + legacy), page_size
        assert pages <= -(-len(indexed) // page_size) + len(legacy) + 2, "pages are short, never idle"


async def test_a_filter_that_skips_most_of_the_index_still_pages_to_the_end(relay, keys):
    """A page examines a bounded number of index entries; it may come back short, never stuck."""
    done = await execute(relay.jobs, keys.md("ws_a"), count=5)
    await asyncio.gather(
        *(
            relay.jobs.UpdateJobStatus(
                pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=j, status=pb.JOB_STATUS_COMPLETED),
                metadata=keys.md("worker"),
            )
            for j in done
        )
    )
    await _fill(relay, keys, 2500, per_call=100)  # newer, pending: examined before the completed ones
    listed, pages = await list_all(relay.jobs, keys.md("ws_a"), page_size=10, status=pb.JOB_STATUS_COMPLETED)
    assert sorted(j.job_id for j in listed) == sorted(done)
    assert pages >= 2
