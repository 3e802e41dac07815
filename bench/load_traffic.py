"""The traffic of the load and chaos runs: a process of its own that drives JobService over gRPC with a
realistic mix for a fixed time and records every acknowledged write.

``python -m bench.load_traffic CONFIG.json`` (written by bench.load / bench.chaos). Callers of many
workspaces Execute (with and without client_request_id, now and then replaying one), GetJob and page
through ListJobs; workers ClaimJob and report running, completed or failed. Each acknowledgement updates
a model of what the job must look like; reads are checked live against it (never stale, never another
workspace's job). A call whose outcome is unknown (UNAVAILABLE, DEADLINE_EXCEEDED) is retried where that
is safe (Execute with a client_request_id, UpdateJobStatus) and otherwise remembered as "may have
happened", so the final check knows exactly what is allowed.

The result file holds the latency and error figures per RPC, a per-second series, the model and every
violation seen.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from bench.relay_cluster import KeyBook, bearer
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc as pb_grpc

STATUS_NAME = {
    pb.JOB_STATUS_PENDING: "pending",
    pb.JOB_STATUS_RUNNING: "running",
    pb.JOB_STATUS_COMPLETED: "completed",
    pb.JOB_STATUS_FAILED: "failed",
}
STATUS_OF_NAME = {v: k for k, v in STATUS_NAME.items()}
RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2}
TERMINAL = ("completed", "failed")
#: The outcome of a call failing with these is unknown: it may or may not have happened.
UNKNOWN_OUTCOME = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: How long a retried write keeps being retried before it is left as "may have happened".
RETRY_SECONDS = 45.0
#: The callers' mix; the rest is ListJobs. Workers claim and finish jobs beside them.
EXECUTE_SHARE = 0.2
GET_SHARE = 0.5
#: After the callers stop, workers keep draining the queues until the run says stop (at most this long).
DRAIN_SECONDS = 600.0
VIOLATION_SAMPLES = 20


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def canonical_value(value: Any) -> Any:
    """What a JSON value looks like once it went through a protobuf Value (numbers become floats)."""
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return json_format.MessageToDict(message)


@dataclass(slots=True)
class Expect:
    """What one job must look like, from the acknowledgements so far."""

    workspace_id: str
    status: str
    #: (provider, action, actor_id, params) for jobs this load created; None for seeded ones.
    content: tuple[str, str, str, Any] | None = None
    result: Any = None
    error: str | None = None
    acked_at: float = 0.0
    #: Statuses sent after the last acknowledgement whose outcome is unknown.
    maybe: list[str] = field(default_factory=list)
    #: The last acknowledgement was inferred (a retry found the job already finished).
    inferred: bool = False

    def to_json(self, job_id: str) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "workspace_id": self.workspace_id,
            "status": self.status,
            "content": list(self.content) if self.content else None,
            "result": self.result,
            "error": self.error,
            "maybe": self.maybe,
            "inferred": self.inferred,
        }


class Recorder:
    """Latencies and outcomes per RPC, in total and per second of wall time."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.codes: dict[str, Counter[str]] = defaultdict(Counter)
        self.per_second: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.errors_per_second: dict[int, Counter[str]] = defaultdict(Counter)
        self.unexpected: list[dict[str, Any]] = []
        self.unexpected_count = 0

    def ok(self, rpc: str, began_wall: float, seconds: float) -> None:
        self.latencies[rpc].append(seconds)
        self.codes[rpc]["OK"] += 1
        self.per_second[int(began_wall)][rpc].append(seconds)

    def failed(
        self, rpc: str, began_wall: float, code: grpc.StatusCode, details: str, expected: bool
    ) -> None:
        self.codes[rpc][code.name] += 1
        self.errors_per_second[int(began_wall)][code.name] += 1
        if not expected:
            self.unexpected_count += 1
            if len(self.unexpected) < VIOLATION_SAMPLES:
                self.unexpected.append({"rpc": rpc, "code": code.name, "details": details[:300]})

    def summary(self, seconds: float) -> dict[str, Any]:
        out = {}
        for rpc in sorted(set(self.latencies) | set(self.codes)):
            ordered = sorted(self.latencies[rpc])
            out[rpc] = {
                "calls": sum(self.codes[rpc].values()),
                "ok": len(ordered),
                "throughput": round(len(ordered) / seconds, 1),
                "p50_ms": round(percentile(ordered, 50) * 1000, 2),
                "p99_ms": round(percentile(ordered, 99) * 1000, 2),
                "p999_ms": round(percentile(ordered, 99.9) * 1000, 2),
                "codes": dict(self.codes[rpc]),
            }
        return out

    def series(self) -> list[dict[str, Any]]:
        rows = []
        for second in sorted(set(self.per_second) | set(self.errors_per_second)):
            by_rpc = self.per_second.get(second, {})
            everything = sorted(x for values in by_rpc.values() for x in values)
            rows.append(
                {
                    "t": second,
                    "calls": len(everything),
                    "p50_ms": round(percentile(everything, 50) * 1000, 2),
                    "p99_ms": round(percentile(everything, 99) * 1000, 2),
                    "calls_by_rpc": {rpc: len(v) for rpc, v in by_rpc.items()},
                    "errors": dict(self.errors_per_second.get(second, {})),
                }
            )
        return rows

    def latency_log(self) -> dict[int, dict[str, list[float]]]:
        """Every successful call's latency (ms) by second and RPC, for figures over any stretch of time."""
        return {
            second: {rpc: [round(x * 1000, 2) for x in values] for rpc, values in by_rpc.items()}
            for second, by_rpc in sorted(self.per_second.items())
        }


class Traffic:
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.keys = KeyBook.from_json(config["keys"])
        self.workspaces = sorted(self.keys.workspaces)
        self.rng = random.Random(config.get("seed", 1))
        self.duration = float(config["duration"])
        self.timeout = float(config.get("call_timeout", 5.0))
        self.rec = Recorder()
        self.drain_rec = Recorder()
        self.model: dict[str, Expect] = {}
        self.jobs_of: dict[str, list[str]] = defaultdict(list)
        seeded = json.loads(Path(config["seeded_jobs"]).read_text()) if config.get("seeded_jobs") else {}
        #: job id -> (workspace, status) of seeded legacy jobs, for reads of jobs this load never touched
        self.seeded: dict[str, tuple[str, str]] = {j: (w, s) for j, (w, s) in seeded.items()}
        for job_id, (ws, _) in self.seeded.items():
            self.jobs_of[ws].append(job_id)
        self.unknown_claims = 0
        self.unknown_execute_actions: Counter[str] = Counter()
        self.unresolved_updates = 0
        self.violations: dict[str, int] = Counter()
        self.samples: dict[str, list[Any]] = defaultdict(list)
        self.replays = 0
        self.crid_counter = 0
        self.end = 0.0

    # --- bookkeeping -----------------------------------------------------------------------------
    def violation(self, kind: str, sample: Any) -> None:
        self.violations[kind] += 1
        if len(self.samples[kind]) < VIOLATION_SAMPLES:
            self.samples[kind].append(sample)

    async def timed(
        self, rpc: str, call: Any, *, retried: bool = False
    ) -> tuple[Any, grpc.aio.AioRpcError | None]:
        began_wall, began = time.time(), time.perf_counter()
        # Figures cover the load window; the workers' drain after it only counts against surprises.
        rec = self.rec if began_wall < self.end else self.drain_rec
        try:
            reply = await call()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            expected = code in UNKNOWN_OUTCOME or (retried and code == grpc.StatusCode.FAILED_PRECONDITION)
            rec.failed(rpc, began_wall, code, exc.details() or "", expected)
            return None, exc
        rec.ok(rpc, began_wall, time.perf_counter() - began)
        return reply, None

    def md(self, ws: str) -> tuple[tuple[str, str], ...]:
        return bearer(self.keys.workspaces[ws])

    # --- callers ---------------------------------------------------------------------------------
    async def caller(self, stub: pb_grpc.JobServiceStub, index: int) -> None:
        rng = random.Random(self.rng.random())
        ws = self.workspaces[index % len(self.workspaces)]
        acked_crids: deque[tuple[pb.ExecuteRequest, list[str]]] = deque(maxlen=20)
        tokens: dict[str, str] = {}  # a page token is only good for the workspace that got it
        while time.time() < self.end:
            ws = rng.choice(self.workspaces) if rng.random() < 0.3 else ws
            roll = rng.random()
            if roll < EXECUTE_SHARE:
                await self.execute(stub, ws, rng, acked_crids)
            elif roll < EXECUTE_SHARE + GET_SHARE:
                await self.get_job(stub, ws, rng)
            else:
                token = tokens.get(ws, "") if rng.random() < 0.6 else ""
                tokens[ws] = await self.list_jobs(stub, ws, rng, token)

    async def execute(
        self,
        stub: pb_grpc.JobServiceStub,
        ws: str,
        rng: random.Random,
        acked_crids: deque[tuple[pb.ExecuteRequest, list[str]]],
    ) -> None:
        if acked_crids and rng.random() < 0.05:
            request, job_ids = rng.choice(list(acked_crids))
            reply, error = await self.timed(
                "Execute",
                lambda: stub.Execute(request, metadata=self.md(request.workspace_id), timeout=self.timeout),
            )
            self.replays += 1
            if reply is not None and list(reply.job_ids) != job_ids:
                self.violation("idempotency", {"sent": job_ids, "got": list(reply.job_ids)})
            return
        with_crid = rng.random() < 0.5
        actions = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            self.crid_counter += 1
            params = {
                "prompt": f"load {rng.randrange(10**9)}",
                "temperature": rng.choice([0.0, 0.5, 1.0]),
                "ws": ws,
            }
            action = pb.Action(
                provider=rng.choice(["openai", "anthropic"]),
                action=rng.choice(["chat", "embed"]),
                client_request_id=f"crid-{id(self):x}-{self.crid_counter}" if with_crid else "",
            )
            action.params.update(params)
            actions.append(action)
        # workspace_id names the caller's own workspace: allowed, and it keeps the request self-describing
        request = pb.ExecuteRequest(actions=actions, actor_id=f"actor-{rng.randrange(100)}", workspace_id=ws)
        deadline = time.monotonic() + RETRY_SECONDS
        retried = False
        while True:
            reply, error = await self.timed(
                "Execute",
                lambda: stub.Execute(request, metadata=self.md(ws), timeout=self.timeout),
                retried=retried,
            )
            if reply is not None:
                break
            if error.code() not in UNKNOWN_OUTCOME:
                return
            if not with_crid:
                self.unknown_execute_actions[ws] += len(actions)
                return
            if time.monotonic() > deadline:
                self.unknown_execute_actions[ws] += len(actions)
                return
            retried = True
            await asyncio.sleep(0.2)
        now = time.monotonic()
        if len(reply.job_ids) != len(actions):
            self.violation("execute_reply", {"actions": len(actions), "job_ids": len(reply.job_ids)})
            return
        for job_id, action in zip(reply.job_ids, actions, strict=True):
            if job_id in self.model:
                self.violation("duplicate_job_id", job_id)
                continue
            self.model[job_id] = Expect(
                ws,
                "pending",
                (action.provider, action.action, request.actor_id, json_format.MessageToDict(action.params)),
                acked_at=now,
            )
            self.jobs_of[ws].append(job_id)
        if with_crid:
            acked_crids.append((request, list(reply.job_ids)))

    async def get_job(self, stub: pb_grpc.JobServiceStub, ws: str, rng: random.Random) -> None:
        jobs = self.jobs_of[ws]
        if not jobs:
            return
        job_id = (
            jobs[-1 - int(rng.expovariate(1 / 50)) % len(jobs)] if rng.random() < 0.7 else rng.choice(jobs)
        )
        expect = self.model.get(job_id)
        began = time.monotonic()
        reply, error = await self.timed(
            "GetJob",
            lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self.md(ws), timeout=self.timeout),
        )
        if error is not None:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                self.violation("lost_on_read", {"job_id": job_id, "workspace_id": ws})
            return
        job = reply.job
        if job.workspace_id != ws or job.job_id != job_id:
            self.violation("wrong_job", {"asked": [ws, job_id], "got": [job.workspace_id, job.job_id]})
            return
        # The status acknowledged before this read began is the least it may return.
        if expect is None:
            floor = self.seeded.get(job_id, ("", ""))[1]
        else:
            floor = expect.status if not expect.maybe and expect.acked_at <= began else ""
        got = STATUS_NAME.get(job.status, "?")
        if floor and (RANK.get(got, -1) < RANK[floor] or (floor in TERMINAL and got != floor)):
            self.violation("stale_read", {"job_id": job_id, "acked": floor, "read": got})

    async def list_jobs(self, stub: pb_grpc.JobServiceStub, ws: str, rng: random.Random, token: str) -> str:
        request = pb.ListJobsRequest(page_size=rng.choice([10, 20, 50]), page_token=token)
        reply, _ = await self.timed(
            "ListJobs", lambda: stub.ListJobs(request, metadata=self.md(ws), timeout=self.timeout)
        )
        if reply is None:
            return ""
        for job in reply.jobs:
            if job.workspace_id != ws:
                self.violation("foreign_in_list", {"workspace_id": ws, "listed": job.workspace_id})
        return reply.next_page_token

    # --- workers ---------------------------------------------------------------------------------
    def workers_stop(self) -> bool:
        """Workers drain the queues past the end of the load, until the run has finished its walk."""
        if time.time() < self.end:
            return False
        stop_file = self.config.get("stop_file")
        return not stop_file or Path(stop_file).exists() or time.time() > self.end + DRAIN_SECONDS

    async def worker(self, stub: pb_grpc.JobServiceStub, index: int) -> None:
        rng = random.Random(self.rng.random())
        md = bearer(self.keys.worker)
        while not self.workers_stop():
            reply, error = await self.timed(
                "ClaimJob",
                lambda: stub.ClaimJob(
                    pb.ClaimJobRequest(worker_id=f"w{index}"), metadata=md, timeout=self.timeout
                ),
            )
            if error is not None:
                if error.code() in UNKNOWN_OUTCOME:
                    self.unknown_claims += 1
                await asyncio.sleep(0.05)
                continue
            if not reply.HasField("job"):
                await asyncio.sleep(0.05)
                continue
            job = reply.job
            expect = self.model.get(job.job_id)
            if expect is None:
                expect = Expect(job.workspace_id, "pending")
                self.model[job.job_id] = expect
            elif expect.workspace_id != job.workspace_id:
                self.violation("claim_wrong_workspace", {"job_id": job.job_id})
                continue
            if expect.status != "pending" and not expect.maybe:
                self.violation("claimed_twice", {"job_id": job.job_id, "status": expect.status})
            expect.status, expect.acked_at, expect.maybe = "running", time.monotonic(), []
            await asyncio.sleep(rng.uniform(0, 0.005))  # the work
            if rng.random() < 0.2 and not await self.update(stub, md, job, expect, "running", rng):
                continue
            await self.update(stub, md, job, expect, "completed" if rng.random() < 0.8 else "failed", rng)

    async def update(
        self,
        stub: pb_grpc.JobServiceStub,
        md: Any,
        job: pb.Job,
        expect: Expect,
        status: str,
        rng: random.Random,
    ) -> bool:
        """Send one status; True once acknowledged. A write of unknown outcome is retried as it was."""
        request = pb.UpdateJobStatusRequest(
            workspace_id=job.workspace_id, job_id=job.job_id, status=STATUS_OF_NAME[status]
        )
        result = None
        if status == "completed":
            result = {"answer": rng.randrange(10**6), "tokens": rng.randrange(1000)}
            json_format.ParseDict(result, request.result)
        elif status == "failed":
            request.error = f"simulated failure {rng.randrange(10**6)}"
        deadline = time.monotonic() + RETRY_SECONDS
        retried = False
        while True:
            reply, error = await self.timed(
                "UpdateJobStatus",
                lambda: stub.UpdateJobStatus(request, metadata=md, timeout=self.timeout),
                retried=retried,
            )
            if reply is not None:
                break
            code = error.code()
            if retried and code == grpc.StatusCode.FAILED_PRECONDITION and status in TERMINAL:
                # An earlier attempt of this very update was applied before its reply was lost.
                expect.inferred = True
                break
            if code not in UNKNOWN_OUTCOME or time.monotonic() > deadline:
                if code in UNKNOWN_OUTCOME or retried:
                    expect.maybe.append(status)
                    self.unresolved_updates += 1
                else:
                    self.violation(
                        "update_refused",
                        {"job_id": job.job_id, "code": code.name, "details": error.details()},
                    )
                return False
            retried = True
            await asyncio.sleep(0.2)
        expect.status, expect.acked_at, expect.maybe = status, time.monotonic(), []
        expect.result = canonical_value(result) if result is not None else expect.result
        expect.error = request.error if status == "failed" else expect.error
        if reply is not None and STATUS_NAME.get(reply.job.status) != status:
            self.violation(
                "update_reply",
                {"job_id": job.job_id, "sent": status, "got": STATUS_NAME.get(reply.job.status)},
            )
        return True

    # --- the run ---------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        start_at = float(self.config.get("start_at", time.time()))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        self.end = began + self.duration
        async with grpc.aio.insecure_channel(self.config["target"]) as channel:
            stub = pb_grpc.JobServiceStub(channel)
            tasks = [self.caller(stub, i) for i in range(int(self.config.get("callers", 16)))]
            tasks += [self.worker(stub, i) for i in range(int(self.config.get("workers", 4)))]
            await asyncio.gather(*tasks)
        seconds = time.time() - began
        return {
            "started_at": began,
            "seconds": round(seconds, 2),
            "rpcs": self.rec.summary(self.duration),
            "series": self.rec.series(),
            "latencies": self.rec.latency_log(),
            "drain": self.drain_rec.summary(max(seconds - self.duration, 1.0)),
            "unexpected_codes": self.rec.unexpected_count + self.drain_rec.unexpected_count,
            "unexpected_samples": self.rec.unexpected + self.drain_rec.unexpected,
            "violations": dict(self.violations),
            "violation_samples": dict(self.samples),
            "unknown_claims": self.unknown_claims,
            "unknown_execute_actions": dict(self.unknown_execute_actions),
            "unresolved_updates": self.unresolved_updates,
            "replays": self.replays,
            "model": [expect.to_json(job_id) for job_id, expect in self.model.items()],
        }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = json.loads(Path(args[0]).read_text())
    result = asyncio.run(Traffic(config).run())
    Path(config["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
