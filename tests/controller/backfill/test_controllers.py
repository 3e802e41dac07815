"""Several controller processes on one Redis: one backfill at a time, any of them can watch and drive it,
and when the one running it dies (kill -9) another resumes it from its checkpoint, on its own or on
request, and every legacy key is still counted exactly once."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from harness.ports import free_port
from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from tests.backfill_support import (
    counts_add_up,
    events_of,
    seed_messy,
    spawn_controller,
    wait_serving,
    wait_until,
)

FAST_TAKEOVER = {"backfill_lease_seconds": 1.0, "backfill_orphan_check_seconds": 0.3}


def admin(keys):  # type: ignore[no-untyped-def]
    return keys.md("admin")


async def start_and_kill_midway(redis_server, keys_file, keys, redis) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Start a backfill on a controller in its own process and kill -9 it partway: (id, dead owner)."""
    proc = spawn_controller(redis_server.url, keys_file[0], free_port(), **FAST_TAKEOVER)
    try:
        await wait_serving(proc.target)
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stream = proc.stub(channel).StartBackfill(
                bpb.StartBackfillRequest(rate_limit=3000), metadata=admin(keys)
            )
            async for event in stream:
                if event.backfill.progress.scanned >= 1500:
                    proc.kill9()
                    break
        backfill_id = event.backfill_id
        state = await redis.hget(KEYS.backfill(backfill_id), "state")
        assert state == b"RUNNING"  # as the dead controller left it
        return backfill_id, event.backfill.owner
    finally:
        proc.stop()


async def assert_exact(redis, final: bpb.Backfill, seed) -> None:  # type: ignore[no-untyped-def]
    p = final.progress
    assert final.state == bpb.BACKFILL_STATE_COMPLETED
    assert counts_add_up(p)
    assert p.scanned == seed.total
    assert (p.migrated, p.skipped_exists, p.skipped_newer) == (len(seed.migrated), 1, 1)
    assert (p.skipped_invalid, p.errors) == (len(seed.invalid), 1)
    copies = {key.decode().rpartition(":")[2] async for key in redis.scan_iter(match="ai:job:*", count=1000)}
    assert seed.migrated <= copies


async def test_a_killed_controllers_backfill_is_resumed_by_another_with_exact_counts(
    start_relay, redis_server, keys_file, keys, redis
):
    seed = await seed_messy(redis, clean=6000)
    survivor = await start_relay(role="controller", **FAST_TAKEOVER)

    backfill_id, dead = await start_and_kill_midway(redis_server, keys_file, keys, redis)

    events = await asyncio.wait_for(
        events_of(
            survivor.controller.WatchBackfill(
                bpb.WatchBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
            )
        ),
        30,
    )
    assert bpb.BACKFILL_EVENT_KIND_RESUMED in [e.kind for e in events]
    await assert_exact(redis, events[-1].backfill, seed)
    assert events[-1].backfill.owner not in ("", dead)
    assert int(await redis.hget(KEYS.backfill(backfill_id), "resumes")) == 1


async def test_without_auto_resume_an_orphan_waits_for_resume_backfill(
    start_relay, redis_server, keys_file, keys, redis
):
    seed = await seed_messy(redis, clean=6000)
    survivor = await start_relay(role="controller", backfill_auto_resume=False, **FAST_TAKEOVER)
    backfill_id, _ = await start_and_kill_midway(redis_server, keys_file, keys, redis)
    request = bpb.GetBackfillRequest(backfill_id=backfill_id)

    async def orphaned() -> bool:
        got = await survivor.controller.GetBackfill(request, metadata=admin(keys))
        return got.state == bpb.BACKFILL_STATE_ORPHANED

    await wait_until(orphaned, within=10)
    await asyncio.sleep(1.0)  # nobody picks it up on its own
    assert (await redis.hget(KEYS.backfill(backfill_id), "state")) == b"ORPHANED"
    resumed = await survivor.controller.ResumeBackfill(
        bpb.ResumeBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
    )
    assert resumed.state == bpb.BACKFILL_STATE_RUNNING
    events = await asyncio.wait_for(
        events_of(
            survivor.controller.WatchBackfill(
                bpb.WatchBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
            )
        ),
        30,
    )
    await assert_exact(redis, events[-1].backfill, seed)


async def test_two_controllers_never_run_two_backfills_and_either_can_drive_it(start_relay, redis, keys):
    await seed_messy(redis, clean=3000)
    a = await start_relay(role="controller", **FAST_TAKEOVER)
    b = await start_relay(role="controller", **FAST_TAKEOVER)
    stream = a.controller.StartBackfill(bpb.StartBackfillRequest(rate_limit=2000), metadata=admin(keys))
    started = await stream.read()
    backfill_id = started.backfill_id

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events_of(
            b.controller.StartBackfill(bpb.StartBackfillRequest(max_keys=10), metadata=admin(keys))
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert backfill_id in caught.value.details()
    assert (await redis.get(KEYS.backfill_lease)).decode().endswith("/" + backfill_id)

    # B drives the backfill A runs: through the state in Redis.
    paused = await b.controller.PauseBackfill(
        bpb.PauseBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
    )
    assert paused.state == bpb.BACKFILL_STATE_PAUSED
    on_a = await a.controller.GetBackfill(
        bpb.GetBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
    )
    assert on_a.state == bpb.BACKFILL_STATE_PAUSED
    await b.controller.ResumeBackfill(
        bpb.ResumeBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
    )
    await b.controller.UpdateBackfill(
        bpb.UpdateBackfillRequest(backfill_id=backfill_id, rate_limit=0, update_rate_limit=True),
        metadata=admin(keys),
    )
    watched = await asyncio.wait_for(
        events_of(
            b.controller.WatchBackfill(
                bpb.WatchBackfillRequest(backfill_id=backfill_id), metadata=admin(keys)
            )
        ),
        20,
    )
    assert watched[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    assert watched[-1].backfill.owner == started.backfill.owner  # A ran it all along

    # Started at the same moment on both: one runs, the other is refused.
    results = await asyncio.gather(
        events_of(
            a.controller.StartBackfill(
                bpb.StartBackfillRequest(max_keys=200, rate_limit=500), metadata=admin(keys)
            )
        ),
        events_of(
            b.controller.StartBackfill(
                bpb.StartBackfillRequest(max_keys=300, rate_limit=500), metadata=admin(keys)
            )
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    ran = [r for r in results if isinstance(r, list)]
    assert len(refused) == 1 and len(ran) == 1
    assert refused[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ran[0][-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    del stream


async def test_dropped_redis_connections_neither_lose_nor_double_count_a_batch(relay, redis, keys):
    seed = await seed_messy(redis, clean=3000)
    done = asyncio.Event()

    async def drop_connections() -> None:  # every client but this one loses its connection, again and again
        while not done.is_set():
            await asyncio.sleep(0.15)
            await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    dropping = asyncio.create_task(drop_connections())
    try:
        events = await asyncio.wait_for(
            events_of(
                relay.controller.StartBackfill(
                    bpb.StartBackfillRequest(rate_limit=3000, batch_size=200), metadata=admin(keys)
                )
            ),
            60,
        )
    finally:
        done.set()
        await dropping

    await assert_exact(redis, events[-1].backfill, seed)
