"""The load generator: its own process, grpc.aio, N concurrent callers of one RPC for a fixed time.

``python -m bench.loadgen --target HOST:PORT --api-key KEY --rpc GetJob --inputs inputs.json`` prints one
JSON object: completed calls, errors by status code, throughput, latency percentiles and the generator's
own CPU use (near one core means the generator, not the server, may be the limit).

Each caller sends its next request as soon as the previous one returns. Calls that start during the
warm-up are not counted; the measured window is ``--duration`` seconds after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench import workload
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc as pb_grpc

RPCS = ("Execute", "GetJob", "ListJobs")
#: Lines printed when the measured window starts and ends, so a caller can sample the server around it.
WINDOW_START = "WINDOW-START"
WINDOW_END = "WINDOW-END"

Call = Callable[[int, int], Awaitable[Any]]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(rpc: str, latencies: list[float], errors: Counter[str], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "rpc": rpc,
        "calls": len(ordered),
        "errors": dict(errors),
        "seconds": round(seconds, 3),
        "throughput": round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
    }


def make_call(stub: pb_grpc.JobServiceStub, rpc: str, inputs: dict[str, Any], metadata: Any) -> Call:
    prefix = f"bench-{os.getpid()}-{random.getrandbits(32):08x}"
    if rpc == "Execute":

        async def execute(caller: int, n: int) -> Any:
            request = workload.execute_request([f"{prefix}-{caller}-{n}"])
            return await stub.Execute(request, metadata=metadata, timeout=30)

        return execute
    if rpc == "GetJob":
        job_ids: list[str] = inputs["job_ids"]

        async def get(caller: int, n: int) -> Any:
            request = pb.GetJobRequest(job_id=random.choice(job_ids))
            return await stub.GetJob(request, metadata=metadata, timeout=30)

        return get
    if rpc == "ListJobs":
        tokens: list[str] = inputs["page_tokens"]
        page_size = int(inputs.get("page_size", workload.PAGE_SIZE))

        async def list_page(caller: int, n: int) -> Any:
            request = pb.ListJobsRequest(page_size=page_size, page_token=random.choice(tokens))
            return await stub.ListJobs(request, metadata=metadata, timeout=30)

        return list_page
    raise ValueError(f"rpc must be one of {RPCS}")


async def drive(
    target: str,
    api_key: str,
    rpc: str,
    inputs: dict[str, Any],
    duration: float,
    concurrency: int,
    warmup: float,
) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {api_key}"),)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = make_call(pb_grpc.JobServiceStub(channel), rpc, inputs, metadata)
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + duration

        async def caller(index: int) -> None:
            n = 0
            while True:
                begin = time.perf_counter()
                if begin >= window_end:
                    return
                n += 1
                try:
                    await call(index, n)
                except grpc.aio.AioRpcError as exc:
                    if begin >= window_start:
                        errors[exc.code().name] += 1
                    await asyncio.sleep(0.01)  # do not spin on a failing server
                    continue
                if begin >= window_start:
                    latencies.append(time.perf_counter() - begin)

        cpu_at_window: list[float] = []

        async def mark_window() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            cpu_at_window.append(time.process_time())
            print(WINDOW_START, flush=True)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            cpu_at_window.append(time.process_time())
            print(WINDOW_END, flush=True)

        marker = asyncio.create_task(mark_window())
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        await marker
        cpu = cpu_at_window[1] - cpu_at_window[0]
    result = summarize(rpc, latencies, errors, duration)
    result["concurrency"] = concurrency
    result["client_cpu_share"] = round(cpu / duration, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--rpc", required=True, choices=RPCS)
    parser.add_argument("--inputs", help="JSON file with job_ids and page_tokens")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    inputs = json.loads(Path(args.inputs).read_text()) if args.inputs else {}
    result = asyncio.run(
        drive(args.target, args.api_key, args.rpc, inputs, args.duration, args.concurrency, args.warmup)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
