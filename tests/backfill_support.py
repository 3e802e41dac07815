"""What the backfill tests share: seeding legacy records (clean and messy), collecting a backfill's events,
and a controller in a subprocess (``python tests/backfill_support.py``) that a test can kill -9.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from redis.asyncio import Redis

from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import migration_controller_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
WORKSPACES = ("ws-a", "ws-b", "ws-c")
TERMINAL = {
    bpb.BACKFILL_EVENT_KIND_COMPLETED,
    bpb.BACKFILL_EVENT_KIND_FAILED,
    bpb.BACKFILL_EVENT_KIND_CANCELLED,
}


def legacy_record(job_id: str, workspace_id: str, n: int = 0, **extra: str) -> dict[str, str]:
    """A record as the old system wrote it: no rev, params as JSON text."""
    record = {
        "job_id": job_id,
        "status": "pending",
        "action_provider": "openai",
        "action_name": "chat.completions",
        "params": json.dumps({"prompt": f"hello {n}"}),
        "workspace_id": workspace_id,
        "actor_id": "user-1",
        "result": "",
        "enqueued_at": f"2025-10-{1 + n % 28:02d}T12:{n % 60:02d}:{n // 60 % 60:02d}.{n:06d}+00:00",
    }
    record.update(extra)
    return record


async def seed_clean(redis: Redis, count: int, workspaces: Iterable[str] = WORKSPACES) -> list[str]:
    """``count`` well-formed legacy records spread over ``workspaces``; returns their job ids."""
    spaces = list(workspaces)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 2000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 2000, count)):
            pipe.hset(KEYS.legacy_job(ids[n]), mapping=legacy_record(ids[n], spaces[n % len(spaces)], n))
        await pipe.execute()
    return ids


@dataclass
class MessySeed:
    """A legacy dataset with every kind of oddity, and what a backfill must make of it."""

    migrated: set[str]  # job ids that must be copied verbatim
    exists: set[str]
    newer: set[str]
    invalid: set[str]
    errors: set[str]
    ids: dict[str, str]  # name -> job id of the notable records
    total: int


async def seed_messy(redis: Redis, clean: int = 300) -> MessySeed:
    clean_ids = await seed_clean(redis, clean)
    ids = {
        name: str(uuid.uuid4())
        for name in ("sparse", "not_json", "huge", "older", "newer", "same", "blocked")
    }
    pipe = redis.pipeline(transaction=False)
    # Valid but odd: copied verbatim.
    pipe.hset(KEYS.legacy_job(ids["sparse"]), mapping={"workspace_id": "ws-a", "action_name": "only-this"})
    pipe.hset(
        KEYS.legacy_job(ids["not_json"]),
        mapping=legacy_record(ids["not_json"], "ws-a", 1, params="{not json", result="<<not json>>"),
    )
    huge = legacy_record(ids["huge"], "ws-b", 2)
    huge.update({f"extra_{n}": f"value {n}" for n in range(3000)})
    pipe.hset(KEYS.legacy_job(ids["huge"]), mapping=huge)
    # A new copy with a lower revision is replaced whole; a higher one is kept; an equal one is left.
    pipe.hset(KEYS.legacy_job(ids["older"]), mapping=legacy_record(ids["older"], "ws-a", 3, rev="3"))
    pipe.hset(KEYS.new_job("ws-a", ids["older"]), mapping={"status": "pending", "rev": "1", "stale": "x"})
    pipe.hset(KEYS.legacy_job(ids["newer"]), mapping=legacy_record(ids["newer"], "ws-a", 4, rev="2"))
    newer = legacy_record(ids["newer"], "ws-a", 4, rev="5", status="completed")
    pipe.hset(KEYS.new_job("ws-a", ids["newer"]), mapping=newer)
    pipe.hset(KEYS.legacy_job(ids["same"]), mapping=legacy_record(ids["same"], "ws-b", 5, rev="1"))
    pipe.hset(KEYS.new_job("ws-b", ids["same"]), mapping=legacy_record(ids["same"], "ws-b", 5, rev="1"))
    # The new key is taken by something that is not a hash: an error, counted and left alone.
    pipe.hset(KEYS.legacy_job(ids["blocked"]), mapping=legacy_record(ids["blocked"], "ws-c", 6))
    pipe.set(KEYS.new_job("ws-c", ids["blocked"]), "not a hash")
    # Invalid: no valid workspace, not a hash, or an id that cannot be part of a key.
    invalid = {
        "bad-ws": {"workspace_id": "Bad WS!"},
        "empty-ws": {"workspace_id": ""},
        "no-ws": {"status": "pending"},
        "bad*id": {"workspace_id": "ws-a"},
        "brace{x}": {"workspace_id": "ws-a"},
    }
    for job_id, fields in invalid.items():
        pipe.hset(KEYS.legacy_job(job_id), mapping={"job_id": job_id, **fields})
    pipe.set(KEYS.legacy_job("a-string"), "just text")
    pipe.rpush(KEYS.legacy_job("a-list"), "x")
    pipe.sadd(KEYS.legacy_job("a-set"), "x")
    await pipe.execute()
    # Keys outside the legacy pattern are never touched.
    await redis.set("unrelated:key", "1")
    migrated = set(clean_ids) | {ids[n] for n in ("sparse", "not_json", "huge", "older")}
    return MessySeed(
        migrated=migrated,
        exists={ids["same"]},
        newer={ids["newer"]},
        invalid=set(invalid) | {"a-string", "a-list", "a-set"},
        errors={ids["blocked"]},
        ids=ids,
        total=clean + 7 + len(invalid) + 3,
    )


async def events_of(stream: AsyncIterator[bpb.BackfillEvent]) -> list[bpb.BackfillEvent]:
    return [event async for event in stream]


async def wait_until(predicate, within: float = 10.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def counts_add_up(progress: bpb.BackfillProgress) -> bool:
    skipped = (
        progress.skipped_exists
        + progress.skipped_newer
        + progress.skipped_invalid
        + progress.skipped_vanished
    )
    return progress.scanned == progress.migrated + skipped + progress.errors


# --- a controller in a subprocess --------------------------------------------------------------
@dataclass
class ControllerProcess:
    process: subprocess.Popen[bytes]
    target: str

    def stub(self, channel: grpc.aio.Channel) -> migration_controller_pb2_grpc.MigrationControllerStub:
        return migration_controller_pb2_grpc.MigrationControllerStub(channel)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn_controller(redis_url: str, keys_file: Path, port: int, **settings: float) -> ControllerProcess:
    """``relay serve controller`` in its own process (this module's ``__main__``), with test settings."""
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        redis_url,
        str(keys_file),
        str(port),
        json.dumps(settings),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return ControllerProcess(process, f"127.0.0.1:{port}")


async def wait_serving(target: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        while True:
            try:
                await asyncio.wait_for(channel.channel_ready(), 1.0)
                return
            except (TimeoutError, grpc.aio.AioRpcError):
                if time.monotonic() > deadline:
                    raise


async def _serve(redis_url: str, keys_file: str, port: int, overrides: dict[str, float]) -> None:
    from relay import server
    from relay.core.config import Settings

    settings = Settings.from_env(
        {},
        listen=f"127.0.0.1:{port}",
        redis_url=redis_url,
        api_keys_file=keys_file,
        metrics_listen="",
        log_level="WARNING",
        **overrides,
    )
    app = await server.start(settings, "controller")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.stop(1.0)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])))
