"""Backfill benchmark: Relay's controller against the best hand-written batch copy, side by side.

    .venv/bin/python -m bench.bench_backfill                # 1,000,000 legacy records (a few minutes)
    .venv/bin/python -m bench.bench_backfill --keys 100000  # a quick check

In one run, against one private redis-server started here (no persistence):

(a) the hand-written ceiling: SCAN batches, each copied by one Lua script written below, which does the
    same work as the controller's copy (copy when the new key is missing or older, index entry) but
    builds key names inside Lua (fine on one Redis, wrong on a Redis Cluster) and keeps no checkpoint,
    counts or controls. The driver overlaps the next SCAN with the current copy, as the controller does.
(b) Relay: ``relay serve controller`` in a subprocess, StartBackfill unthrottled over gRPC, on the same
    data seeded afresh, twice: with the script budget (``--budget-ms``, RELAY_BACKFILL_SCRIPT_BUDGET_MS,
    default 2 ms: each COPY_BATCH sized to run within it) and without (0: batches of ``--batch`` keys).
    Its peak memory is the subprocess' VmHWM; its RSS is sampled during the run.
(c) JobService p50/p99 of GetJob under a light open-loop load (``--load-rps``) from this process against
    ``relay serve jobs`` in a subprocess: once with Redis idle, then during a controller backfill without
    and with the budget (of up to 200,000 records; the throughput rounds run without this load).

Besides keys/s it reports the CPU each copy costs per key, in Redis and in the copier's process: on a
shared machine wall-clock rates move with everyone else's load, CPU per key much less. ``--repeat N``
alternates N rounds of both copies and keeps the best of each. The controller's latency brake is off
here (``--latency-ceiling-ms 0``) so both copies run flat out; give it a value to see it act. Then
three throttled runs check the rate limit at 100, 2,000 and 20,000 keys/s.

It prints a markdown table and writes bench/results/backfill.json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import redis as sync_redis
from redis.asyncio import Redis as AsyncRedis

from bench.server_proc import ServerProcess
from harness.ports import free_port
from harness.redis_server import RedisServer, start_redis_server
from relay.controller.backfill.batch import BatchCopier, BatchReader
from relay.core import codec
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import job_service_pb2 as jpb
from relay.v1 import job_service_pb2_grpc, migration_controller_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results" / "backfill.json"
WORKSPACES = 50
SEED_BATCH = 5000
ADMIN_KEY = "bench-admin-" + os.urandom(8).hex()
READER_KEY = "bench-reader-" + os.urandom(8).hex()
LOAD_WORKSPACE = "ws-000"
#: Legacy records of the backfill that JobService latency is measured beside.
LATENCY_KEYS = 200_000

# Benchmark-only mass insert of old-system records into a private Redis (keys built inside the script).
SEED_LEGACY = """
local legacy_prefix = ARGV[1]
local first = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local workspaces = tonumber(ARGV[4])
local base = ARGV[5]             -- enqueued_at without its micros: '2025-10-18T12:00:00.'
local params = ARGV[6]
for n = first, first + count - 1 do
  local job_id = string.format('%08x-0000-4000-8000-%012x', n % workspaces, n)
  local status = (n % 3 == 0) and 'pending' or 'completed'
  redis.call('HSET', legacy_prefix .. job_id, 'job_id', job_id, 'status', status,
    'action_provider', 'openai', 'action_name', 'chat.completions', 'params', params,
    'workspace_id', string.format('ws-%03d', n % workspaces), 'actor_id', 'seed',
    'result', (status == 'completed') and '{"ok":true}' or '', 'enqueued_at',
    base .. string.format('%06d+00:00', n % 1000000))
end
return count
"""

# The hand-written ceiling. KEYS is empty: every key is built here from ARGV parts (single Redis only):
# new key = new_prefix .. workspace .. new_infix .. job_id, index = index_prefix .. workspace .. index_suffix.
HAND_COPY = """
local new_prefix, new_infix, index_prefix, index_suffix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function micros(iso)
  local y, mo, d, h, mi, s, frac = string.match(iso or '', '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.?(%d*)')
  if not y then return 0 end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
  local secs = days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
  return secs * 1000000 + tonumber(string.sub(frac .. '000000', 1, 6))
end
local copied = 0
for i = 5, #ARGV do
  local legacy = ARGV[i]
  local r = redis.pcall('HMGET', legacy, 'workspace_id', 'enqueued_at', 'rev')
  local ws = (not r.err) and r[1]
  if ws and string.match(ws, '^[a-z0-9][a-z0-9_-]*$') and #ws <= 32 then
    local job_id = string.sub(legacy, 9)
    local new = new_prefix .. ws .. new_infix .. job_id
    local theirs = redis.call('HGET', new, 'rev')
    local exists = theirs or redis.call('EXISTS', new) == 1
    local mine = tonumber(r[3] or '0') or 0
    if not exists or (tonumber(theirs) or 0) < mine then
      redis.call('COPY', legacy, new, 'REPLACE')  -- the whole hash at once, as Relay's copy does
      copied = copied + 1
    end
    redis.call('ZADD', index_prefix .. ws .. index_suffix, 0, string.format('%016d|%s', micros(r[2]), job_id))
  end
end
return copied
"""


def hand_copy_args() -> list[str]:
    """HAND_COPY's four key parts, from the key layout (whatever hash tags it uses)."""
    marker = "\x00"
    new_prefix, new_infix = KEYS.new_job(marker, "").split(marker)
    index_prefix, index_suffix = KEYS.job_index(marker).split(marker)
    return [new_prefix, new_infix, index_prefix, index_suffix]


@dataclass
class Run:
    name: str
    keys: int
    seconds: float
    keys_per_second: float
    extra: dict[str, object] = field(default_factory=dict)


def seed(client: sync_redis.Redis, count: int) -> float:
    started = time.monotonic()
    script = client.register_script(SEED_LEGACY)
    base = "2025-10-18T12:00:00."
    for first in range(0, count, SEED_BATCH):
        script(args=[KEYS.legacy_job(""), first, min(SEED_BATCH, count - first), WORKSPACES, base, '{"p":1}'])
    return time.monotonic() - started


def note_costs(run: Run, redis_cpu_seconds: float, copier_cpu_seconds: float) -> None:
    """Record on ``run`` the CPU Redis and its copier spent per key, and the load it ran at."""
    run.extra |= {
        "redis_cpu_us_per_key": redis_cpu_seconds / run.keys * 1e6,
        "copier_cpu_us_per_key": copier_cpu_seconds / run.keys * 1e6,
        "load_average_1m": os.getloadavg()[0],
    }


def hand_written_copy(client: sync_redis.Redis, batch: int) -> Run:
    """SCAN steps of about ``batch`` legacy keys, each copied by HAND_COPY; the next SCAN overlaps it."""
    script = client.register_script(HAND_COPY)
    scanner = sync_redis.Redis(connection_pool=client.connection_pool)
    pool = ThreadPoolExecutor(1)
    ratio, count = 1.0, batch
    started = time.monotonic()
    cursor, keys = scanner.scan(0, match=LEGACY_JOB_PATTERN, count=count)
    scanned = copied = 0
    while True:
        ahead = pool.submit(scanner.scan, cursor, match=LEGACY_JOB_PATTERN, count=count) if cursor else None
        if keys:
            copied += script(args=[*hand_copy_args(), *keys])
            scanned += len(keys)
        if ahead is None:
            break
        returned = len(keys)
        cursor, keys = ahead.result()
        ratio = min(1.0, 0.5 * ratio + 0.5 * max(returned / count, 0.01))
        count = max(1, min(int(batch / ratio), batch * 20))
    seconds = time.monotonic() - started
    pool.shutdown()
    return Run("hand-written Lua over SCAN", scanned, seconds, scanned / seconds, {"copied": copied})


# --- subprocesses ------------------------------------------------------------------------------
class Server(ServerProcess):
    def status(self, field_name: str) -> int:
        """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
        return 0


def start_server(
    role: str, redis_url: str, keys_file: Path, workdir: Path, extra_env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    log = workdir / f"{role}.log"
    env = {
        **os.environ,
        **(extra_env or {}),
        "REDIS_URL": redis_url,
        "RELAY_LISTEN": f"127.0.0.1:{port}",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_API_KEYS_FILE": str(keys_file),
        "RELAY_LOG_LEVEL": "WARNING",
    }
    argv = [
        sys.executable,
        "-c",
        "import sys; from relay.server import main; main(sys.argv[1:])",
        "serve",
        role,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"relay serve {role}", f"127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(server.target) as channel:
        while True:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return server
            except grpc.FutureTimeoutError:
                if process.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(
                        f"relay serve {role} did not start: {log.read_text()[-2000:]}"
                    ) from None


# --- JobService latency under a light load -----------------------------------------------------
async def measure_latency(
    target: str, job_ids: list[str], rps: float, until: asyncio.Event | float
) -> dict[str, float]:
    """Open-loop GetJob calls at ``rps`` until ``until`` (an event, or seconds); p50/p99 in ms."""
    latencies: list[float] = []
    errors = 0
    md = (("authorization", f"Bearer {READER_KEY}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        pending: set[asyncio.Task[None]] = set()

        async def one(job_id: str) -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                await stub.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=md, timeout=10)
                latencies.append((time.perf_counter() - started) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1

        started = time.monotonic()
        n = 0
        while True:
            if isinstance(until, asyncio.Event) and until.is_set():
                break
            if not isinstance(until, asyncio.Event) and time.monotonic() - started >= until:
                break
            task = asyncio.create_task(one(random.choice(job_ids)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            await asyncio.sleep(max(0.0, started + n / rps - time.monotonic()))
        await asyncio.gather(*pending)
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": statistics.median(latencies) if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0,
    }


async def controller_backfill(
    controller: Server,
    jobs: Server | None,
    job_ids: list[str],
    batch: int,
    rps: float,
    rate_limit: float = 0.0,
) -> tuple[Run, dict[str, float] | None]:
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            samples.append(controller.status("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    rss_before = controller.status("VmRSS")
    sampler.start()
    done = asyncio.Event()
    load = asyncio.create_task(measure_latency(jobs.target, job_ids, rps, done)) if jobs else None
    events: list[bpb.BackfillEvent] = []
    try:
        async with grpc.aio.insecure_channel(controller.target) as channel:
            stub = migration_controller_pb2_grpc.MigrationControllerStub(channel)
            md = (("authorization", f"Bearer {ADMIN_KEY}"),)
            request = bpb.StartBackfillRequest(batch_size=batch, rate_limit=rate_limit)
            async for event in stub.StartBackfill(request, metadata=md):
                events.append(event)
    finally:
        done.set()
        sampling.set()
        sampler.join()
    latency = await load if load else None
    final = events[-1]
    if final.kind != bpb.BACKFILL_EVENT_KIND_COMPLETED:
        raise RuntimeError(f"the backfill did not complete: {final}")
    seconds = (final.time.ToNanoseconds() - events[0].time.ToNanoseconds()) / 1e9
    p = final.backfill.progress
    run = Run(
        "Relay controller (gRPC StartBackfill)",
        p.scanned,
        seconds,
        p.scanned / seconds,
        {
            "migrated": p.migrated,
            "skipped": p.skipped_exists + p.skipped_newer + p.skipped_invalid + p.skipped_vanished,
            "errors": p.errors,
            "events": len(events),
            "throttled_events": sum(e.kind == bpb.BACKFILL_EVENT_KIND_THROTTLED for e in events),
            "rss_before_mb": rss_before / 2**20,
            "rss_max_sampled_mb": max(samples, default=0) / 2**20,
            "rss_after_mb": controller.status("VmRSS") / 2**20,
            "peak_rss_vmhwm_mb": controller.status("VmHWM") / 2**20,
        },
    )
    return run, latency


async def rate_accuracy(controller: Server, rates: list[float], keys: int) -> list[dict[str, float]]:
    """Throttled runs of about three seconds each (max_keys = 3 s of keys): configured vs measured rate."""
    out = []
    md = (("authorization", f"Bearer {ADMIN_KEY}"),)
    async with grpc.aio.insecure_channel(controller.target) as channel:
        stub = migration_controller_pb2_grpc.MigrationControllerStub(channel)
        for rate in rates:
            request = bpb.StartBackfillRequest(rate_limit=rate, max_keys=min(int(rate * 3), keys))
            events = [event async for event in stub.StartBackfill(request, metadata=md)]
            seconds = (events[-1].time.ToNanoseconds() - events[0].time.ToNanoseconds()) / 1e9
            scanned = events[-1].backfill.progress.scanned
            out.append({"rate": rate, "keys": scanned, "seconds": seconds, "measured": scanned / seconds})
    return out


async def redis_cost_per_key(redis: RedisServer, batches: int = 25, batch: int = 1000) -> dict[str, float]:
    """Redis time per key of each copy's scripts (INFO commandstats, the least disturbed of ``batches``
    calls), on equal data in databases 1 and 2, alternating: what each copy costs Redis, whatever else
    runs on the machine."""
    hand_client = sync_redis.Redis(port=redis.port, db=1)
    stats = sync_redis.Redis(port=redis.port, db=1)
    relay_client = AsyncRedis(port=redis.port, db=2)
    for db in (1, 2):
        seed(sync_redis.Redis(port=redis.port, db=db), batches * batch)

    def usec(*names: str) -> int:
        table = stats.info("commandstats")
        return sum(int(table.get(f"cmdstat_{n}", {}).get("usec", 0)) for n in names)

    hand = hand_client.register_script(HAND_COPY)
    reader, copier = BatchReader(relay_client), BatchCopier(relay_client)
    await relay_client.hset(KEYS.backfill("bf-cost"), mapping={"token": "t", "batches": "0"})
    hand_cursor, relay_cursor = 0, "0"
    hand_cost, read_cost, copy_cost = [], [], []
    for n in range(batches):
        hand_cursor, keys = hand_client.scan(hand_cursor, match=LEGACY_JOB_PATTERN, count=batch)
        before = usec("evalsha", "eval")
        hand(args=[*hand_copy_args(), *keys])
        hand_cost.append((usec("evalsha", "eval") - before) / max(len(keys), 1))
        before = usec("evalsha_ro", "eval_ro")
        step = await reader.read(relay_cursor, batch, frozenset(), None)
        read_cost.append((usec("evalsha_ro", "eval_ro") - before) / max(len(step.items), 1))
        before = usec("evalsha", "eval")
        reply = await copier.copy(step, "bf-cost", "t", n, {"cursor": step.cursor_to})
        if reply.status != "OK":
            raise RuntimeError(f"COPY_BATCH answered {reply.status}")
        copy_cost.append((usec("evalsha", "eval") - before) / max(len(step.items), 1))
        relay_cursor = step.cursor_to
    await relay_client.aclose()
    for db in (1, 2):
        sync_redis.Redis(port=redis.port, db=db).flushdb()
    return {
        "hand_copy_us_per_key": min(hand_cost),
        "relay_read_us_per_key": min(read_cost),
        "relay_copy_us_per_key": min(copy_cost),
        "relay_over_hand": (min(read_cost) + min(copy_cost)) / min(hand_cost),
    }


def check_copies(client: sync_redis.Redis, expected: int) -> None:
    copies = sum(1 for _ in client.scan_iter(match="ai:job:*", count=5000))
    if copies != expected:
        raise RuntimeError(f"expected {expected} new-layout records, found {copies}")
    job_id = "00000007-0000-4000-8000-000000000007"
    enqueued = client.hget(KEYS.legacy_job(job_id), "enqueued_at").decode()
    member = codec.index_member(job_id, enqueued)
    if client.zscore(KEYS.job_index("ws-007"), member) is None:
        raise RuntimeError(f"index entry {member} missing: the copies' index members are wrong")


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-backfill-"))
    keys_file = workdir / "keys.json"
    keys_file.write_text(
        json.dumps(
            [
                {"key": ADMIN_KEY, "scopes": ["migration:admin"]},
                {"key": READER_KEY, "workspace_id": LOAD_WORKSPACE, "scopes": ["actions:preview"]},
            ]
        )
    )
    redis: RedisServer = start_redis_server(prefix="relay-bench-redis-")
    client = redis.client()
    servers: list[Server] = []
    hands: list[Run] = []
    relays: list[Run] = []
    unbudgeted: list[Run] = []
    env = {
        "RELAY_BACKFILL_LATENCY_CEILING_MS": str(args.latency_ceiling_ms),
        "RELAY_BACKFILL_SCRIPT_BUDGET_MS": str(args.budget_ms),
    }
    try:
        jobs = None if args.skip_latency else start_server("jobs", redis.url, keys_file, workdir)
        servers += [jobs] if jobs else []
        controller = start_server("controller", redis.url, keys_file, workdir, env)
        servers.append(controller)
        no_budget_env = env | {"RELAY_BACKFILL_SCRIPT_BUDGET_MS": "0"}
        (workdir / "nb").mkdir()
        no_budget = start_server("controller", redis.url, keys_file, workdir / "nb", no_budget_env)
        servers.append(no_budget)
        load_ids = [f"{0:08x}-0000-4000-8000-{n:012x}" for n in range(0, min(args.keys, 100_000), WORKSPACES)]
        for round_number in range(1, args.repeat + 1):
            print(f"round {round_number}: seeding {args.keys:,} legacy records ...", flush=True)
            client.flushall()
            seed(client, args.keys)
            redis_cpu, own_cpu = redis.cpu_seconds(), time.process_time()
            hand = hand_written_copy(client, args.batch)
            note_costs(hand, redis.cpu_seconds() - redis_cpu, time.process_time() - own_cpu)
            hands.append(hand)
            check_copies(client, args.keys)
            print(f"  hand-written {hand.keys_per_second:,.0f} keys/s", flush=True)
            # Alternating which goes first, so neither always runs in the other's wake.
            order = [
                (no_budget, unbudgeted, "no budget"),
                (controller, relays, f"budget {args.budget_ms:g} ms"),
            ]
            for server, runs, label in order if round_number % 2 else order[::-1]:
                client.flushall()
                seed(client, args.keys)
                redis_cpu, controller_cpu = redis.cpu_seconds(), server.cpu_seconds()
                relay_run, _ = await controller_backfill(server, None, load_ids, args.batch, args.load_rps)
                relay_run.name = f"Relay controller, {label}"
                note_costs(relay_run, redis.cpu_seconds() - redis_cpu, server.cpu_seconds() - controller_cpu)
                runs.append(relay_run)
                check_copies(client, args.keys)
                print(f"  Relay, {label}: {relay_run.keys_per_second:,.0f} keys/s", flush=True)
        idle = latency = latency_no_budget = None
        if jobs is not None:
            # Apart from the throughput rounds, which run alone: the load costs CPU on a 2-core machine.
            latency_keys = min(args.keys, LATENCY_KEYS)
            print(
                f"JobService latency, Redis idle, then during a backfill of {latency_keys:,} ...", flush=True
            )
            client.flushall()
            seed(client, latency_keys)
            await measure_latency(jobs.target, load_ids, args.load_rps, 1.0)  # warm-up
            idle = await measure_latency(jobs.target, load_ids, args.load_rps, args.latency_seconds)
            _, latency_no_budget = await controller_backfill(
                no_budget, jobs, load_ids, args.batch, args.load_rps, args.latency_backfill_rps
            )
            latency_no_budget["backfill_rate_limit"] = args.latency_backfill_rps
            client.flushall()
            seed(client, latency_keys)
            _, latency = await controller_backfill(
                controller, jobs, load_ids, args.batch, args.load_rps, args.latency_backfill_rps
            )
            latency["backfill_rate_limit"] = args.latency_backfill_rps
        print("rate limit accuracy ...", flush=True)
        rates = await rate_accuracy(controller, [100.0, 2000.0, 20000.0], args.keys)
        print("Redis cost per key ...", flush=True)
        cost = await redis_cost_per_key(redis)
    finally:
        for server in servers:
            server.stop()
        client.close()
        redis.stop()
    best_hand = max(hands, key=lambda r: r.keys_per_second)
    best_relay = max(relays, key=lambda r: r.keys_per_second)
    best_unbudgeted = max(unbudgeted, key=lambda r: r.keys_per_second)
    return {
        "time": datetime.now(UTC).isoformat(),
        "keys": args.keys,
        "batch": args.batch,
        "repeat": args.repeat,
        "latency_ceiling_ms": args.latency_ceiling_ms,
        "budget_ms": args.budget_ms,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "hand_written": asdict(best_hand),
        "relay": asdict(best_relay),
        "relay_no_budget": asdict(best_unbudgeted),
        "ratio": best_relay.keys_per_second / best_hand.keys_per_second,
        "ratio_no_budget": best_unbudgeted.keys_per_second / best_hand.keys_per_second,
        "budget_price": 1 - best_relay.keys_per_second / best_unbudgeted.keys_per_second,
        "all_rounds": {
            "hand_written": [asdict(r) for r in hands],
            "relay": [asdict(r) for r in relays],
            "relay_no_budget": [asdict(r) for r in unbudgeted],
        },
        "jobservice_idle": idle,
        "jobservice_during_backfill": latency,
        "jobservice_during_backfill_no_budget": latency_no_budget,
        "rate_accuracy": rates,
        "redis_cost": cost,
    }


def report(result: dict[str, object]) -> str:
    hand, relay, unbudgeted = result["hand_written"], result["relay"], result["relay_no_budget"]
    assert isinstance(hand, dict) and isinstance(relay, dict) and isinstance(unbudgeted, dict)
    extra = relay["extra"]
    lines = [
        f"Backfill of {result['keys']:,} legacy records, batch {result['batch']}, {result['cpus']} CPUs, "
        f"best of {result['repeat']} round(s), latency brake {result['latency_ceiling_ms'] or 'off'}, "
        f"script budget {result['budget_ms']:g} ms",
        "",
        "| | keys/s | seconds | Redis CPU µs/key | copier CPU µs/key | load avg |",
        "|---|---:|---:|---:|---:|---:|",
        _row(hand),
        _row(unbudgeted),
        _row(relay),
        f"| ratio Relay (no budget) / hand-written | {result['ratio_no_budget']:.2f} | | | | |",
        f"| ratio Relay (budget) / hand-written | {result['ratio']:.2f} | | | | |",
        f"| price of the budget (1 - budget / no budget) | {result['budget_price']:.0%} | | | | |",
        "",
        f"Controller memory: RSS {extra['rss_before_mb']:.0f} MB before, "
        f"{extra['rss_max_sampled_mb']:.0f} MB at most while running, {extra['rss_after_mb']:.0f} MB after; "
        f"peak (VmHWM) {extra['peak_rss_vmhwm_mb']:.0f} MB. Throttled events: {extra['throttled_events']}.",
    ]
    cost = result["redis_cost"]
    assert isinstance(cost, dict)
    lines += [
        "",
        f"Redis time per key (least disturbed of 25 calls of 1,000 keys): hand-written copy "
        f"{cost['hand_copy_us_per_key']:.1f} µs; Relay read {cost['relay_read_us_per_key']:.1f} µs + copy "
        f"{cost['relay_copy_us_per_key']:.1f} µs = {cost['relay_over_hand']:.2f}x the hand-written copy.",
    ]
    lines += ["", "| rate limit, keys/s | keys | measured keys/s | error |", "|---:|---:|---:|---:|"]
    for r in result["rate_accuracy"]:  # type: ignore[union-attr]
        error = r["measured"] / r["rate"] - 1
        lines.append(f"| {r['rate']:,.0f} | {r['keys']:,} | {r['measured']:,.0f} | {error:+.1%} |")
    idle, during = result["jobservice_idle"], result["jobservice_during_backfill"]
    before = result.get("jobservice_during_backfill_no_budget")
    if isinstance(idle, dict) and isinstance(during, dict) and isinstance(before, dict):
        lines += [
            "",
            "| JobService GetJob | requests | p50 ms | p99 ms | p99 vs idle |",
            "|---|---:|---:|---:|---:|",
            f"| Redis idle | {idle['requests']} | {idle['p50_ms']:.2f} | {idle['p99_ms']:.2f} | 1.00 |",
        ]
        for label, run in (("no budget", before), (f"budget {result['budget_ms']:g} ms", during)):
            lines.append(
                f"| during the backfill ({_rate(run['backfill_rate_limit'])}, {label}) | {run['requests']} "
                f"| {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['p99_ms'] / idle['p99_ms']:.2f} |"
            )
    return "\n".join(lines)


def _rate(rate: object) -> str:
    return f"{rate:,.0f} keys/s" if isinstance(rate, int | float) and rate else "unthrottled"


def _row(run: dict[str, object]) -> str:
    x = run["extra"]
    assert isinstance(x, dict)
    return (
        f"| {run['name']} | {run['keys_per_second']:,.0f} | {run['seconds']:.1f} | "
        f"{x['redis_cpu_us_per_key']:.1f} | {x['copier_cpu_us_per_key']:.1f} | {x['load_average_1m']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--load-rps", type=float, default=100.0, help="GetJob calls per second (light load)")
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--latency-backfill-rps",
        type=float,
        default=0.0,
        help="the rate limit of the backfill JobService latency is measured beside (default unthrottled)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of both copies; the best of each counts"
    )
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=2.0,
        help="the script budget of the budgeted controller (RELAY_BACKFILL_SCRIPT_BUDGET_MS); "
        "the other runs without one",
    )
    parser.add_argument(
        "--latency-ceiling-ms",
        type=float,
        default=0.0,
        help="the controller's latency brake (RELAY_BACKFILL_LATENCY_CEILING_MS); 0, the default here, "
        "turns it off so that both copies run flat out",
    )
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(report(result))
    print(f"\nresults: {RESULTS}")


if __name__ == "__main__":
    main()
