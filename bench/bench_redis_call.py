"""What one Redis call costs the calling process: redis-py's pool against the pipelined connection.

    .venv/bin/python -m bench.bench_redis_call              # 20,000 calls, 16 callers at once
    .venv/bin/python -m bench.bench_redis_call --calls 50000 --callers 32

Against a private redis-server, in this one process, the same READ_SERVED call of one job (the script
GetJob runs) is made ``--calls`` times by ``--callers`` concurrent tasks, first through ``LuaScripts`` on a
client with Relay's waiting pool (``relay.core.stores.single_client``), then through ``LuaScripts`` on a
``PipelinedConnection`` to the same Redis. It prints the process CPU per call and the calls per second of
each, and their ratio. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from harness.redis_server import start_redis_server
from relay.core.keys import KEYS
from relay.core.limits import Limits
from relay.core.lua import LuaScripts
from relay.core.lua.jobs import READ_SERVED
from relay.core.pipelined_connection import pipelined_connection_for
from relay.core.stores import single_client

WORKSPACE = "bench-read"
JOB = "00000000-0000-4000-8000-000000000001"


async def drive(call: Callable[[], Awaitable[object]], calls: int, callers: int) -> tuple[float, float]:
    """CPU µs per call and calls per second, of ``calls`` calls made by ``callers`` tasks."""
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / calls * 1e6, calls / wall


async def main_async(args: argparse.Namespace) -> None:
    server = start_redis_server(prefix="relay-bench-call-")
    pooled = single_client(server.url)
    pipelined = pipelined_connection_for(pooled, Limits())
    assert pipelined is not None
    try:
        record = {"job_id": JOB, "workspace_id": WORKSPACE, "status": "pending", "rev": "1", "params": "{}"}
        await pooled.hset(KEYS.new_job(WORKSPACE, JOB), mapping=record)
        keys, script_args = [KEYS.new_job(WORKSPACE, JOB), KEYS.legacy_job(JOB)], [WORKSPACE, "1"]
        rows = []
        for name, scripts in (
            ("redis-py pool (relay.core.stores.single_client)", LuaScripts(pooled)),
            ("pipelined connection", LuaScripts(pooled, pipelined)),
        ):

            async def call(scripts: LuaScripts = scripts) -> object:
                return await scripts.call(READ_SERVED, keys=keys, args=script_args)

            await drive(call, 500, args.callers)  # warm: connections made, script loaded
            rows.append((name, *await drive(call, args.calls, args.callers)))
        print(f"READ_SERVED of one job, {args.calls:,} calls by {args.callers} concurrent callers\n")
        print("| client | CPU µs per call | calls/s |\n|---|---:|---:|")
        for name, cpu, rate in rows:
            print(f"| {name} | {cpu:.1f} | {rate:,.0f} |")
        print(f"\nCPU per call, pipelined / pool: {rows[1][1] / rows[0][1]:.2f}")
    finally:
        await pipelined.aclose()
        await pooled.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=16)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
