"""Every kind of bad input gets its precise status and ErrorInfo, and changes nothing in Redis."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import execute, refusal, snapshot, write_legacy_job

BAD_IDS = {
    "colon": "a:b",
    "star": "job*",
    "question": "job?",
    "bracket": "job[1]",
    "braces": "{ws-b}",
    "unicode": "j\u00f6b",
    "emoji": "\U0001f600",
    "space": "a b",
    "newline": "job\n",
    "nul": "job\x00",
    "legacy-key": "ai:jobs:x",
    "too-long": "j" * 129,
}
BAD_WORKSPACES = {
    "upper": "WS-A",
    "colon": "ws:a",
    "star": "ws-*",
    "braces": "{ws-a}",
    "leading-dash": "-ws",
    "too-long": "w" * 33,
    "unicode": "w\u0161",
    "space": "ws a",
}


@pytest.fixture
async def seeded(relay, redis, keys) -> dict[str, str]:
    """Some data in both layouts, so that 'changed nothing' means something."""
    legacy = await write_legacy_job(redis, "ws-a", queue=True)
    [new] = await execute(relay.jobs, keys.md("ws_a"))
    return {"legacy": legacy, "new": new}


async def _refused(relay, redis, keys, rpc: str, request, key: str):
    before = await snapshot(redis)
    result = await refusal(getattr(relay.jobs, rpc)(request, metadata=keys.md(key)))
    assert result.code is not grpc.StatusCode.INTERNAL
    assert await snapshot(redis) == before, "a refused call changed Redis"
    return result


def _invalid(result, field: str, reason: str = "INVALID_ARGUMENT") -> None:
    assert (result.code, result.reason, result.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        field,
    ), result.message


def _action(**fields) -> pb.Action:
    return pb.Action(**{"provider": "openai", "action": "chat", **fields})


def _params(size: int) -> struct_pb2.Struct:
    params = struct_pb2.Struct()
    params.update({"blob": "x" * size})
    return params


# --- Execute ---------------------------------------------------------------------------------------

EXECUTE_CASES = {
    "no-actions": (pb.ExecuteRequest(), "actions"),
    "too-many-actions": (pb.ExecuteRequest(actions=[_action()] * 101), "actions"),
    "missing-provider": (pb.ExecuteRequest(actions=[_action(provider="")]), "actions[0].provider"),
    "blank-provider": (pb.ExecuteRequest(actions=[_action(provider="  ")]), "actions[0].provider"),
    "missing-action": (pb.ExecuteRequest(actions=[_action(action="")]), "actions[0].action"),
    "long-provider": (pb.ExecuteRequest(actions=[_action(provider="p" * 129)]), "actions[0].provider"),
    "control-in-action": (pb.ExecuteRequest(actions=[_action(action="a\x1b[31m")]), "actions[0].action"),
    "params-over-64KiB": (
        pb.ExecuteRequest(actions=[_action(params=_params(64 * 1024))]),
        "actions[0].params",
    ),
    "bad-second-action": (
        pb.ExecuteRequest(actions=[_action(), _action(provider="")]),
        "actions[1].provider",
    ),
    "long-actor": (pb.ExecuteRequest(actions=[_action()], actor_id="a" * 257), "actor_id"),
    **{
        f"client-request-id-{name}": (
            pb.ExecuteRequest(actions=[_action(client_request_id=bad)]),
            "actions[0].client_request_id",
        )
        for name, bad in BAD_IDS.items()
    },
    **{
        f"workspace-{name}": (pb.ExecuteRequest(actions=[_action()], workspace_id=bad), "workspace_id")
        for name, bad in BAD_WORKSPACES.items()
    },
}


@pytest.mark.parametrize("case", list(EXECUTE_CASES))
async def test_execute_refuses_bad_input(relay, redis, keys, seeded, case):
    request, field = EXECUTE_CASES[case]
    _invalid(await _refused(relay, redis, keys, "Execute", request, "ws_a"), field)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
async def test_execute_refuses_numbers_json_cannot_hold(relay, redis, keys, seeded, number):
    action = _action()
    action.params.update({"temperature": number})
    result = await _refused(relay, redis, keys, "Execute", pb.ExecuteRequest(actions=[action]), "ws_a")
    _invalid(result, "actions[0].params")


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_execute_refuses_params_nested_deeper_than_32_levels(relay, redis, keys, seeded):
    action = _action()
    action.params.update(_nested(33))
    result = await _refused(relay, redis, keys, "Execute", pb.ExecuteRequest(actions=[action]), "ws_a")
    _invalid(result, "actions[0].params")


async def test_params_nested_32_levels_go_in_and_come_back_out(relay, keys):
    action = _action()
    action.params.update(_nested(32))
    [job_id] = (
        await relay.jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=keys.md("ws_a"))
    ).job_ids
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert job.params == action.params


async def test_params_just_under_the_limit_are_accepted(relay, keys):
    [job_id] = (
        await relay.jobs.Execute(
            pb.ExecuteRequest(actions=[_action(params=_params(64 * 1024 - 20))]), metadata=keys.md("ws_a")
        )
    ).job_ids
    assert job_id


# --- GetJob ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [*list(BAD_IDS.values()), ""], ids=[*BAD_IDS, "empty"])
async def test_get_job_refuses_a_job_id_that_could_not_be_ours(relay, redis, keys, seeded, bad):
    _invalid(await _refused(relay, redis, keys, "GetJob", pb.GetJobRequest(job_id=bad), "ws_a"), "job_id")


# --- ListJobs --------------------------------------------------------------------------------------

LIST_CASES = {
    "negative-page-size": (pb.ListJobsRequest(page_size=-5), "page_size", "INVALID_ARGUMENT"),
    "min-page-size": (pb.ListJobsRequest(page_size=-(2**31)), "page_size", "INVALID_ARGUMENT"),
    "unknown-status": (pb.ListJobsRequest(status=99), "status", "INVALID_ARGUMENT"),
    "negative-status": (pb.ListJobsRequest(status=-1), "status", "INVALID_ARGUMENT"),
    "forged-token": (pb.ListJobsRequest(page_token="abc.def"), "page_token", "PAGE_TOKEN_INVALID"),
    **{
        f"workspace-{name}": (pb.ListJobsRequest(workspace_id=bad), "workspace_id", "INVALID_ARGUMENT")
        for name, bad in BAD_WORKSPACES.items()
    },
}


@pytest.mark.parametrize("case", list(LIST_CASES))
async def test_list_jobs_refuses_bad_input(relay, redis, keys, seeded, case):
    request, field, reason = LIST_CASES[case]
    _invalid(await _refused(relay, redis, keys, "ListJobs", request, "ws_a"), field, reason)


# --- UpdateJobStatus -------------------------------------------------------------------------------


def _update(seeded, **fields) -> pb.UpdateJobStatusRequest:
    return pb.UpdateJobStatusRequest(
        **{"workspace_id": "ws-a", "job_id": seeded["new"], "status": pb.JOB_STATUS_COMPLETED, **fields}
    )


def _big_result() -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.string_value = "r" * (1024 * 1024)
    return value


def _deep_value(depth: int) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update(_nested(depth))
    return value


UPDATE_CASES = {
    "no-workspace": (dict(workspace_id=""), "workspace_id"),
    **{f"workspace-{name}": (dict(workspace_id=bad), "workspace_id") for name, bad in BAD_WORKSPACES.items()},
    **{f"job-{name}": (dict(job_id=bad), "job_id") for name, bad in BAD_IDS.items()},
    "no-job": (dict(job_id=""), "job_id"),
    "unspecified-status": (dict(status=pb.JOB_STATUS_UNSPECIFIED), "status"),
    "back-to-pending": (dict(status=pb.JOB_STATUS_PENDING), "status"),
    "unknown-status": (dict(status=99), "status"),
    "result-over-1MiB": (dict(result=_big_result()), "result"),
    "nan-result": (dict(result=struct_pb2.Value(number_value=float("nan"))), "result"),
    "deep-result": (dict(result=_deep_value(33)), "result"),
    "long-error": (dict(error="e" * 4097), "error"),
    "control-in-error": (dict(error="bad\x07bell"), "error"),
}


@pytest.mark.parametrize("case", list(UPDATE_CASES))
async def test_update_job_status_refuses_bad_input(relay, redis, keys, seeded, case):
    fields, field = UPDATE_CASES[case]
    result = await _refused(relay, redis, keys, "UpdateJobStatus", _update(seeded, **fields), "worker")
    _invalid(result, field)


# --- ClaimJob --------------------------------------------------------------------------------------


@pytest.mark.parametrize("worker_id", ["w" * 129, "w\x00"], ids=["too-long", "control"])
async def test_claim_job_refuses_a_bad_worker_id_and_leaves_the_queues(relay, redis, keys, seeded, worker_id):
    result = await _refused(relay, redis, keys, "ClaimJob", pb.ClaimJobRequest(worker_id=worker_id), "worker")
    _invalid(result, "worker_id")


async def test_a_refused_batch_enqueues_none_of_its_actions(relay, redis, keys):
    """The first action is valid; the second is not: the whole call is refused before any write."""
    request = pb.ExecuteRequest(actions=[_action(client_request_id="ok-1"), _action(params=_params(70_000))])
    before = await snapshot(redis)
    result = await refusal(relay.jobs.Execute(request, metadata=keys.md("ws_a")))
    _invalid(result, "actions[1].params")
    assert await snapshot(redis) == before
