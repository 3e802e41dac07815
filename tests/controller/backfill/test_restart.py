"""A backfill across a Redis restart: Redis seeds its hash function anew at every start, so a SCAN cursor
checkpointed before the restart covers other keys after it. The backfill notices (Redis' run_id changed),
begins the scan again from the start as a new pass, and completes with every legacy key counted exactly
once and every valid record copied: never a COMPLETED that missed keys."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from harness.redis_server import RedisServer
from relay import server
from relay.core.config import Settings
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import migration_controller_pb2_grpc
from tests.backfill_support import WORKSPACES, counts_add_up, events_of, seed_clean, wait_until
from tests.conftest import start_redis_server

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
VALID, INVALID = 3000, 25


@pytest.fixture
async def aof_redis() -> AsyncIterator[RedisServer]:
    srv = start_redis_server(AOF)
    yield srv
    srv.stop()


def restart(srv: RedisServer) -> None:
    """SHUTDOWN (the AOF is complete on disk) and start redis-server again on the same port and dir."""
    assert srv.process is not None
    with sync_redis.Redis(port=srv.port) as client, contextlib.suppress(sync_redis.ConnectionError):
        client.shutdown()  # redis-py reads the dropped connection as the success it is
    srv.process.wait(10)
    srv.start_again()


async def test_a_redis_restart_mid_scan_rescans_and_counts_every_key_once(aof_redis, keys_file):
    redis = Redis.from_url(aof_redis.url)
    valid = await seed_clean(redis, VALID)
    invalid = [str(uuid.uuid4()) for _ in range(INVALID)]
    for job_id in invalid:
        await redis.hset(KEYS.legacy_job(job_id), mapping={"job_id": job_id, "status": "pending"})
    run_before = (await redis.info("server"))["run_id"]
    settings = Settings.from_env(
        {},
        listen="127.0.0.1:0",
        redis_url=aof_redis.url,
        api_keys_file=str(keys_file[0]),
        metrics_listen="",
        default_stage=Stage.DUAL_WRITE,
    )
    app = await server.start(settings, "controller")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        controller = migration_controller_pb2_grpc.MigrationControllerStub(channel)
        request = bpb.StartBackfillRequest(rate_limit=2500, batch_size=200)
        watching = asyncio.create_task(
            events_of(controller.StartBackfill(request, metadata=keys_file[1].md("admin")))
        )

        async def scanned_a_third() -> bool:
            current = await redis.get(KEYS.backfill_current)
            scanned = current and await redis.hget(KEYS.backfill(current.decode()), "scanned")
            return bool(scanned) and int(scanned) >= (VALID + INVALID) // 3

        await wait_until(scanned_a_third, within=20, interval=0.02)
        await asyncio.to_thread(restart, aof_redis)
        events = await asyncio.wait_for(watching, 60)

        redis = Redis.from_url(aof_redis.url)
        assert (await redis.info("server"))["run_id"] != run_before
        assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, events[-1]
        reasons = [e.reason for e in events if e.kind == bpb.BACKFILL_EVENT_KIND_THROTTLED]
        assert any("Redis restarted (run_id changed)" in r for r in reasons), reasons
        final = events[-1].backfill.progress
        # The last pass counts every legacy key exactly once; what the first pass copied is "exists".
        assert final.scanned == VALID + INVALID
        assert counts_add_up(final)
        assert final.migrated + final.skipped_exists == VALID
        assert final.rescans == 1 and final.migrated_in_earlier_passes > 0
        assert final.migrated + final.migrated_in_earlier_passes == VALID  # each copied exactly once
        assert final.skipped_exists == final.migrated_in_earlier_passes
        assert final.skipped_invalid == INVALID and final.errors == 0
        assert sorted(final.invalid_job_ids) == sorted(invalid)
        state = await redis.hgetall(KEYS.backfill(events[-1].backfill.backfill_id))
        assert state[b"rescans"] == b"1" and state[b"run_id"].decode() != run_before
        pipe = redis.pipeline(transaction=False)
        for n, job_id in enumerate(valid):
            pipe.exists(KEYS.new_job(WORKSPACES[n % len(WORKSPACES)], job_id))
        assert sum(await pipe.execute()) == VALID
        assert await redis.get(KEYS.legacy_indexed)
    finally:
        await channel.close()
        await app.stop()
        await redis.aclose()
