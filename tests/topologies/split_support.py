"""Helpers for the controller's tests on two stores."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster

from relay.v1 import backfill_pb2 as bpb
from tests.backfill_support import events_of


async def snapshot(redis: Redis | RedisCluster) -> dict[bytes, bytes]:
    """Every key of a store (every primary of a cluster) with its serialized value."""
    out: dict[bytes, bytes] = {}
    async for key in redis.scan_iter(count=1000):
        out[key] = await redis.dump(key)
    return out


async def record(redis: Redis | RedisCluster, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}


async def backfill(controller: Any, md: Any, **options: Any) -> list[bpb.BackfillEvent]:
    """Run a backfill through the controller RPC to its end; its events."""
    return await events_of(controller.StartBackfill(bpb.StartBackfillRequest(**options), metadata=md))
