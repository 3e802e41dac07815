"""After the load: every acknowledged write, read back through JobService, against the model.

For each workspace, ListJobs is paged to the end with that workspace's key: every job it shows must be
of that workspace, shown once, and as the model says (jobs the load created or touched) or as it was
seeded (legacy jobs nobody touched); every expected job must be there. Then GetJob reads each job the load
touched with its workspace's key (it must be there and be right), and with another workspace's key (it
must be NOT_FOUND). Writes whose outcome was unknown widen what is allowed, and only by as much as they
could explain: a job may be "running" without a known claim only as often as claims failed unseen, and
a workspace may hold jobs nobody knows of only as many as Executes without client_request_id failed
unseen.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from bench.legacy_seed import SeedManifest
from bench.load_traffic import STATUS_NAME, canonical_value
from bench.relay_cluster import KeyBook, bearer
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc as pb_grpc

T = TypeVar("T")
SAMPLES = 20
#: GetJob read-backs of seeded jobs nobody touched (the listing already compares all of them).
SEEDED_GETS = 2000
#: Foreign-workspace GetJob probes at most (every touched job when there are fewer).
FOREIGN_PROBES = 20000


@dataclass
class Expected:
    job_id: str
    workspace_id: str
    statuses: set[str]
    #: provider, action, actor_id, params (a dict) or params_text (a str)
    content: tuple[str, str, str, Any] | None
    result: Any = None
    check_result: bool = False
    error: str | None = None
    touched: bool = False
    #: "running" is allowed only through a claim whose reply was lost.
    pending_maybe_claimed: bool = False


@dataclass
class CheckReport:
    checked_in_lists: int = 0
    checked_by_get: int = 0
    foreign_probes: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    unseen_claims_used: int = 0
    transient_retries: int = 0
    unknown_jobs: dict[str, int] = field(default_factory=dict)

    def problem(self, kind: str, sample: Any) -> None:
        self.problems[kind] += 1
        if len(self.samples[kind]) < SAMPLES:
            self.samples[kind].append(sample)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "checked_in_lists": self.checked_in_lists,
            "checked_by_get": self.checked_by_get,
            "foreign_probes": self.foreign_probes,
            "problems": dict(self.problems),
            "samples": dict(self.samples),
            "unseen_claims_used": self.unseen_claims_used,
            "transient_retries": self.transient_retries,
            "unknown_jobs": self.unknown_jobs,
        }


def _seed_content(record: dict[str, str]) -> tuple[str, str, str, Any]:
    params_text = record.get("params", "")
    try:
        params: Any = json.loads(params_text)
    except ValueError:
        params = params_text
    if not isinstance(params, dict):
        params = params_text
    return (
        record.get("action_provider", ""),
        record.get("action_name", ""),
        record.get("actor_id", ""),
        params,
    )


def expectations(traffic: dict[str, Any], manifest: SeedManifest) -> dict[str, Expected]:
    out: dict[str, Expected] = {}
    for job_id, record in manifest.valid.items():
        result = record.get("result", "")
        out[job_id] = Expected(
            job_id,
            record["workspace_id"],
            {record["status"]},
            _seed_content(record),
            canonical_value(json.loads(result)) if result else None,
            check_result=bool(result),
            pending_maybe_claimed=record["status"] == "pending",
        )
    for m in traffic["model"]:
        seeded = out.get(m["job_id"])
        content = tuple(m["content"]) if m["content"] else (seeded.content if seeded else None)
        statuses = {m["status"], *m["maybe"]}
        exp = Expected(m["job_id"], m["workspace_id"], statuses, content, touched=True)
        if m["status"] == "completed" and not m["maybe"]:
            exp.result, exp.check_result = m["result"], True
        elif m["status"] == "failed" and not m["maybe"]:
            exp.error = m["error"]
        if seeded is not None and m["status"] in ("pending", "running") and not exp.check_result:
            exp.result, exp.check_result = seeded.result, seeded.check_result
        exp.pending_maybe_claimed = m["status"] == "pending" and not m["maybe"]
        out[m["job_id"]] = exp
    return out


def compare(job: pb.Job, exp: Expected, report: CheckReport, unseen_claims_left: list[int]) -> None:
    got = STATUS_NAME.get(job.status, "?")
    if got not in exp.statuses:
        if got == "running" and exp.pending_maybe_claimed and unseen_claims_left[0] > 0:
            unseen_claims_left[0] -= 1
            report.unseen_claims_used += 1
        else:
            report.problem(
                "wrong_status", {"job_id": exp.job_id, "allowed": sorted(exp.statuses), "got": got}
            )
            return
    if exp.content is not None:
        provider, action, actor, params = exp.content
        got_params: Any = json_format.MessageToDict(job.params) if not job.params_text else job.params_text
        want_params = params if isinstance(params, str) else canonical_value(params)
        if isinstance(got_params, dict):
            got_params = canonical_value(got_params)
        if (job.action_provider, job.action_name, job.actor_id, got_params) != (
            provider,
            action,
            actor,
            want_params,
        ):
            report.problem(
                "wrong_content",
                {"job_id": exp.job_id, "got": [job.action_provider, job.action_name, job.actor_id]},
            )
    if exp.check_result and got == "completed" and len(exp.statuses) == 1:
        got_result = json_format.MessageToDict(job.result) if job.HasField("result") else None
        if got_result != exp.result:
            report.problem("wrong_result", {"job_id": exp.job_id, "want": exp.result, "got": got_result})
    if exp.error is not None and got == "failed" and job.error != exp.error:
        report.problem("wrong_error", {"job_id": exp.job_id, "want": exp.error, "got": job.error})


async def _retrying(report: CheckReport, call: Callable[[], Awaitable[T]]) -> T:
    """A call retried (and counted) when it fails with UNAVAILABLE: the read-back checks data, and a Redis
    connection cut by a fault still fails the one call that next uses it, however much later."""
    for attempt in range(3):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
            report.transient_retries += 1
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def _get(stub: pb_grpc.JobServiceStub, report: CheckReport, job_id: str, key: str) -> pb.GetJobResponse:
    return await _retrying(
        report, lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=bearer(key), timeout=30)
    )


async def _list_workspace(
    stub: pb_grpc.JobServiceStub, report: CheckReport, ws: str, key: str
) -> list[pb.Job]:
    jobs: list[pb.Job] = []
    token = ""
    while True:
        request = pb.ListJobsRequest(page_size=500, page_token=token)
        reply = await _retrying(report, lambda r=request: stub.ListJobs(r, metadata=bearer(key), timeout=30))
        jobs.extend(reply.jobs)
        token = reply.next_page_token
        if not token:
            return jobs


async def check(target: str, keys: KeyBook, traffic: dict[str, Any], manifest: SeedManifest) -> CheckReport:
    report = CheckReport()
    expected = expectations(traffic, manifest)
    unseen_claims_left = [int(traffic["unknown_claims"])]
    unknown_allowance = Counter(traffic["unknown_execute_actions"])
    by_ws: dict[str, set[str]] = defaultdict(set)
    for exp in expected.values():
        by_ws[exp.workspace_id].add(exp.job_id)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        for ws, key in sorted(keys.workspaces.items()):
            listed = await _list_workspace(stub, report, ws, key)
            seen: set[str] = set()
            unknown = 0
            for job in listed:
                if job.workspace_id != ws:
                    report.problem("foreign_in_list", {"workspace_id": ws, "job_workspace": job.workspace_id})
                    continue
                if job.job_id in seen:
                    report.problem("listed_twice", {"workspace_id": ws, "job_id": job.job_id})
                    continue
                seen.add(job.job_id)
                exp = expected.get(job.job_id)
                if exp is None:
                    unknown += 1
                    continue
                report.checked_in_lists += 1
                compare(job, exp, report, unseen_claims_left)
            for job_id in sorted(by_ws[ws] - seen):
                report.problem("missing_from_list", {"workspace_id": ws, "job_id": job_id})
            report.unknown_jobs[ws] = unknown
            if unknown > unknown_allowance[ws]:
                report.problem(
                    "unexplained_jobs",
                    {"workspace_id": ws, "found": unknown, "explained": unknown_allowance[ws]},
                )
        await _get_back(stub, keys, expected, report, int(traffic["unknown_claims"]) > 0)
    return report


async def _get_back(
    stub: pb_grpc.JobServiceStub,
    keys: KeyBook,
    expected: dict[str, Expected],
    report: CheckReport,
    claims_possible: bool,
) -> None:
    rng = random.Random(3)
    touched = [e for e in expected.values() if e.touched]
    untouched = [e for e in expected.values() if not e.touched]
    targets = touched + rng.sample(untouched, min(SEEDED_GETS, len(untouched)))
    probes = set(rng.sample(range(len(targets)), min(FOREIGN_PROBES, len(targets))))
    workspaces = sorted(keys.workspaces)
    gate = asyncio.Semaphore(32)
    # The listing already spent the allowance of unseen claims on these jobs; GetJob only re-reads them.
    no_extra_claims = [0]

    async def one(n: int, exp: Expected) -> None:
        async with gate:
            try:
                reply = await _get(stub, report, exp.job_id, keys.workspaces[exp.workspace_id])
            except grpc.aio.AioRpcError as error:
                kind = "lost" if error.code() == grpc.StatusCode.NOT_FOUND else f"get_{error.code().name}"
                report.problem(
                    kind, {"job_id": exp.job_id, "workspace_id": exp.workspace_id, "details": error.details()}
                )
                return
            report.checked_by_get += 1
            job = reply.job
            if job.workspace_id != exp.workspace_id or job.job_id != exp.job_id:
                report.problem("wrong_job", {"job_id": exp.job_id})
            elif (
                STATUS_NAME.get(job.status) == "running"
                and "running" not in exp.statuses
                and exp.pending_maybe_claimed
                and claims_possible
            ):
                pass  # a claim whose reply was lost; the listing counted it against the allowance
            else:
                compare(job, exp, report, no_extra_claims)
            if n in probes:
                other = workspaces[
                    (workspaces.index(exp.workspace_id) + 1 + n % (len(workspaces) - 1)) % len(workspaces)
                ]
                report.foreign_probes += 1
                try:
                    await stub.GetJob(
                        pb.GetJobRequest(job_id=exp.job_id),
                        metadata=bearer(keys.workspaces[other]),
                        timeout=30,
                    )
                    report.problem("visible_to_other_workspace", {"job_id": exp.job_id, "reader": other})
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        report.problem(
                            f"foreign_get_{error.code().name}",
                            {"job_id": exp.job_id, "details": error.details()},
                        )

    await asyncio.gather(*(one(n, exp) for n, exp in enumerate(targets)))
