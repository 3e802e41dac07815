"""Helpers for the JobService specifications: data as the old system wrote it, Redis snapshots, errors.

The legacy writers reproduce the old system's own writes exactly (see DESIGN.md, "Data in Redis"): a hash
``ai:jobs:<job_id>`` with ``job_id``, ``status``, ``action_provider``, ``action_name``, ``params`` (JSON
text), ``workspace_id``, ``actor_id``, ``result`` ("" or JSON text), ``enqueued_at`` (ISO-8601, UTC) and
``started_at``/``finished_at`` once set: no ``rev``, no ``error``, no index entry. Its queue is
``RPUSH ai:queue:pending <job_id>``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.rpc import error_details_pb2
from redis.asyncio import Redis

from relay.core.keys import KEYS
from relay.core.rpc_errors import error_info
from relay.v1 import job_service_pb2 as pb

LEGACY_FIELDS = {
    "job_id",
    "status",
    "action_provider",
    "action_name",
    "params",
    "workspace_id",
    "actor_id",
    "result",
    "enqueued_at",
}

#: A moment safely before anything a test enqueues through Relay.
EPOCH = datetime(2025, 10, 1, tzinfo=UTC)


def old_timestamp(seconds: float) -> str:
    """An ISO-8601 UTC time as the old system wrote it, ``seconds`` after EPOCH."""
    return (EPOCH + timedelta(seconds=seconds)).isoformat()


async def write_legacy_job(
    redis: Redis,
    workspace_id: str,
    *,
    job_id: str | None = None,
    status: str = "pending",
    params: dict[str, Any] | None = None,
    result: str = "",
    enqueued_at: str | None = None,
    queue: bool = False,
    **extra: str,
) -> str:
    """A job exactly as the old system wrote it (and, with ``queue``, enqueued it)."""
    job_id = job_id or str(uuid.uuid4())
    record = {
        "job_id": job_id,
        "status": status,
        "action_provider": "openai",
        "action_name": "chat",
        "params": json.dumps(params if params is not None else {"prompt": "hello"}),
        "workspace_id": workspace_id,
        "actor_id": "legacy-user",
        "result": result,
        "enqueued_at": enqueued_at or datetime.now(UTC).isoformat(),
        **extra,
    }
    await redis.hset(KEYS.legacy_job(job_id), mapping=record)
    if queue:
        await redis.rpush(KEYS.legacy_queue, job_id)
    return job_id


async def write_legacy_jobs(redis: Redis, workspace_id: str, count: int, start: float = 0.0) -> list[str]:
    """``count`` legacy-only jobs of one workspace, one second apart, written in one round trip."""
    pipe = redis.pipeline(transaction=False)
    ids = []
    for n in range(count):
        job_id = str(uuid.uuid4())
        ids.append(job_id)
        pipe.hset(
            KEYS.legacy_job(job_id),
            mapping={
                "job_id": job_id,
                "status": "completed" if n % 3 == 0 else "pending",
                "action_provider": "openai",
                "action_name": "chat",
                "params": "{}",
                "workspace_id": workspace_id,
                "actor_id": "legacy-user",
                "result": "",
                "enqueued_at": old_timestamp(start + n),
            },
        )
    await pipe.execute()
    return ids


async def execute(
    jobs: Any, md: Any, count: int = 1, client_request_id: str = "", **params: Any
) -> list[str]:
    actions = [
        pb.Action(provider="openai", action="chat", client_request_id=client_request_id) for _ in range(count)
    ]
    for action in actions:
        action.params.update(params or {"prompt": "hi"})
    reply = await jobs.Execute(pb.ExecuteRequest(actions=actions, actor_id="tester"), metadata=md)
    return list(reply.job_ids)


async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes, Any]]:
    """Every key with its type and full value (TTLs aside), to show that a refused call changed nothing."""
    state: dict[bytes, tuple[bytes, Any]] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == b"hash":
            value: Any = await redis.hgetall(key)
        elif kind == b"list":
            value = await redis.lrange(key, 0, -1)
        elif kind == b"zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = await redis.smembers(key)
        else:
            value = await redis.dump(key)
        state[key] = (kind, value)
    return state


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo | None

    @property
    def reason(self) -> str:
        return self.info.reason if self.info else ""

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.info.metadata) if self.info else {}

    def same_as(self, other: Refusal) -> bool:
        return (self.code, self.message, self.reason, self.metadata) == (
            other.code,
            other.message,
            other.reason,
            other.metadata,
        )


async def refusal(call: Any) -> Refusal:
    """The status a call fails with; fails the test when the call succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return Refusal(exc.code(), exc.details() or "", error_info(exc))
    raise AssertionError("the call succeeded; a refusal was expected")


async def list_all(
    jobs: Any, md: Any, page_size: int = 50, status: int = 0, max_pages: int = 10_000
) -> tuple[list[pb.Job], int]:
    """Every job of a listing, following next_page_token to its (required) end: (jobs, pages)."""
    out: list[pb.Job] = []
    token = ""
    for pages in range(1, max_pages + 1):
        reply = await jobs.ListJobs(
            pb.ListJobsRequest(page_size=page_size, page_token=token, status=status), metadata=md
        )
        assert len(reply.jobs) <= page_size
        out.extend(reply.jobs)
        token = reply.next_page_token
        if not token:
            return out, pages
    raise AssertionError(f"paging did not end within {max_pages} pages")
