"""JobService and the backfill on each topology, side by side in one run: one Redis for both layouts
(topology 1) against the legacy layout on its own Redis and the new layout on a 3-primary Redis Cluster
(topology 2).

    python -m bench.bench_topologies               # 2 x 10 s per RPC and topology
    python -m bench.bench_topologies --quick       # a smoke run

Each topology gets fresh processes (private redis-servers or cluster, ``relay serve jobs``) and the same
load generator (bench/loadgen.py) with the same inputs; the figures are throughput, p50/p99, and Redis CPU
per call summed over every node (the cost one call puts on the store, which bounds how many calls a
primary serves: a workspace lives in one slot, so calls spread over primaries as workspaces do). Then an
unthrottled backfill of --backfill-keys legacy records on each topology (``relay serve controller``,
StartBackfill over gRPC), keys/s. Writes bench/results/topologies.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import workload
from bench.bench_jobs import STAGE_FLAGS, combine, load, seed_read_workspace
from bench.server_proc import ServerProcess, relay_serve_argv, start_server
from harness.ports import free_port
from harness.redis_cluster import start_redis_cluster
from harness.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TOPOLOGIES = ("single", "cluster")
RPCS = ("Execute", "GetJob", "ListJobs")


class _Stats:
    """The store's counters summed over its nodes (one node for a single Redis)."""

    def __init__(self, ports: list[int]):
        self._ports = ports

    def _clients(self) -> list[Any]:
        import redis as sync_redis

        return [sync_redis.Redis(port=p, socket_timeout=5) for p in self._ports]

    def cpu_seconds(self) -> float:
        total = 0.0
        for c in self._clients():
            info = c.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total

    def client(self) -> Any:
        stats = self

        class _Summed:
            def info(self, section: str) -> dict[str, int]:
                return {
                    "total_commands_processed": sum(
                        int(c.info(section)["total_commands_processed"]) for c in stats._clients()
                    )
                }

        return _Summed()


@dataclass
class TopologyStack:
    name: str
    redis: _Stats
    real: ServerProcess
    raw_keys: dict[str, str]
    workdir: Path


@contextmanager
def running_topology(name: str, stage: str) -> Iterator[TopologyStack]:
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        raw_keys = {ws: "rk_bench_" + secrets.token_urlsafe(24) for ws in workload.WORKSPACES}
        key_file = workdir / "keys.json"
        key_file.write_text(json.dumps(workload.key_file_entries(raw_keys)))
        legacy = start_redis_server(prefix="relay-bench-legacy-")
        stack.callback(legacy.stop)
        env = {"RELAY_API_KEYS_FILE": str(key_file), "RELAY_METRICS_LISTEN": "", **STAGE_FLAGS[stage]}
        env["RELAY_CREDENTIALS"] = str(workdir / "credentials.json")
        if name == "cluster":
            cluster = start_redis_cluster(primaries=3, replicas=0)
            stack.callback(cluster.stop)
            env |= {"REDIS_URL": cluster.url, "RELAY_LEGACY_REDIS_URL": legacy.url}
            stats = _Stats([legacy.port, *(n.port for n in cluster.nodes)])
        else:
            env["REDIS_URL"] = legacy.url
            stats = _Stats([legacy.port])
        port = free_port()
        env["RELAY_LISTEN"] = f"127.0.0.1:{port}"
        real = start_server(
            f"relay-{name}", relay_serve_argv("jobs"), env, f"127.0.0.1:{port}", workdir, ROOT
        )
        stack.callback(real.stop)
        yield TopologyStack(name, stats, real, raw_keys, workdir)


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with running_topology(name, args.stage) as stack:
        job_ids = seed_read_workspace(stack, args.read_jobs)  # type: ignore[arg-type]
        tokens = [""]
        inputs = {"job_ids": job_ids, "page_tokens": tokens}
        rows = {}
        for rpc in RPCS:
            workspace_id = workload.EXEC_WORKSPACE if rpc == "Execute" else workload.READ_WORKSPACE
            runs = [
                load(stack, stack.real, workspace_id, rpc, inputs, args.duration, args.concurrency, 1.0)  # type: ignore[arg-type]
                for _ in range(args.rounds)
            ]
            rows[rpc] = combine(runs)
            print(f"  {name} {rpc}: {rows[rpc]['throughput']:.0f}/s", file=sys.stderr, flush=True)
        return rows


def measure_backfill(name: str, keys: int) -> dict[str, Any]:
    """An unthrottled backfill of ``keys`` seeded legacy records on one topology."""
    import asyncio

    from bench import bench_backfill

    with tempfile.TemporaryDirectory(prefix="relay-bench-bf-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        keys_file = workdir / "keys.json"
        keys_file.write_text(json.dumps([{"key": bench_backfill.ADMIN_KEY, "scopes": ["migration:admin"]}]))
        legacy = start_redis_server(prefix="relay-bench-legacy-")
        stack.callback(legacy.stop)
        bench_backfill.seed(legacy.client(), keys)
        url, env = legacy.url, {}
        if name == "cluster":
            cluster = start_redis_cluster(primaries=3, replicas=0)
            stack.callback(cluster.stop)
            url, env = cluster.url, {"RELAY_LEGACY_REDIS_URL": legacy.url}
        controller = bench_backfill.start_server("controller", url, keys_file, workdir, env)
        stack.callback(controller.stop)
        run, _ = asyncio.run(bench_backfill.controller_backfill(controller, None, [], 1000, 0.0))
        return {
            "keys": run.keys,
            "seconds": round(run.seconds, 2),
            "keys_per_second": round(run.keys_per_second),
        }


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| RPC | topology 1 calls/s | topology 2 calls/s | ratio 2/1 | p99 ms 1 / 2 "
        "| Redis CPU µs/call 1 / 2 |",
        "|---|---|---|---|---|---|",
    ]
    for rpc in RPCS:
        one, two = results["single"][rpc], results["cluster"][rpc]
        ratio = two["throughput"] / one["throughput"] if one["throughput"] else 0.0
        lines.append(
            f"| {rpc} | {one['throughput']:.0f} | {two['throughput']:.0f} | {ratio:.2f} | "
            f"{one['p99_ms']:.1f} / {two['p99_ms']:.1f} | "
            f"{one['redis_cpu_us_per_call']:.0f} / {two['redis_cpu_us_per_call']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--read-jobs", type=int, default=1000)
    parser.add_argument("--stage", default="READ_NEW", choices=sorted(STAGE_FLAGS))
    parser.add_argument("--backfill-keys", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="seconds, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "topologies.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.read_jobs, args.backfill_keys = 1.0, 1, 100, 2000
    results = {name: measure(name, args) for name in TOPOLOGIES}
    backfills = {name: measure_backfill(name, args.backfill_keys) for name in TOPOLOGIES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"stage": args.stage, "results": results, "backfill": backfills}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(results))
    one, two = backfills["single"], backfills["cluster"]
    ratio = two["keys_per_second"] / one["keys_per_second"] if one["keys_per_second"] else 0.0
    print()
    print("| backfill | topology 1 keys/s | topology 2 keys/s | ratio 2/1 |")
    print("|---|---|---|---|")
    print(
        f"| {one['keys']:,} legacy keys, unthrottled | {one['keys_per_second']:,} "
        f"| {two['keys_per_second']:,} | {ratio:.2f} |"
    )
    return results


if __name__ == "__main__":
    main()
