"""Relay on a Redis Cluster while a primary dies or a busy workspace's slot moves.

Each test starts a cluster of its own (3 primaries, a replica each), since it changes the cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from harness.redis_cluster import RedisCluster as ClusterProcess
from harness.redis_cluster import reshard, start_redis_cluster
from relay import server
from relay.core.config import Settings
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc
from tests.conftest import Keys, RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def own_cluster() -> Iterator[ClusterProcess]:
    cluster = start_redis_cluster(primaries=3, replicas=1)
    yield cluster
    cluster.stop()


@dataclass
class Traffic:
    """Callers writing and reading one workspace until told to stop; what they saw."""

    acknowledged: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    failures_at: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _caller(jobs, md, traffic: Traffic) -> None:
    while not traffic.stop.is_set():
        try:
            reply = await jobs.Execute(
                pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")]),
                metadata=md,
                timeout=10,
            )
            traffic.acknowledged.extend(reply.job_ids)
            await jobs.GetJob(pb.GetJobRequest(job_id=reply.job_ids[0]), metadata=md, timeout=10)
            traffic.codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            traffic.codes[exc.code().name] += 1
            traffic.failures_at.append(time.monotonic())
            await asyncio.sleep(0.05)


@pytest.fixture
async def cluster_relay(own_cluster, redis_server: RedisServer, redis: Redis, keys_file: tuple[Path, Keys]):
    started = []

    async def start(**overrides: object):
        settings = Settings.from_env(
            {},
            listen="127.0.0.1:0",
            redis_url=own_cluster.url,
            legacy_redis_url=redis_server.url,
            api_keys_file=str(keys_file[0]),
            metrics_listen="",
            default_stage=Stage.NEW_ONLY,
            **{"stage_refresh_seconds": 0.1, **overrides},
        )
        app = await server.start(settings, "jobs")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        started.append((app, channel))
        return job_service_pb2_grpc.JobServiceStub(channel)

    yield start
    for app, channel in reversed(started):
        await channel.close()
        await app.stop(0.5)


async def _all_readable(jobs, md, job_ids: list[str]) -> list[str]:
    """The acknowledged jobs that cannot be read back."""
    lost = []
    for job_id in job_ids:
        for _ in range(50):
            try:
                await jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md, timeout=10)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    lost.append(job_id)
                    break
                await asyncio.sleep(0.1)
    return lost


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_a_killed_primary_is_replaced_and_calls_resume(own_cluster, cluster_relay, keys, wait_replicas):
    """Without WAIT a failover may lose the dead primary's last acknowledged writes (replication is
    asynchronous; the figures are printed); with RELAY_REDIS_WAIT_REPLICAS=1 it loses none."""
    jobs = await cluster_relay(redis_wait_replicas=wait_replicas, redis_wait_timeout_ms=2000)
    md = keys.md("ws_a")
    traffic = Traffic()
    callers = [asyncio.create_task(_caller(jobs, md, traffic)) for _ in range(8)]
    await _until(lambda: traffic.codes["OK"] >= 50)
    victim = own_cluster.primary_of_key(KEYS.new_job("ws-a", "x"))
    before = traffic.codes["OK"]
    killed_at = time.monotonic()
    own_cluster.kill(victim)
    # The replica takes over; with WAIT 1 writes are refused until the new primary has a replica of its
    # own again: the killed node, restarted, rejoins as one.
    await asyncio.to_thread(own_cluster.wait_healthy)
    promoted_after = time.monotonic() - killed_at
    if wait_replicas:
        own_cluster.restart(victim)
        await asyncio.to_thread(own_cluster.wait_replicated)
    await _until(lambda: traffic.codes["OK"] >= before + 50, within=30)
    recovered_after = time.monotonic() - killed_at
    traffic.stop.set()
    await asyncio.gather(*callers)
    lost = await _all_readable(jobs, md, traffic.acknowledged)
    failed = sum(n for code, n in traffic.codes.items() if code != "OK")
    print(
        f"\nfailover (WAIT {wait_replicas}): replica promoted after {promoted_after:.1f} s, "
        f"calls back after {recovered_after:.1f} s, {failed} calls failed meanwhile "
        f"({dict(traffic.codes)}), {len(traffic.acknowledged)} acknowledged writes, {len(lost)} lost"
    )
    if wait_replicas:
        assert lost == []
    assert set(traffic.codes) <= {"OK", "UNAVAILABLE"}, "a failover is UNAVAILABLE (retryable), nothing else"
    assert promoted_after < 15 and recovered_after < 30


async def test_moving_a_busy_workspaces_slot_fails_no_call_and_loses_nothing(
    own_cluster, cluster_relay, keys
):
    jobs = await cluster_relay()
    md = keys.md("ws_a")
    traffic = Traffic()
    callers = [asyncio.create_task(_caller(jobs, md, traffic)) for _ in range(8)]
    await _until(lambda: traffic.codes["OK"] >= 100)
    key = KEYS.new_job("ws-a", "x")
    source = own_cluster.primary_of_key(key)
    target = next(p for p in own_cluster.primaries() if p.port != source.port)
    slot = source.client().cluster("KEYSLOT", key)
    await asyncio.to_thread(reshard, own_cluster, slot, target)
    moved_at = traffic.codes["OK"]
    await _until(lambda: traffic.codes["OK"] >= moved_at + 100)
    traffic.stop.set()
    await asyncio.gather(*callers)
    assert own_cluster.primary_of_key(key).port == target.port
    assert traffic.codes.keys() == {"OK"}, f"calls failed during the move: {dict(traffic.codes)}"
    assert await _all_readable(jobs, md, traffic.acknowledged) == []
    listed = 0
    token = ""
    while True:
        page = await jobs.ListJobs(pb.ListJobsRequest(page_size=500, page_token=token), metadata=md)
        listed += len(page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert listed == len(traffic.acknowledged), "the index moved with the workspace"


async def _until(condition, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition was not met in time")
        await asyncio.sleep(0.02)
