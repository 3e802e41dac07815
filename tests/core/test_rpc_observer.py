"""Every RPC has a request id (the caller's when valid), a duration by method and code, one log line."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import grpc
import pytest

from relay.core import logs
from relay.core.rpc_observer import REQUEST_ID_HEADER, request_id_from
from relay.core.stages import Stage, StageSetting
from relay.v1 import job_service_pb2 as pb
from tests.conftest import Keys, Running
from tests.migration_testkit import force_stage

EXECUTE = "relay.v1.JobService/Execute"
GET_JOB = "relay.v1.JobService/GetJob"


class JsonLines(logging.Handler):
    """Formats records the way ``relay serve`` does, at emit time (where the request id is current)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def rpc_lines(self, method: str) -> list[dict[str, object]]:
        return [line for line in self.lines if line.get("method") == method]


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("relay")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def rpc_count(relay: Running, method: str, code: str) -> float:
    value = relay.app.metrics.registry.get_sample_value(
        "relay_rpc_duration_seconds_count", {"method": method, "code": code}
    )
    return value or 0.0


async def call_with_metadata(call: grpc.aio.UnaryUnaryCall) -> tuple[object, dict[str, str]]:
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        reply = error
    trailing = {k: v for k, v in (await call.trailing_metadata() or ())}
    return reply, trailing


def test_a_valid_incoming_request_id_is_kept_and_anything_else_is_replaced():
    assert request_id_from(((REQUEST_ID_HEADER, "req-42.a:b"),)) == "req-42.a:b"
    generated = {request_id_from(()) for _ in range(100)}
    assert len(generated) == 100 and all(len(r) == 32 for r in generated)
    for bad in ("", " spaced out", "x" * 129, "-leading-dash", 'quote"d', "line\nbreak"):
        replaced = request_id_from(((REQUEST_ID_HEADER, bad),))
        assert replaced != bad and len(replaced) == 32


async def test_each_rpc_gets_its_own_request_id_in_the_trailing_metadata(relay: Running, keys: Keys):
    seen = set()
    for _ in range(3):
        call = relay.jobs.Execute(
            pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=keys.md("ws_a")
        )
        reply, trailing = await call_with_metadata(call)
        assert isinstance(reply, pb.ExecuteResponse)
        seen.add(trailing[REQUEST_ID_HEADER])
    assert len(seen) == 3


async def test_the_callers_request_id_is_echoed_also_on_an_error_answer(relay: Running, keys: Keys):
    md = (*keys.md("ws_a"), (REQUEST_ID_HEADER, "trace-abc-123"))
    reply, trailing = await call_with_metadata(
        relay.jobs.GetJob(pb.GetJobRequest(job_id="missing"), metadata=md)
    )
    assert isinstance(reply, grpc.aio.AioRpcError) and reply.code() == grpc.StatusCode.NOT_FOUND
    assert trailing[REQUEST_ID_HEADER] == "trace-abc-123"

    bad = (*keys.md("ws_a"), (REQUEST_ID_HEADER, "no spaces allowed"))
    _, trailing = await call_with_metadata(
        relay.jobs.GetJob(pb.GetJobRequest(job_id="missing"), metadata=bad)
    )
    assert trailing[REQUEST_ID_HEADER] != "no spaces allowed"


async def test_durations_are_recorded_by_method_and_status_code(relay: Running, keys: Keys):
    before_ok = rpc_count(relay, EXECUTE, "OK")
    await relay.jobs.Execute(
        pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=keys.md("ws_a")
    )
    await call_with_metadata(relay.jobs.Execute(pb.ExecuteRequest(actions=[]), metadata=keys.md("ws_a")))
    await call_with_metadata(relay.jobs.GetJob(pb.GetJobRequest(job_id="missing"), metadata=keys.md("ws_a")))
    await call_with_metadata(relay.jobs.GetJob(pb.GetJobRequest(job_id="x")))  # no key at all

    assert rpc_count(relay, EXECUTE, "OK") == before_ok + 1
    assert rpc_count(relay, EXECUTE, "INVALID_ARGUMENT") == 1
    assert rpc_count(relay, GET_JOB, "NOT_FOUND") == 1
    assert rpc_count(relay, GET_JOB, "UNAUTHENTICATED") == 1
    total = relay.app.metrics.registry.get_sample_value(
        "relay_rpc_duration_seconds_sum", {"method": EXECUTE, "code": "OK"}
    )
    assert total is not None and 0 < total < 5


async def test_unknown_methods_never_become_a_label(relay: Running):
    call = relay.channel.unary_unary("/relay.v1.JobService/NoSuchMethod")(b"")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    exposition = relay.app.metrics.registry.collect()
    methods = {s.labels.get("method") for family in exposition for s in family.samples}
    assert not any(m and "NoSuchMethod" in m for m in methods)


async def test_one_json_line_per_rpc_with_method_code_duration_and_request_id(
    relay: Running, keys: Keys, json_lines: JsonLines
):
    md = (*keys.md("ws_a"), (REQUEST_ID_HEADER, "req-ok-1"))
    await relay.jobs.Execute(pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=md)
    md = (*keys.md("ws_a"), (REQUEST_ID_HEADER, "req-missing-2"))
    await call_with_metadata(relay.jobs.GetJob(pb.GetJobRequest(job_id="missing"), metadata=md))

    [ok] = json_lines.rpc_lines(EXECUTE)
    assert ok["request_id"] == "req-ok-1" and ok["code"] == "OK" and ok["level"] == "INFO"
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] > 0
    [missing] = json_lines.rpc_lines(GET_JOB)
    assert missing["request_id"] == "req-missing-2" and missing["code"] == "NOT_FOUND"


async def test_lines_logged_while_serving_an_rpc_carry_its_request_id(
    relay: Running, keys: Keys, json_lines: JsonLines
):
    # Shadow reads compare both layouts and log a mismatch from inside the GetJob handler.
    await force_stage(relay.app.redis, "ws-a", StageSetting(Stage.READ_NEW, shadow_reads=True))
    await relay.app.stages.refresh()
    reply = await relay.jobs.Execute(
        pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=keys.md("ws_a")
    )
    [job_id] = reply.job_ids
    await relay.app.redis.hset(f"ai:jobs:{job_id}", "action_name", "changed-behind-our-back")

    md = (*keys.md("ws_a"), (REQUEST_ID_HEADER, "req-shadow-3"))
    await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md)

    tagged = [line for line in json_lines.lines if line.get("request_id") == "req-shadow-3"]
    assert [line["message"] for line in tagged] == ["shadow read mismatch", "rpc finished"]
    assert tagged[0]["job_id"] == job_id


async def test_health_checks_are_timed_but_logged_only_at_debug(relay: Running, json_lines: JsonLines):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    await health_pb2_grpc.HealthStub(relay.channel).Check(health_pb2.HealthCheckRequest())
    assert rpc_count(relay, "grpc.health.v1.Health/Check", "OK") == 1
    [line] = json_lines.rpc_lines("grpc.health.v1.Health/Check")
    assert line["level"] == "DEBUG"


async def test_the_request_id_does_not_leak_into_the_next_rpc(relay: Running, keys: Keys):
    assert logs.request_id.get() == ""
    await relay.jobs.Execute(
        pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=keys.md("ws_a")
    )
    assert logs.request_id.get() == ""


async def test_a_streaming_rpc_is_timed_until_it_ends(relay: Running):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    watch = health_pb2_grpc.HealthStub(relay.channel).Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    for _ in range(100):
        if rpc_count(relay, "grpc.health.v1.Health/Watch", "CANCELLED") == 1:
            break
        await asyncio.sleep(0.01)
    assert rpc_count(relay, "grpc.health.v1.Health/Watch", "CANCELLED") == 1
