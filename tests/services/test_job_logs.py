"""Job params and results never reach the logs, at any level, on success or failure."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import struct_pb2

from relay.core import logs
from relay.core.keys import KEYS
from relay.core.stages import Stage, StageSetting
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import refusal, write_legacy_job
from tests.migration_testkit import force_stage

SECRET = "sk-live-TOPSECRET-4242"


def _leaks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Captured lines holding the secret, as plain messages and as the JSON lines Relay writes."""
    formatter = logs.JsonFormatter()
    return [
        line
        for record in caplog.records
        for line in (record.getMessage(), formatter.format(record), repr(record.__dict__))
        if SECRET in line
    ]


async def test_a_jobs_whole_life_logs_neither_params_nor_result(start_relay, redis, keys, caplog):
    caplog.set_level(logging.DEBUG)
    relay = await start_relay(stage=Stage.READ_NEW)
    action = pb.Action(provider="openai", action="chat")
    action.params.update({"api_key": SECRET, "prompt": f"say {SECRET}"})
    [job_id] = (
        await relay.jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=keys.md("ws_a"))
    ).job_ids
    await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))
    await relay.jobs.ListJobs(pb.ListJobsRequest(), metadata=keys.md("ws_a"))
    claimed = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=keys.md("worker"))
    assert claimed.job.job_id == job_id
    result = struct_pb2.Value(string_value=f"the answer is {SECRET}")
    await relay.jobs.UpdateJobStatus(
        pb.UpdateJobStatusRequest(
            workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_COMPLETED, result=result
        ),
        metadata=keys.md("worker"),
    )
    await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))
    assert caplog.records, "the capture works: RPCs are logged"
    assert _leaks(caplog) == []


async def test_refused_calls_log_neither_params_nor_result(relay, keys, caplog):
    caplog.set_level(logging.DEBUG)
    action = pb.Action(provider="openai", action="chat")
    action.params.update({"blob": SECRET * 5000})
    refused = await refusal(relay.jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=keys.md("ws_a")))
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
    assert SECRET not in refused.message
    update = pb.UpdateJobStatusRequest(
        workspace_id="ws-a",
        job_id="missing",
        status=pb.JOB_STATUS_COMPLETED,
        result=struct_pb2.Value(string_value=SECRET),
    )
    assert (
        await refusal(relay.jobs.UpdateJobStatus(update, metadata=keys.md("worker")))
    ).code is grpc.StatusCode.NOT_FOUND
    assert _leaks(caplog) == []


async def test_a_shadow_read_mismatch_logs_the_field_names_only(relay, redis, keys, caplog):
    """Shadow reads compare both copies and log a mismatch: which fields differ, never their values."""
    caplog.set_level(logging.DEBUG)
    job_id = await write_legacy_job(redis, "ws-a", params={"prompt": SECRET})
    record = {k.decode(): v for k, v in (await redis.hgetall(KEYS.legacy_job(job_id))).items()}
    await redis.hset(KEYS.new_job("ws-a", job_id), mapping={**record, "params": f'{{"prompt": "{SECRET}!"}}'})
    await force_stage(redis, "ws-a", StageSetting(Stage.READ_NEW, shadow_reads=True))
    await relay.app.stages.refresh()
    await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))
    mismatches = [r for r in caplog.records if r.getMessage() == "shadow read mismatch"]
    assert [r.__dict__.get("fields") for r in mismatches] == [["params"]]
    assert _leaks(caplog) == []
