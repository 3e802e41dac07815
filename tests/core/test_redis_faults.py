"""Dropped Redis connections (DESIGN.md, invariant 10; relay.core.stores, "what is repeated"): a
``CLIENT KILL TYPE normal`` of the service's connections during traffic costs no failed read, and no
write is repeated behind the caller's back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import grpc

from relay.core.stores import NO_CLIENT_RETRY, READ_RETRY, repeatable
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc
from tests.job_testkit import execute, write_legacy_jobs

KILLS = 12


async def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_client_kill_during_read_traffic_costs_no_failed_read(relay, redis, keys):
    md = keys.md("ws_a")
    ids = await execute(relay.jobs, md, count=50)
    await write_legacy_jobs(redis, "ws-a", 200)
    channels = [grpc.aio.insecure_channel(relay.target) for _ in range(4)]
    stubs = [job_service_pb2_grpc.JobServiceStub(c) for c in channels]
    codes: collections.Counter[tuple[str, grpc.StatusCode]] = collections.Counter()
    killed: list[int] = []
    stop = asyncio.Event()
    answered = asyncio.Event()

    async def reader(n: int) -> None:
        stub = stubs[n % len(stubs)]
        while not stop.is_set():
            if n % 2:
                code = await _code(stub.GetJob(pb.GetJobRequest(job_id=ids[n % len(ids)]), metadata=md))
                codes["GetJob", code] += 1
            else:
                code = await _code(stub.ListJobs(pb.ListJobsRequest(page_size=100), metadata=md))
                codes["ListJobs", code] += 1
            if sum(codes.values()) % 20 == 0:
                answered.set()

    async def killer() -> None:
        # Each kill lands while reads are in flight: wait for reads to be answered, then cut them all.
        for _ in range(KILLS):
            answered.clear()
            await answered.wait()  # set by the readers once 20 more reads were answered
            killed.append(int(await redis.execute_command("CLIENT", "KILL", "TYPE", "normal")))
        stop.set()

    try:
        await asyncio.wait_for(asyncio.gather(killer(), *(reader(n) for n in range(16))), 120)
    finally:
        for c in channels:
            await c.close()
    assert sum(killed) >= KILLS  # live connections of the service were cut, every time
    failed = {k: v for k, v in codes.items() if k[1] != grpc.StatusCode.OK}
    assert not failed, failed
    assert sum(codes.values()) > KILLS * 20


async def test_the_clients_repeat_no_command_of_their_own(relay):
    # Writes are never repeated by redis-py behind the caller's back (an ENQUEUE whose reply was lost
    # would enqueue again): only call sites wrapped in ``repeatable`` (reads) are repeated.
    pool = relay.app.stores.new.connection_pool
    assert pool.connection_kwargs["retry"] is NO_CLIENT_RETRY
    assert NO_CLIENT_RETRY.get_retries() == 0 and READ_RETRY.get_retries() == 3


async def test_a_read_is_repeated_with_backoff_and_overload_is_not():
    from redis.exceptions import ConnectionError as RedisConnectionError

    from relay.core.stores import PoolExhausted

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RedisConnectionError("Connection closed by server.")
        return "read"

    assert await repeatable(flaky) == "read" and calls == 3

    async def busy() -> str:
        nonlocal calls
        calls += 1
        raise PoolExhausted("all busy")

    calls = 0
    with contextlib.suppress(PoolExhausted):
        await repeatable(busy)
    assert calls == 1  # waiting for a connection again would only pass the caller's deadline
