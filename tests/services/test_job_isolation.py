"""Workspace isolation, for every RPC, for own / other / missing workspaces and jobs, in both layouts.

A caller's workspace comes from its api key. Another workspace's job is NOT_FOUND exactly like a missing
one (same code, message and ErrorInfo); a request naming another workspace is PERMISSION_DENIED; a worker
reaches any workspace's job, but only through that job's own workspace_id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
import pytest

from relay.core.keys import KEYS
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import execute, list_all, refusal, snapshot, write_legacy_job

LAYOUTS = ["legacy", "new"]
#: A well-formed workspace that holds nothing and belongs to no key.
NOWHERE = "ws-nowhere"


@dataclass
class World:
    """A job per (workspace, layout): ``legacy`` written as the old system did, ``new`` in the new layout."""

    jobs: dict[tuple[str, str], str]
    missing: str

    def job(self, workspace: str, layout: str) -> str:
        return self.jobs[(workspace, layout)]


@pytest.fixture
async def world(relay, redis, keys) -> World:
    jobs = {}
    for ws, key in (("ws-a", "ws_a"), ("ws-b", "ws_b")):
        jobs[(ws, "legacy")] = await write_legacy_job(redis, ws)
        [new_id] = await execute(relay.jobs, keys.md(key))
        await redis.delete(KEYS.legacy_job(new_id))  # as after cleanup: only the new layout holds it
        jobs[(ws, "new")] = new_id
    return World(jobs, str(uuid.uuid4()))


# --- GetJob ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_get_job_returns_a_job_of_the_callers_workspace(relay, keys, world, layout):
    job = (
        await relay.jobs.GetJob(pb.GetJobRequest(job_id=world.job("ws-a", layout)), metadata=keys.md("ws_a"))
    ).job
    assert (job.job_id, job.workspace_id) == (world.job("ws-a", layout), "ws-a")


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_get_job_of_another_workspace_looks_exactly_like_a_missing_job(relay, keys, world, layout):
    other = await refusal(
        relay.jobs.GetJob(pb.GetJobRequest(job_id=world.job("ws-b", layout)), metadata=keys.md("ws_a"))
    )
    missing = await refusal(
        relay.jobs.GetJob(pb.GetJobRequest(job_id=world.missing), metadata=keys.md("ws_a"))
    )
    assert other.code is grpc.StatusCode.NOT_FOUND
    assert other.reason == "JOB_NOT_FOUND"
    assert other.same_as(missing)


# --- ListJobs --------------------------------------------------------------------------------------


async def test_list_jobs_shows_the_callers_jobs_of_both_layouts_and_nothing_else(relay, keys, world):
    listed_a, _ = await list_all(relay.jobs, keys.md("ws_a"))
    listed_b, _ = await list_all(relay.jobs, keys.md("ws_b"))
    assert sorted(j.job_id for j in listed_a) == sorted(
        [world.job("ws-a", "legacy"), world.job("ws-a", "new")]
    )
    assert sorted(j.job_id for j in listed_b) == sorted(
        [world.job("ws-b", "legacy"), world.job("ws-b", "new")]
    )
    assert {j.workspace_id for j in listed_a} == {"ws-a"}


async def test_list_jobs_naming_the_callers_own_workspace_is_allowed(relay, keys, world):
    reply = await relay.jobs.ListJobs(pb.ListJobsRequest(workspace_id="ws-a"), metadata=keys.md("ws_a"))
    assert len(reply.jobs) == 2


@pytest.mark.parametrize("named", ["ws-b", NOWHERE])
async def test_list_jobs_naming_another_workspace_is_permission_denied(relay, keys, world, named):
    denied = await refusal(
        relay.jobs.ListJobs(pb.ListJobsRequest(workspace_id=named), metadata=keys.md("ws_a"))
    )
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert denied.metadata == {"field": "workspace_id"}


async def test_a_workspace_with_no_jobs_lists_nothing_while_others_have_jobs(relay, redis, keys):
    await write_legacy_job(redis, "ws-a")
    await execute(relay.jobs, keys.md("ws_a"))
    listed, pages = await list_all(relay.jobs, keys.md("ws_b"))
    assert (listed, pages) == ([], 1)


async def test_a_page_token_of_one_workspace_is_invalid_in_another(relay, keys, world):
    first = await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=1), metadata=keys.md("ws_a"))
    assert first.next_page_token
    stolen = await refusal(
        relay.jobs.ListJobs(
            pb.ListJobsRequest(page_size=1, page_token=first.next_page_token), metadata=keys.md("ws_b")
        )
    )
    assert stolen.code is grpc.StatusCode.INVALID_ARGUMENT
    assert stolen.reason == "PAGE_TOKEN_INVALID"


# --- Execute ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("named", ["ws-b", NOWHERE])
async def test_execute_naming_another_workspace_is_permission_denied_and_writes_nothing(
    relay, redis, keys, world, named
):
    before = await snapshot(redis)
    request = pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")], workspace_id=named)
    denied = await refusal(relay.jobs.Execute(request, metadata=keys.md("ws_a")))
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert await snapshot(redis) == before


async def test_execute_naming_the_callers_own_workspace_enqueues_there(relay, keys, world):
    request = pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")], workspace_id="ws-a")
    [job_id] = (await relay.jobs.Execute(request, metadata=keys.md("ws_a"))).job_ids
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert job.workspace_id == "ws-a"


async def test_one_client_request_id_in_two_workspaces_makes_two_jobs(relay, keys):
    [a] = await execute(relay.jobs, keys.md("ws_a"), client_request_id="same-id")
    [b] = await execute(relay.jobs, keys.md("ws_b"), client_request_id="same-id")
    assert a != b
    hidden = await refusal(relay.jobs.GetJob(pb.GetJobRequest(job_id=b), metadata=keys.md("ws_a")))
    assert hidden.code is grpc.StatusCode.NOT_FOUND


# --- UpdateJobStatus -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("workspace", ["ws-a", "ws-b"])
async def test_a_worker_updates_any_workspaces_job_through_its_own_workspace_id(
    relay, keys, world, layout, workspace
):
    job_id = world.job(workspace, layout)
    request = pb.UpdateJobStatusRequest(workspace_id=workspace, job_id=job_id, status=pb.JOB_STATUS_RUNNING)
    job = (await relay.jobs.UpdateJobStatus(request, metadata=keys.md("worker"))).job
    assert (job.job_id, job.workspace_id, job.status) == (job_id, workspace, pb.JOB_STATUS_RUNNING)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("through", ["ws-b", NOWHERE])
async def test_a_worker_naming_the_wrong_workspace_finds_nothing_and_changes_nothing(
    relay, redis, keys, world, layout, through
):
    before = await snapshot(redis)
    wrong = await refusal(
        relay.jobs.UpdateJobStatus(
            pb.UpdateJobStatusRequest(
                workspace_id=through, job_id=world.job("ws-a", layout), status=pb.JOB_STATUS_COMPLETED
            ),
            metadata=keys.md("worker"),
        )
    )
    missing = await refusal(
        relay.jobs.UpdateJobStatus(
            pb.UpdateJobStatusRequest(
                workspace_id="ws-a", job_id=world.missing, status=pb.JOB_STATUS_COMPLETED
            ),
            metadata=keys.md("worker"),
        )
    )
    assert wrong.code is grpc.StatusCode.NOT_FOUND
    assert wrong.same_as(missing)
    assert await snapshot(redis) == before


# --- ClaimJob --------------------------------------------------------------------------------------


async def test_a_worker_claims_jobs_of_every_workspace_each_with_its_own_workspace(relay, redis, keys):
    legacy_b = await write_legacy_job(redis, "ws-b", queue=True)
    [new_a] = await execute(relay.jobs, keys.md("ws_a"))
    claimed = []
    for _ in range(3):
        reply = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w1"), metadata=keys.md("worker"))
        if reply.HasField("job"):
            claimed.append((reply.job.job_id, reply.job.workspace_id))
    assert sorted(claimed) == sorted([(legacy_b, "ws-b"), (new_a, "ws-a")])


# --- authentication and scopes, for every RPC ------------------------------------------------------

SCOPED_KEYS = ["ws_a", "ws_a_preview", "ws_a_execute", "worker", "admin"]
ALLOWED = {
    "Execute": {"ws_a", "ws_a_execute"},
    "GetJob": {"ws_a", "ws_a_preview"},
    "ListJobs": {"ws_a", "ws_a_preview"},
    "ClaimJob": {"worker"},
    "UpdateJobStatus": {"worker"},
}


def _request(rpc: str, job_id: str) -> object:
    return {
        "Execute": lambda: pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")]),
        "GetJob": lambda: pb.GetJobRequest(job_id=job_id),
        "ListJobs": lambda: pb.ListJobsRequest(),
        "ClaimJob": lambda: pb.ClaimJobRequest(worker_id="w1"),
        "UpdateJobStatus": lambda: pb.UpdateJobStatusRequest(
            workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_COMPLETED
        ),
    }[rpc]()


@pytest.mark.parametrize("rpc", list(ALLOWED))
@pytest.mark.parametrize(
    "metadata,reason",
    [
        ((), "API_KEY_MISSING"),
        ((("authorization", "Bearer not-a-key"),), "API_KEY_INVALID"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "API_KEY_MISSING"),
        ((("authorization", "Bearer "),), "API_KEY_MISSING"),
        ((("authorization", "not-a-key"),), "API_KEY_MISSING"),
    ],
    ids=["missing", "unknown", "basic-scheme", "empty-bearer", "no-scheme"],
)
async def test_a_call_without_a_valid_key_is_unauthenticated_and_changes_nothing(
    relay, redis, world, rpc, metadata, reason
):
    await write_legacy_job(redis, "ws-a", queue=True)
    before = await snapshot(redis)
    call = getattr(relay.jobs, rpc)(_request(rpc, world.job("ws-a", "new")), metadata=metadata)
    denied = await refusal(call)
    assert (denied.code, denied.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    "rpc,key", [(rpc, key) for rpc, allowed in ALLOWED.items() for key in SCOPED_KEYS if key not in allowed]
)
async def test_a_key_without_the_rpcs_scope_is_permission_denied_and_changes_nothing(
    relay, redis, keys, world, rpc, key
):
    await write_legacy_job(redis, "ws-a", queue=True)
    before = await snapshot(redis)
    denied = await refusal(
        getattr(relay.jobs, rpc)(_request(rpc, world.job("ws-a", "new")), metadata=keys.md(key))
    )
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert "scope" in denied.metadata
    assert await snapshot(redis) == before
