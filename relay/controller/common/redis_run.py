"""Which run of Redis answers: INFO server ``run_id``, new at every start of redis-server.

A SCAN cursor is only meaningful to the run that returned it (Redis seeds its hash function anew at
every start, so after a restart or a failover the same cursor covers other keys). Sweeps that checkpoint
a cursor record the run_id beside it, and begin again when it changes.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError


def run_id_of(info: dict[str, Any] | Exception) -> str:
    """The run_id in an INFO server reply; "" from a store without INFO (the embedded one, which never
    restarts), so nothing can be compared."""
    if isinstance(info, Exception):
        return ""
    value = info.get("run_id", "")
    return value.decode() if isinstance(value, bytes) else str(value)


async def redis_run_id(redis: Redis) -> str:
    try:
        return run_id_of(await redis.info("server"))
    except ResponseError:
        return ""


def ask_run_id(pipe: Pipeline) -> None:
    """Queue the run_id question on a pipeline executed with ``raise_on_error=False`` (its answer is
    ``run_id_of`` of the reply)."""
    pipe.info("server")
