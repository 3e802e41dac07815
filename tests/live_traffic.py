"""Live traffic through JobService replicas, checked against a model of every acknowledged write.

Writers enqueue jobs in each workspace, one worker claims them (legacy queue first) and completes them,
readers read random jobs and list whole workspaces, and a prober tries every job with another
workspace's credentials. Each read is checked against the model: it may not be older than the state
acknowledged before the read began, nor newer than what was sent by the time it returned, and another
workspace's job must look exactly like a missing one.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from redis.asyncio import Redis

from relay.core.keys import KEYS
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import list_all, old_timestamp

ORDER = {pb.JOB_STATUS_PENDING: 0, pb.JOB_STATUS_RUNNING: 1, pb.JOB_STATUS_COMPLETED: 2}
NAMES = ("pending", "running", "completed")


@dataclass
class JobModel:
    workspace_id: str
    acked: int = 0  # the latest acknowledged status (index into NAMES)
    sent: int = 0  # the latest status sent, acknowledged or not
    result: Any = None  # the result sent with "completed"


@dataclass
class Traffic:
    replicas: list[Any]
    md: dict[str, Any]  # workspace -> call metadata of its key
    worker_md: Any
    jobs: dict[str, JobModel] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    claims_started: int = 0
    #: What the migration is doing, set by the test, named in failures.
    phase: str = ""
    claims_done: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # --- the dataset the old system left -------------------------------------------------------
    async def seed_legacy(self, redis: Redis, per_workspace: int) -> None:
        """Legacy-only jobs as the old system wrote them: no rev, no index entry, pending ones queued."""
        pipe = redis.pipeline(transaction=False)
        for w, workspace_id in enumerate(self.md):
            for n in range(per_workspace):
                job_id = f"old-{workspace_id}-{n}"
                done = n % 2 == 0
                record = {
                    "job_id": job_id,
                    "status": "completed" if done else "pending",
                    "action_provider": "openai",
                    "action_name": "chat",
                    "params": json.dumps({"n": n}),
                    "workspace_id": workspace_id,
                    "actor_id": "legacy-user",
                    "result": json.dumps({"old": n}) if done else "",
                    "enqueued_at": old_timestamp(w * 1000 + n),
                }
                pipe.hset(KEYS.legacy_job(job_id), mapping=record)
                if not done:
                    pipe.rpush(KEYS.legacy_queue, job_id)
                self.jobs[job_id] = JobModel(
                    workspace_id, 2 if done else 0, 2 if done else 0, {"old": n} if done else None
                )
        pipe.set(KEYS.legacy_job("not-a-job"), "garbage")
        await pipe.execute()

    # --- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        workers = [self._writer(ws) for ws in self.md] + [
            self._claimer(),
            self._claimer(),
            self._reader(),
            self._reader(),
        ]
        workers += [self._lister(), self._prober()]
        self._tasks = [asyncio.create_task(self._guard(w)) for w in workers]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _guard(self, work: Any) -> None:
        try:
            await work
        except Exception as exc:  # a task that dies is a failure of the run, not a silent gap
            self.failures.append(f"traffic task died: {exc!r}")

    def _replica(self) -> Any:
        return random.choice(self.replicas).jobs

    def _count(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1

    async def _writer(self, workspace_id: str) -> None:
        while not self._stop.is_set():
            action = pb.Action(
                provider="openai", action="chat", client_request_id=f"r{random.getrandbits(64)}"
            )
            action.params.update({"w": workspace_id})
            reply = await self._replica().Execute(
                pb.ExecuteRequest(actions=[action]), metadata=self.md[workspace_id]
            )
            for job_id in reply.job_ids:
                self.jobs[job_id] = JobModel(workspace_id)
            self._count("execute")
            await asyncio.sleep(0.05)

    async def _claimer(self) -> None:
        while not self._stop.is_set():
            # A claim counts as in flight until the model has it: readers may see "running" meanwhile.
            self.claims_started += 1
            try:
                reply = await self._replica().ClaimJob(
                    pb.ClaimJobRequest(worker_id="w1"), metadata=self.worker_md
                )
                if not reply.HasField("job"):
                    await asyncio.sleep(0.01)
                    continue
                job = reply.job
                for _ in range(200):  # its writer may not have heard back from Execute yet
                    model = self.jobs.get(job.job_id)
                    if model is not None:
                        break
                    await asyncio.sleep(0.005)
                if model is None or model.workspace_id != job.workspace_id or model.acked != 0:
                    self.failures.append(
                        f"claimed {job.job_id} ({job.workspace_id}), in the model as {model}"
                    )
                    continue
                model.sent = model.acked = 1
            finally:
                self.claims_done += 1
            self._count("claim")
            model.result = {"done": job.job_id}
            model.sent = 2
            value = struct_pb2.Value()
            json_format.ParseDict(model.result, value)
            request = pb.UpdateJobStatusRequest(
                workspace_id=job.workspace_id, job_id=job.job_id, status=pb.JOB_STATUS_COMPLETED, result=value
            )
            await self._replica().UpdateJobStatus(request, metadata=self.worker_md)
            model.acked = 2
            self._count("complete")

    async def _reader(self) -> None:
        while not self._stop.is_set():
            job_id = random.choice(list(self.jobs))
            model = self.jobs[job_id]
            before, claims = model.acked, (self.claims_started, self.claims_done)
            reply = await self._replica().GetJob(
                pb.GetJobRequest(job_id=job_id), metadata=self.md[model.workspace_id]
            )
            self._check(reply.job, model, before, claims, "get")
            self._count("get")
            await asyncio.sleep(0.01)

    def _check(self, job: pb.Job, model: JobModel, before: int, claims: tuple[int, int], how: str) -> None:
        state = ORDER.get(job.status, -1)
        claimed_meanwhile = claims[0] != claims[1] or self.claims_started != claims[0]
        newest = max(model.sent, 1 if claimed_meanwhile else 0)
        if job.workspace_id != model.workspace_id:
            self.failures.append(
                f"{how} {job.job_id}: workspace {job.workspace_id}, not {model.workspace_id}"
            )
        elif not before <= state <= newest:
            self.failures.append(
                f"{how} {job.job_id}: read {NAMES[state] if state >= 0 else job.status}, acknowledged "
                f"{NAMES[before]} before the read and at most {NAMES[newest]} sent"
            )
        elif state == 2 and json_format.MessageToDict(job.result) != model.result:
            self.failures.append(f"{how} {job.job_id}: result {job.result} is not the acknowledged one")

    async def _lister(self) -> None:
        while not self._stop.is_set():
            workspace_id = random.choice(list(self.md))
            known = {j: (m, m.acked) for j, m in list(self.jobs.items()) if m.workspace_id == workspace_id}
            claims, phase = (self.claims_started, self.claims_done), self.phase
            listed, _ = await list_all(self._replica(), self.md[workspace_id], page_size=100)
            ids = [job.job_id for job in listed]
            if len(ids) != len(set(ids)):
                self.failures.append(f"list {workspace_id}: {len(ids) - len(set(ids))} jobs listed twice")
            missing = set(known) - set(ids)
            if missing:
                self.failures.append(
                    f"list {workspace_id} ({phase} .. {self.phase}): {len(missing)} acknowledged jobs not "
                    f"listed, e.g. {sorted(missing)[:3]}"
                )
            for job in listed:
                if job.job_id in known:
                    model, before = known[job.job_id]
                    self._check(job, model, before, claims, "list")
                elif job.workspace_id != workspace_id:
                    self.failures.append(f"list {workspace_id}: showed {job.job_id} of {job.workspace_id}")
            self._count("list")
            await asyncio.sleep(0.05)

    async def _prober(self) -> None:
        workspaces = list(self.md)
        while not self._stop.is_set():
            job_id = random.choice(list(self.jobs))
            owner = self.jobs[job_id].workspace_id
            stranger = random.choice([w for w in workspaces if w != owner])
            try:
                await self._replica().GetJob(pb.GetJobRequest(job_id=job_id), metadata=self.md[stranger])
                self.failures.append(f"{stranger} read {job_id} of {owner}")
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    self.failures.append(f"{stranger} reading {job_id}: {exc.code().name}, not NOT_FOUND")
            request = pb.UpdateJobStatusRequest(
                workspace_id=stranger, job_id=job_id, status=pb.JOB_STATUS_FAILED
            )
            try:
                await self._replica().UpdateJobStatus(request, metadata=self.worker_md)
                self.failures.append(f"failed {job_id} of {owner} through workspace {stranger}")
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    self.failures.append(f"updating {job_id} as {stranger}: {exc.code().name}, not NOT_FOUND")
            self._count("probe")
            await asyncio.sleep(0.02)

    # --- at rest -----------------------------------------------------------------------------
    async def check_at_rest(self) -> None:
        """With the traffic stopped: every job reads and lists exactly as last acknowledged."""
        for job_id, model in self.jobs.items():
            assert model.acked == model.sent
            reply = await self._replica().GetJob(
                pb.GetJobRequest(job_id=job_id), metadata=self.md[model.workspace_id]
            )
            self._check(reply.job, model, model.acked, (0, 0), "final get")
            if ORDER[reply.job.status] != model.acked:
                self.failures.append(f"final get {job_id}: {reply.job.status} is not {NAMES[model.acked]}")
        for workspace_id, md in self.md.items():
            listed, _ = await list_all(self._replica(), md, page_size=100)
            mine = {j for j, m in self.jobs.items() if m.workspace_id == workspace_id}
            ids = [job.job_id for job in listed]
            if sorted(ids) != sorted(mine):
                self.failures.append(
                    f"final list {workspace_id}: {len(ids)} listed, {len(mine)} expected, "
                    f"{len(set(mine) - set(ids))} missing, {len(ids) - len(set(ids))} twice"
                )
