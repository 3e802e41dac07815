"""What a backfill does to the data: a dry run writes nothing and predicts the execute; an execute copies
messy legacy data verbatim, never overwrites a newer copy, counts every key once, and JobService then
serves the copies; a second run finds everything present; max_keys stops the scan and the next run
continues; a workspace filter touches one workspace only."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from relay.core import codec
from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import job_service_pb2 as jpb
from tests.backfill_support import counts_add_up, events_of, seed_clean, seed_messy


async def run_backfill(relay, keys, **options) -> list[bpb.BackfillEvent]:  # type: ignore[no-untyped-def]
    stream = relay.controller.StartBackfill(bpb.StartBackfillRequest(**options), metadata=keys.md("admin"))
    return await events_of(stream)


async def write_counters(redis: Redis) -> dict[str, object]:
    """Everything by which Redis would show a write: its dataset digest, size, dirty counter, and the calls
    of every write command (scripts included: commands inside a script are counted too)."""
    write_commands = {c.decode() for c in await redis.command_list(category="write")}
    stats = await redis.info("commandstats")
    return {
        "digest": await redis.execute_command("DEBUG", "DIGEST"),
        "dbsize": await redis.dbsize(),
        "dirty": (await redis.info("persistence"))["rdb_changes_since_last_save"],
        "writes": {
            name: value["calls"]
            for name, value in stats.items()
            if name.removeprefix("cmdstat_").split("|")[0] in write_commands
        },
    }


def final_progress(events: list[bpb.BackfillEvent]) -> bpb.BackfillProgress:
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, events[-1]
    return events[-1].backfill.progress


def summary(p: bpb.BackfillProgress) -> tuple[int, ...]:
    return (p.scanned, p.migrated, p.skipped_exists, p.skipped_newer, p.skipped_invalid, p.errors)


async def test_a_dry_run_writes_nothing_and_reports_what_the_execute_then_does(relay, redis, keys):
    seed = await seed_messy(redis)
    before = await write_counters(redis)

    dry = await run_backfill(relay, keys, dry_run=True, batch_size=100)

    assert before["writes"]["cmdstat_hset"] > 0  # the seeding shows: the measure can see writes
    assert await write_counters(redis) == before
    assert dry[0].kind == bpb.BACKFILL_EVENT_KIND_STARTED
    predicted = final_progress(dry)
    assert predicted.scanned == seed.total
    done = final_progress(await run_backfill(relay, keys, batch_size=100))
    after = await write_counters(redis)
    assert (after["dirty"], after["writes"]["cmdstat_zadd"]) > (before["dirty"], 0)
    assert summary(done) == summary(predicted)
    assert done.migrated == len(seed.migrated)


async def test_an_execute_copies_messy_records_verbatim_and_counts_each_key_once(relay, redis, keys):
    seed = await seed_messy(redis)

    events = await run_backfill(relay, keys, batch_size=50)

    p = final_progress(events)
    assert counts_add_up(p)
    assert p.scanned == seed.total
    assert p.migrated == len(seed.migrated)
    assert (p.skipped_exists, p.skipped_newer, p.errors) == (
        len(seed.exists),
        len(seed.newer),
        len(seed.errors),
    )
    assert p.skipped_invalid == len(seed.invalid)
    assert set(p.invalid_job_ids) == seed.invalid
    assert p.percent_done == 100.0
    for job_id in seed.migrated:
        legacy = await redis.hgetall(KEYS.legacy_job(job_id))
        workspace_id = legacy[b"workspace_id"].decode()
        assert await redis.hgetall(KEYS.new_job(workspace_id, job_id)) == legacy
        member = codec.index_member(job_id, (legacy.get(b"enqueued_at") or b"").decode() or None)
        assert await redis.zscore(KEYS.job_index(workspace_id), member) == 0
    newer = await redis.hgetall(KEYS.new_job("ws-a", seed.ids["newer"]))
    assert (newer[b"rev"], newer[b"status"]) == (b"5", b"completed")
    assert await redis.get(KEYS.new_job("ws-c", seed.ids["blocked"])) == b"not a hash"
    # An error means a record is not indexed: JobService keeps listing legacy keys.
    assert not await redis.exists(KEYS.legacy_indexed)


async def test_jobservice_serves_the_copied_messy_records(relay, redis, keys):
    seed = await seed_messy(redis)
    final_progress(await run_backfill(relay, keys))

    sparse = (
        await relay.jobs.GetJob(jpb.GetJobRequest(job_id=seed.ids["sparse"]), metadata=keys.md("ws_a"))
    ).job
    assert (sparse.action_name, sparse.status) == ("only-this", jpb.JOB_STATUS_UNSPECIFIED)
    odd = (
        await relay.jobs.GetJob(jpb.GetJobRequest(job_id=seed.ids["not_json"]), metadata=keys.md("ws_a"))
    ).job
    assert (odd.params_text, odd.result_text) == ("{not json", "<<not json>>")
    listed: list[str] = []
    request = jpb.ListJobsRequest(page_size=100)
    while True:
        page = await relay.jobs.ListJobs(request, metadata=keys.md("ws_a"))
        listed += [job.job_id for job in page.jobs]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    ws_a = {
        job_id
        for job_id in seed.migrated | seed.newer
        if (await redis.hget(KEYS.legacy_job(job_id), "workspace_id")) == b"ws-a"
    }
    assert len(listed) == len(set(listed))
    assert ws_a <= set(listed)


async def test_a_second_run_copies_nothing_and_finds_everything_present(relay, redis, keys):
    seed = await seed_messy(redis)
    final_progress(await run_backfill(relay, keys))
    before = await redis.execute_command("DEBUG", "DIGEST")

    again = final_progress(await run_backfill(relay, keys))

    assert again.migrated == 0
    assert again.skipped_exists == len(seed.migrated) + len(seed.exists)
    assert (again.skipped_newer, again.skipped_invalid, again.errors) == (1, len(seed.invalid), 1)
    # Only the backfill's own state changed: no job record, no index.
    for job_id in list(seed.migrated)[:50]:
        assert await redis.exists(KEYS.legacy_job(job_id))
    assert before != await redis.execute_command("DEBUG", "DIGEST")  # the new backfill's state hash


async def test_a_full_clean_run_marks_the_legacy_records_indexed(relay, redis, keys):
    await seed_clean(redis, 500)

    events = await run_backfill(relay, keys, batch_size=200)

    assert await redis.get(KEYS.legacy_indexed) == events[-1].backfill_id.encode()
    assert "every legacy record is now in its workspace index" in events[-1].reason


async def test_max_keys_stops_the_scan_and_the_next_run_continues_where_it_stopped(start_relay, redis, keys):
    relay = await start_relay(backfill_script_budget_seconds=0.0)  # batches of batch_size, as asked
    ids = set(await seed_clean(redis, 3000))
    await redis.config_resetstat()

    first = final_progress(await run_backfill(relay, keys, batch_size=250, max_keys=1000))

    assert (first.scanned, first.migrated) == (1000, 1000)
    scans = (await redis.info("commandstats"))["cmdstat_scan"]["calls"]
    assert scans <= 8  # about 1000 / 250 SCAN steps: it did not go on through the 3000 keys
    assert first.checkpoint != "0"
    second = final_progress(await run_backfill(relay, keys, batch_size=250, max_keys=1000))
    assert (second.scanned, second.migrated, second.skipped_exists) == (1000, 1000, 0)
    assert not await redis.exists(KEYS.legacy_indexed)
    rest = await run_backfill(relay, keys, batch_size=250)
    third = final_progress(rest)
    assert (third.scanned, third.migrated, third.skipped_exists) == (1000, 1000, 0)
    copied = {key.decode().rpartition(":")[2] async for key in redis.scan_iter(match="ai:job:*", count=1000)}
    assert copied == ids
    assert await redis.get(KEYS.legacy_indexed) == rest[-1].backfill_id.encode()


async def test_a_workspace_filter_copies_that_workspace_only(relay, redis, keys):
    await seed_clean(redis, 900)

    p = final_progress(await run_backfill(relay, keys, workspace_id="ws-b"))

    assert (p.scanned, p.migrated, p.filtered_out) == (300, 300, 600)
    spaces = {
        KEYS.parse_new_job(key.decode())[0] async for key in redis.scan_iter(match="ai:job:*", count=1000)
    }
    assert spaces == {"ws-b"}
    assert not await redis.exists(KEYS.legacy_indexed)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"rate_limit": -1.0}, "rate_limit"),
        ({"rate_limit": float("nan")}, "rate_limit"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": 10_001}, "batch_size"),
        ({"max_keys": -5}, "max_keys"),
        ({"workspace_id": "Not:A:Workspace"}, "workspace_id"),
    ],
)
async def test_bad_options_are_refused_and_change_nothing(relay, redis, keys, options, field):
    import grpc

    from relay.core.rpc_errors import error_info

    await seed_clean(redis, 10)
    before = await redis.execute_command("DEBUG", "DIGEST")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_backfill(relay, keys, **options)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == field
    assert await redis.execute_command("DEBUG", "DIGEST") == before


async def test_a_chain_of_runs_cut_inside_scan_steps_counts_every_key_once(relay, redis, keys):
    # Each run stops inside a SCAN step; the copies it made change how many buckets the next run's steps
    # cover, so the keys it handled come back in later steps of the next run and must be skipped there.
    ids = set(await seed_clean(redis, 2000))
    migrated = 0
    for _ in range(6):
        p = final_progress(await run_backfill(relay, keys, batch_size=1000, max_keys=300))
        assert (p.scanned, p.skipped_exists) == (300, 0)
        migrated += p.migrated
    p = final_progress(await run_backfill(relay, keys, batch_size=1000))
    assert p.skipped_exists == 0
    assert migrated + p.migrated == 2000
    copied = {key.decode().rpartition(":")[2] async for key in redis.scan_iter(match="ai:job:*", count=1000)}
    assert copied == ids


async def test_the_counts_are_the_old_systems_metrics(start_relay, redis, keys):
    from prometheus_client import generate_latest

    relay = await start_relay(metric_workspaces=("ws-a", "ws-b"))
    seed = await seed_messy(redis, clean=300)

    events = await run_backfill(relay, keys, batch_size=100)

    batches = int(await redis.hget(KEYS.backfill(events[-1].backfill_id), "batches"))
    text = generate_latest(relay.app.metrics.registry).decode()
    samples = {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("relay_backfill_")
    }
    ws_a = [j for j in seed.migrated if (await redis.hget(KEYS.legacy_job(j), "workspace_id")) == b"ws-a"]
    assert samples['relay_backfill_migrated_total{workspace_id="ws-a"}'] == len(ws_a)
    assert samples['relay_backfill_skipped_total{reason="newer",workspace_id="ws-a"}'] == 1
    assert samples['relay_backfill_skipped_total{reason="exists",workspace_id="ws-b"}'] == 1
    assert samples['relay_backfill_errors_total{workspace_id="other"}'] == 1  # ws-c is not on the list
    assert sum(v for k, v in samples.items() if k.startswith("relay_backfill_scanned_total")) == seed.total
    assert samples["relay_backfill_duration_seconds_count"] == batches  # one per batch
