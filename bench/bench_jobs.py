"""JobService benchmark: the real service against a no-op handler on the same stack, and listing at scale.

    python -m bench.bench_jobs                       # full run: 2 x 10 s per measurement, 10k and 1M keys
    python -m bench.bench_jobs --quick               # smoke run: seconds, tiny key counts
    python -m bench.bench_jobs --duration 20 --concurrency 32 --other-keys 10000,100000,1000000

One run starts a private redis-server, ``relay serve jobs`` and the no-op baseline (bench/noop_server.py)
as separate processes, and drives them from a load generator in its own process (bench/loadgen.py):

1. Throughput and p50/p99 latency of Execute (one action with a client_request_id), GetJob (a random job
   of a 1,000-job workspace) and ListJobs (a random page of 50 of that workspace), each measured against
   the real service and the no-op one in turn (--rounds pairs, alternating which goes first), with the
   ratio real/no-op of their throughput (aims, issue #12: Execute and GetJob >= 0.7, ListJobs >= 0.5).
2. ListJobs page latency, one caller, with N other-workspace keys present for each N of --other-keys (half
   new-layout records with their index entries, half legacy-only records), with the ratio between the
   largest and the smallest N (aim: < 1.5). This is the indexed phase: the ``legacy-indexed`` marker is
   set, as a completed backfill leaves it, and every page measured lies inside the workspace's index.
3. The legacy phase (marker absent: legacy-only jobs may exist that no index lists) at the largest N:
   the cost of one page, a bounded SCAN of the legacy keys (DESIGN invariant 4).

The service runs in the default stage READ_NEW (the old system's three flags on): writes go to both
layouts and reads look at both; --stage NEW_ONLY shows the cost once the migration is done. The
markdown table goes to stdout, the figures to bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import loadgen, workload
from bench.seed import seed_other_jobs
from bench.server_proc import ServerProcess, relay_serve_argv, start_server
from harness.ports import free_port
from harness.redis_server import RedisServer, start_redis_server
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN
from relay.services import job_listing
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RPCS = ("Execute", "GetJob", "ListJobs")
#: Issue #12's aim for each RPC's throughput, real / no-op.
THROUGHPUT_AIM = {"Execute": 0.7, "GetJob": 0.7, "ListJobs": 0.5}
PAGE_RATIO_AIM = 1.5
#: The old system's flags for each stage a benchmark run can start in (relay.core.stages.stage_from_flags).
STAGE_FLAGS = {
    "READ_NEW": {"AI_JOBS_NEW_SCHEMA": "on", "READ_PREFERS_NEW": "on", "READ_FALLBACK_OLD": "on"},
    "NEW_ONLY": {"AI_JOBS_NEW_SCHEMA": "on", "READ_PREFERS_NEW": "on", "READ_FALLBACK_OLD": "off"},
    "DUAL_WRITE": {"AI_JOBS_NEW_SCHEMA": "on", "READ_PREFERS_NEW": "off", "READ_FALLBACK_OLD": "on"},
}


@dataclass(frozen=True)
class Config:
    duration: float
    concurrency: int
    rounds: int
    other_keys: tuple[int, ...]
    read_jobs: int
    warmup: float
    page_duration: float
    page_rounds: int
    legacy_pages: int
    stage: str
    json_out: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = args.quick
        other = args.other_keys or ("500,6000" if quick else "10000,1000000")
        counts = tuple(sorted({int(n.replace("_", "")) for n in other.split(",") if n.strip()}))
        duration = args.duration or (0.6 if quick else 10.0)
        return cls(
            duration=duration,
            concurrency=args.concurrency or (4 if quick else 16),
            rounds=args.rounds or (1 if quick else 2),
            other_keys=counts,
            read_jobs=200 if quick else 1000,
            warmup=0.2 if quick else 1.0,
            page_duration=0.6 if quick else max(5.0, duration / 2),
            page_rounds=1 if quick else 3,
            legacy_pages=4 if quick else 40,
            stage=args.stage,
            json_out=Path(args.json_out or RESULTS / ("jobs-quick.json" if quick else "jobs.json")),
        )


@dataclass
class Stack:
    redis: RedisServer
    real: ServerProcess
    noop: ServerProcess | None
    raw_keys: dict[str, str]
    workdir: Path
    #: The read workspace's job ids, and the tokens that start each of its pages (all in its index).
    job_ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


# --- processes -----------------------------------------------------------------------------------
@contextmanager
def running_stack(stage: str = "READ_NEW", with_noop: bool = True) -> Iterator[Stack]:
    # The processes stop (ExitStack) before their working directory goes.
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        raw_keys = {ws: "rk_bench_" + secrets.token_urlsafe(24) for ws in workload.WORKSPACES}
        key_file = workdir / "keys.json"
        key_file.write_text(json.dumps(workload.key_file_entries(raw_keys)))
        redis = start_redis_server(prefix="relay-bench-redis-")
        stack.callback(redis.stop)

        def env(port: int) -> dict[str, str]:
            return {
                "REDIS_URL": redis.url,
                "RELAY_LISTEN": f"127.0.0.1:{port}",
                "RELAY_API_KEYS_FILE": str(key_file),
                "RELAY_METRICS_LISTEN": "",
                "RELAY_CREDENTIALS": str(workdir / "credentials.json"),
                **STAGE_FLAGS[stage],
            }

        real_port, noop_port = free_port(), free_port()
        real = start_server(
            "relay-jobs", relay_serve_argv("jobs"), env(real_port), f"127.0.0.1:{real_port}", workdir, ROOT
        )
        stack.callback(real.stop)
        noop = None
        if with_noop:
            noop_argv = [sys.executable, "-m", "bench.noop_server"]
            noop = start_server(
                "noop-jobs", noop_argv, env(noop_port), f"127.0.0.1:{noop_port}", workdir, ROOT
            )
            stack.callback(noop.stop)
        yield Stack(redis, real, noop, raw_keys, workdir)


def redis_commands(redis: RedisServer) -> int:
    return int(redis.client().info("stats")["total_commands_processed"])


def load(
    stack: Stack,
    server: ServerProcess,
    workspace_id: str,
    rpc: str,
    inputs: dict[str, Any],
    duration: float,
    concurrency: int,
    warmup: float,
) -> dict[str, Any]:
    """One measurement by the load generator process, with the server's and Redis's CPU use beside it."""
    inputs_path = stack.workdir / f"inputs-{rpc}.json"
    inputs_path.write_text(json.dumps(inputs))
    argv = [sys.executable, "-m", "bench.loadgen", "--target", server.target]
    argv += ["--api-key", stack.raw_keys[workspace_id], "--rpc", rpc, "--inputs", str(inputs_path)]
    argv += ["--duration", str(duration), "--concurrency", str(concurrency), "--warmup", str(warmup)]
    with tempfile.TemporaryFile("w+") as errors:
        generator = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, cwd=ROOT, text=True)
        assert generator.stdout is not None
        # Count server and Redis work over the measured window only (the generator marks its start and
        # end); every other line is the generator's report.
        samples, report = [], []
        for line in generator.stdout:
            if line.strip() in (loadgen.WINDOW_START, loadgen.WINDOW_END):
                samples.append((server.cpu_seconds(), stack.redis.cpu_seconds(), redis_commands(stack.redis)))
            elif line.strip():
                report.append(line)
        generator.wait(timeout=120)
        errors.seek(0)
        if generator.returncode != 0 or len(samples) != 2 or not report:
            raise RuntimeError(f"load generator failed: {errors.read()[-2000:]}")
    result: dict[str, Any] = json.loads(report[-1])
    calls = max(result["calls"], 1)
    (server0, redis0, commands0), (server1, redis1, commands1) = samples
    result["server_cpu_us_per_call"] = round((server1 - server0) / calls * 1e6, 1)
    result["redis_cpu_us_per_call"] = round((redis1 - redis0) / calls * 1e6, 1)
    result["redis_commands_per_call"] = round((commands1 - commands0) / calls, 1)
    return result


# --- data ----------------------------------------------------------------------------------------
def seed_read_workspace(stack: Stack, count: int) -> list[str]:
    """``count`` jobs of the read workspace, written by the real service's Execute (both layouts)."""
    metadata = (("authorization", f"Bearer {stack.raw_keys[workload.READ_WORKSPACE]}"),)
    job_ids: list[str] = []
    with grpc.insecure_channel(stack.real.target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        while len(job_ids) < count:
            batch = min(100, count - len(job_ids))
            crids = [f"seed-{len(job_ids) + i}" for i in range(batch)]
            reply = stub.Execute(workload.execute_request(crids), metadata=metadata, timeout=30)
            job_ids.extend(reply.job_ids)
    return job_ids


def token_phase(token: str) -> str:
    """The listing phase a page token is in. Tokens are opaque to callers; the benchmark peeks to be sure
    that it measures the phase it claims (the payload is signed, not encrypted)."""
    if not token:
        return "end"
    body = token.partition(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return str(payload["s"]["p"])


def page_walk(stack: Stack, start_token: str, pages: int) -> list[str]:
    """The tokens that start each of the next ``pages`` pages, beginning with ``start_token``."""
    metadata = (("authorization", f"Bearer {stack.raw_keys[workload.READ_WORKSPACE]}"),)
    tokens = [start_token]
    with grpc.insecure_channel(stack.real.target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        while len(tokens) <= pages:
            request = pb.ListJobsRequest(page_size=workload.PAGE_SIZE, page_token=tokens[-1])
            reply = stub.ListJobs(request, metadata=metadata, timeout=60)
            if not reply.next_page_token:
                break
            tokens.append(reply.next_page_token)
    return tokens


def key_census(redis: RedisServer) -> dict[str, int]:
    client = redis.client()
    legacy = sum(1 for _ in client.scan_iter(match=LEGACY_JOB_PATTERN, count=10_000))
    return {"total": int(client.dbsize()), "legacy": legacy}


# --- measurements --------------------------------------------------------------------------------
def measure_throughput(
    stack: Stack, cfg: Config, job_ids: list[str], tokens: list[str]
) -> list[dict[str, Any]]:
    """Each RPC against the real service and the no-op one, alternating which goes first each round."""
    if stack.noop is None:
        raise ValueError("throughput needs the stack with the no-op server")
    rows = []
    inputs = {"job_ids": job_ids, "page_tokens": tokens}
    for rpc in RPCS:
        workspace_id = workload.EXEC_WORKSPACE if rpc == "Execute" else workload.READ_WORKSPACE
        runs: dict[str, list[dict[str, Any]]] = {"real": [], "noop": []}
        progress(f"throughput of {rpc}: real and no-op, {cfg.rounds} x {cfg.duration} s each")
        for round_no in range(cfg.rounds):
            order = [("real", stack.real), ("noop", stack.noop)]
            for name, server in order if round_no % 2 == 0 else reversed(order):
                runs[name].append(
                    load(stack, server, workspace_id, rpc, inputs, cfg.duration, cfg.concurrency, cfg.warmup)
                )
        real, noop = combine(runs["real"]), combine(runs["noop"])
        ratio = real["throughput"] / noop["throughput"] if noop["throughput"] else 0.0
        rows.append({"rpc": rpc, "real": real, "noop": noop, "ratio": round(ratio, 3)})
    return rows


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one measurement as one: calls over total time, the mean of each round's percentiles, CPU
    weighted by calls; the rounds themselves are kept beside."""
    calls = sum(r["calls"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n

    def mean(field: str) -> float:
        return round(sum(r[field] for r in runs) / len(runs), 3)

    def per_call(field: str) -> float:
        return round(sum(r[field] * r["calls"] for r in runs) / calls, 1) if calls else 0.0

    return {
        "calls": calls,
        "seconds": seconds,
        "throughput": round(calls / seconds, 1) if seconds else 0.0,
        "p50_ms": mean("p50_ms"),
        "p99_ms": mean("p99_ms"),
        "errors": errors,
        "client_cpu_share": mean("client_cpu_share"),
        "server_cpu_us_per_call": per_call("server_cpu_us_per_call"),
        "redis_cpu_us_per_call": per_call("redis_cpu_us_per_call"),
        "redis_commands_per_call": per_call("redis_commands_per_call"),
        "rounds": runs,
    }


def page_latency(stack: Stack, cfg: Config, tokens: list[str]) -> dict[str, Any]:
    """One caller requesting pages of the read workspace, each starting at a random one of ``tokens``."""
    inputs = {"page_tokens": tokens}
    return load(
        stack, stack.real, workload.READ_WORKSPACE, "ListJobs", inputs, cfg.page_duration, 1, cfg.warmup
    )


def prepare(stack: Stack, cfg: Config, other_keys: int) -> dict[str, Any]:
    """The read workspace's jobs and page tokens, then ``other_keys`` keys of other workspaces."""
    stack.job_ids = seed_read_workspace(stack, cfg.read_jobs)
    stack.redis.client().set(KEYS.legacy_indexed, "1")
    stack.tokens = page_walk(stack, "", cfg.read_jobs // workload.PAGE_SIZE - 1)
    if any(token_phase(t) != "index" for t in stack.tokens[1:]):
        raise RuntimeError("a page measured as indexed is not in the index phase")
    progress(f"seeding other workspaces: {other_keys:,} keys in the Redis on port {stack.redis.port}")
    begin = time.perf_counter()
    seed_other_jobs(stack.redis.client(), 0, other_keys)
    return {"other_keys": other_keys, "seed_seconds": round(time.perf_counter() - begin, 1)}


def measure_pages(
    stacks: dict[int, Stack], seeding: dict[int, dict[str, Any]], cfg: Config
) -> list[dict[str, Any]]:
    """Indexed-phase page latency with each count of other-workspace keys present, each count in a Redis of
    its own, measured in turns so that a change in the machine's load falls on every count alike."""
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in stacks}
    progress(
        f"measuring indexed-phase page latency: {cfg.page_rounds} turns of {cfg.page_duration} s per count"
    )
    for _ in range(cfg.page_rounds):
        for count, stack in stacks.items():
            runs[count].append(page_latency(stack, cfg, stack.tokens))
    return [
        {**seeding[count], "keys": key_census(stack.redis), **combine(runs[count])}
        for count, stack in stacks.items()
    ]


def measure_legacy_phase(stack: Stack, cfg: Config, index_tokens: list[str]) -> dict[str, Any]:
    """Pages past the end of the index while legacy records may be unindexed (marker absent)."""
    progress("measuring legacy-phase pages (legacy-indexed marker removed)")
    stack.redis.client().delete(KEYS.legacy_indexed)
    # Whether a listing has a legacy phase is fixed by its first page: walk again from the start.
    walk = page_walk(stack, "", len(index_tokens) + 1 + cfg.legacy_pages)
    legacy_tokens = [t for t in walk if token_phase(t) == "legacy"]
    census = key_census(stack.redis)
    result: dict[str, Any] = {"keys": census, "pages_available": len(legacy_tokens)}
    if legacy_tokens:
        result.update(page_latency(stack, cfg, legacy_tokens))
    per_page = job_listing.LEGACY_SCAN_COUNT * job_listing.LEGACY_SCANS_PER_PAGE
    result["scan_budget_keys_per_page"] = per_page
    result["pages_to_cover_keyspace"] = -(-census["total"] // per_page)
    stack.redis.client().set(KEYS.legacy_indexed, "1")
    return result


def run(cfg: Config) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()
    *smaller, largest = cfg.other_keys
    with running_stack(cfg.stage) as main, ExitStack() as others:
        progress(
            f"redis on port {main.redis.port}, relay serve jobs on {main.real.target}, "
            f"no-op on {main.noop.target if main.noop else '-'}"
        )
        # The largest count lives beside the throughput measurements; each smaller one has its own stack.
        stacks = {count: others.enter_context(running_stack(cfg.stage, with_noop=False)) for count in smaller}
        stacks[largest] = main
        seeding = {count: prepare(stack, cfg, count) for count, stack in stacks.items()}
        pages = measure_pages(stacks, seeding, cfg)
        others.close()  # the smaller counts' stacks are done: free their CPU and memory
        legacy = measure_legacy_phase(main, cfg, main.tokens)
        throughput = measure_throughput(main, cfg, main.job_ids, main.tokens)
        final_keys = key_census(main.redis)
    first, last = pages[0], pages[-1]
    return {
        "benchmark": "jobs",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": {
            "duration_s": cfg.duration,
            "concurrency": cfg.concurrency,
            "rounds": cfg.rounds,
            "other_keys": list(cfg.other_keys),
            "read_workspace_jobs": cfg.read_jobs,
            "page_rounds": cfg.page_rounds,
            "page_duration_s": cfg.page_duration,
            "page_size": workload.PAGE_SIZE,
            "stage": f"{cfg.stage} (from the flags {STAGE_FLAGS[cfg.stage]})",
        },
        "environment": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "grpcio": grpc.__version__,
        },
        "throughput": throughput,
        "list_pages": pages,
        "list_page_ratio": {
            "from_keys": first["other_keys"],
            "to_keys": last["other_keys"],
            "p50": _ratio(last["p50_ms"], first["p50_ms"]),
            "p99": _ratio(last["p99_ms"], first["p99_ms"]),
            "redis_cpu": _ratio(last["redis_cpu_us_per_call"], first["redis_cpu_us_per_call"]),
        },
        "legacy_phase": legacy,
        "final_keys": final_keys,
    }


def progress(message: str) -> None:
    print(f"[bench_jobs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


# --- report --------------------------------------------------------------------------------------
def _aim(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(results: dict[str, Any]) -> str:
    cfg, env = results["config"], results["environment"]
    lines = [
        "## JobService benchmark",
        "",
        f"Run {results['started_at']} ({results['seconds']} s); {env['cpus']} CPUs shared with other work "
        f"(load average {env['loadavg_before'][0]} before, {env['loadavg_after'][0]} after); "
        f"stage {cfg['stage'].split()[0]}. Real and no-op are measured one after the other in the same "
        "run, so their ratio holds even on a busy machine; absolute figures do not.",
        "",
        f"### Throughput: real service vs no-op handler ({cfg['concurrency']} callers, "
        f"{cfg['rounds']} x {cfg['duration_s']} s each, alternating which goes first)",
        "",
        "| RPC | real calls/s | no-op calls/s | real/no-op | real p50 ms | real p99 ms "
        "| no-op p50 ms | no-op p99 ms | server CPU µs/call real / no-op | Redis CPU µs/call "
        "| Redis cmds/call | aim |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["throughput"]:
        r, n = row["real"], row["noop"]
        errors = {**r["errors"], **{f"noop {k}": v for k, v in n["errors"].items()}}
        note = f" (errors {errors})" if errors else ""
        lines.append(
            f"| {row['rpc']} | {r['throughput']:.0f} | {n['throughput']:.0f} | {row['ratio']:.2f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {n['p50_ms']:.2f} | {n['p99_ms']:.2f} "
            f"| {r['server_cpu_us_per_call']:.0f} / {n['server_cpu_us_per_call']:.0f} "
            f"| {r['redis_cpu_us_per_call']:.0f} | {r['redis_commands_per_call']:.1f} "
            f"| >= {THROUGHPUT_AIM[row['rpc']]}: {_aim(row['ratio'] >= THROUGHPUT_AIM[row['rpc']])}{note} |"
        )
    ratio = results["list_page_ratio"]
    lines += [
        "",
        "The no-op handler runs on the same server stack (relay.server.grpc_server: interceptors, access "
        "log, api-key auth, error mapping) and returns a canned response of the same size; ListJobs "
        "compares a real page of 50 records with a canned one. Server CPU is the serving process's CPU "
        "time over the measured window per call; Redis commands count those run inside Lua scripts.",
        "",
        f"### ListJobs page latency (page of {cfg['page_size']}, workspace of {cfg['read_workspace_jobs']:,} "
        "jobs, indexed phase: legacy-indexed marker set, one caller)",
        "",
        f"Each key count has a Redis and a `relay serve jobs` of its own; the counts are measured in turns "
        f"({cfg['page_rounds']} x {cfg['page_duration_s']} s each), so a change in the machine's load "
        "falls on both alike. Redis CPU per page is the least load-sensitive figure.",
        "",
        "| other-workspace keys | keys in Redis | legacy keys | p50 ms | p99 ms | pages/s "
        "| Redis cmds/page | Redis CPU µs/page | server CPU µs/page |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["list_pages"]:
        lines.append(
            f"| {row['other_keys']:,} | {row['keys']['total']:,} | {row['keys']['legacy']:,} "
            f"| {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['throughput']:.0f} "
            f"| {row['redis_commands_per_call']:.1f} | {row['redis_cpu_us_per_call']:.0f} "
            f"| {row['server_cpu_us_per_call']:.0f} |"
        )
    lines += [
        "",
        f"Ratio {ratio['to_keys']:,} vs {ratio['from_keys']:,} keys: p50 {ratio['p50']:.2f}, "
        f"p99 {ratio['p99']:.2f} (aim < {PAGE_RATIO_AIM}: {_aim(ratio['p50'] < PAGE_RATIO_AIM)}); "
        f"Redis CPU per page {ratio['redis_cpu']:.2f}.",
        "",
    ]
    legacy = results["legacy_phase"]
    if "p50_ms" in legacy:
        lines += [
            f"### ListJobs legacy phase (marker absent, {legacy['keys']['total']:,} keys in Redis, "
            f"{legacy['keys']['legacy']:,} legacy)",
            "",
            f"Each page past the index SCANs at most {legacy['scan_budget_keys_per_page']:,} keys "
            f"(bounded, whatever the keyspace); a full pass takes about "
            f"{legacy['pages_to_cover_keyspace']:,} pages. Over {legacy['pages_available']} distinct "
            f"legacy-phase page(s): p50 {legacy['p50_ms']:.1f} ms, p99 {legacy['p99_ms']:.1f} ms, "
            f"{legacy['redis_commands_per_call']:.0f} Redis commands and "
            f"{legacy['server_cpu_us_per_call'] / 1000:.1f} ms of server CPU per page.",
            "",
        ]
    else:
        lines += ["### ListJobs legacy phase", "", "No legacy-phase page was reached.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="JobService benchmark: real vs no-op, listing at scale.")
    parser.add_argument("--duration", type=float, help="seconds per throughput measurement (10)")
    parser.add_argument("--concurrency", type=int, help="concurrent callers (16)")
    parser.add_argument("--rounds", type=int, help="real/no-op pairs per RPC, alternating order (2)")
    parser.add_argument("--other-keys", help="other-workspace key counts, comma separated (10000,1000000)")
    parser.add_argument(
        "--stage", default="READ_NEW", choices=sorted(STAGE_FLAGS), help="the stage the service runs in"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds, tiny key counts")
    parser.add_argument(
        "--json-out", help="where the JSON goes (bench/results/jobs.json; --quick: jobs-quick.json)"
    )
    cfg = Config.from_args(parser.parse_args(argv))
    results = run(cfg)
    cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
