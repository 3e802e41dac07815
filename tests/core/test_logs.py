"""Logs are JSON lines with the request id of the RPC, and job params and results never reach them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from redis.asyncio import Redis

from harness.ports import free_port
from harness.redis_server import RedisServer
from relay.core import logs
from relay.core.stages import Stage, StageSetting
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc
from tests.conftest import start_redis_server
from tests.migration_testkit import force_stage


def format_one(msg: str, *args: object, extra: dict[str, object] | None = None) -> dict[str, object]:
    """One record through the formatter ``relay serve`` uses, parsed back."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("relay.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.info(msg, *args, extra=extra)
    finally:
        logger.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    return json.loads(line)


def test_a_line_is_one_json_object_with_time_level_logger_and_message():
    line = format_one("copied %d keys", 3)
    assert line["message"] == "copied 3 keys" and line["level"] == "INFO"
    assert line["logger"] == "relay.test-logs" and line["time"].endswith("+00:00")
    assert "request_id" not in line


def test_the_current_request_id_is_on_every_line():
    token = logs.request_id.set("req-77")
    try:
        assert format_one("x")["request_id"] == "req-77"
    finally:
        logs.request_id.reset(token)


def test_only_allow_listed_extra_fields_are_kept():
    line = format_one("x", extra={"job_id": "j1", "params": {"secret": 1}, "result": "r", "method": "m"})
    assert line["job_id"] == "j1" and line["method"] == "m"
    assert "params" not in line and "result" not in line


def test_configure_installs_one_json_handler_on_the_root_logger():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.configure("DEBUG", "json")
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


# --- job params and results never reach the logs ------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    srv = start_redis_server()
    yield srv
    srv.stop()


def _struct(data: dict[str, object]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(data)
    return value


def _result(data: dict[str, object]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update(data)
    return value


def _spawn_relay(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``relay serve all`` with stdout and stderr in one file (a pipe could fill and stall it)."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-c", "from relay.server import main; main()", "serve", "all"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def _code_of(call: grpc.aio.UnaryUnaryCall) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_params_and_results_never_appear_in_the_logs_at_any_level(
    own_redis: RedisServer, tmp_path: Path
):
    marker = "SECRET-" + os.urandom(8).hex()
    raw = {name: f"k-{name}-{os.urandom(6).hex()}" for name in ("ws", "worker")}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(
        json.dumps(
            [
                {"key": raw["ws"], "workspace_id": "ws-a", "scopes": ["actions:execute", "actions:preview"]},
                {"key": raw["worker"], "workspace_id": "", "scopes": ["jobs:work"]},
            ]
        )
    )
    port = free_port()
    log_path = tmp_path / "relay.log"
    env = {
        **os.environ,
        "REDIS_URL": own_redis.url,
        "RELAY_API_KEYS_FILE": str(keys_file),
        "RELAY_LISTEN": f"127.0.0.1:{port}",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_LOG_LEVEL": "DEBUG",  # the root logger, so grpc's, redis' and asyncio's loggers too
        "GRPC_VERBOSITY": "debug",  # grpc core's own log lines, on the same stderr
    }
    proc = _spawn_relay(env, log_path)
    ws = (("authorization", f"Bearer {raw['ws']}"),)
    worker = (("authorization", f"Bearer {raw['worker']}"),)
    served: list[str] = []  # every answer, to prove the marker did travel through the server
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            params = _struct({"prompt": marker, "nested": {"list": [marker, 1]}})
            action = pb.Action(provider="p", action="a", params=params, client_request_id="c1")
            reply = await jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=ws)
            [job_id] = reply.job_ids
            await jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=ws)  # an idempotent replay
            served.append(str(await jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=ws)))
            served.append(str(await jobs.ListJobs(pb.ListJobsRequest(), metadata=ws)))
            served.append(str(await jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w1"), metadata=worker)))
            done = pb.UpdateJobStatusRequest(
                workspace_id="ws-a",
                job_id=job_id,
                status=pb.JOB_STATUS_COMPLETED,
                result=_result({"a": marker}),
            )
            served.append(str(await jobs.UpdateJobStatus(done, metadata=worker)))

            # Shadow reads compare both copies of a job and log what differs: names, never values.
            admin = Redis.from_url(own_redis.url)
            await force_stage(admin, "ws-a", StageSetting(Stage.READ_NEW, shadow_reads=True))
            await admin.hset(f"ai:jobs:{job_id}", "result", json.dumps({"a": marker + "-old"}))
            await admin.aclose()
            # Until the replica's stage view has the shadow stage (a condition, not a guess at its refresh).
            for _ in range(400):
                served.append(str(await jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=ws)))
                if "shadow read mismatch" in log_path.read_text(errors="replace"):
                    break
                await asyncio.sleep(0.05)

            # Failing calls, each carrying the marker.
            failures = [
                jobs.UpdateJobStatus(done, metadata=worker),  # already finished
                jobs.Execute(  # params over the size limit
                    pb.ExecuteRequest(
                        actions=[pb.Action(provider="p", action="a", params=_struct({"x": marker * 5000}))]
                    ),
                    metadata=ws,
                ),
                jobs.UpdateJobStatus(  # a job of nobody
                    pb.UpdateJobStatusRequest(
                        workspace_id="ws-a",
                        job_id="nope",
                        status=pb.JOB_STATUS_FAILED,
                        result=_result({"a": marker}),
                    ),
                    metadata=worker,
                ),
                jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=()),  # no key
                # Bytes that are no ExecuteRequest at all, with the marker inside.
                channel.unary_unary("/relay.v1.JobService/Execute")(
                    b"\x0a\xff\xff\xff\xff\x0f" + marker.encode(), metadata=ws
                ),
            ]
            codes = [await _code_of(call) for call in failures]
            assert codes == [
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ]
            # The store goes away: the failure is logged as a warning, still without the request.
            own_redis.stop()
            unavailable = await _code_of(jobs.Execute(pb.ExecuteRequest(actions=[action]), metadata=ws))
            assert unavailable == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    assert all(marker in answer for answer in served)
    text = log_path.read_text(errors="replace")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["level"] == "DEBUG" for line in lines), "the server did not log at DEBUG"
    finished = {(line.get("method"), line.get("code")) for line in lines if line["message"] == "rpc finished"}
    for method in ("Execute", "GetJob", "ListJobs", "ClaimJob", "UpdateJobStatus"):
        assert (f"relay.v1.JobService/{method}", "OK") in finished
    assert ("relay.v1.JobService/Execute", "UNAVAILABLE") in finished
    assert any(line["message"] == "shadow read mismatch" for line in lines)
    assert marker not in text
    assert marker.encode().hex() not in text  # nor hex-dumped
