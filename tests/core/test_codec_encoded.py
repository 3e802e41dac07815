"""The encoded params and result kept beside their texts: served without a JSON parse, never over the text."""

from __future__ import annotations

import json

from google.protobuf import json_format, struct_pb2

from relay.core import codec
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import execute

PARAMS = {"prompt": "hi", "max_tokens": 256, "nested": {"list": [1, "two", None, True]}}


def _record(params: dict, result: object | None = None) -> codec.Record:
    struct = struct_pb2.Struct()
    struct.update(params)
    text = codec.struct_json(struct)
    record = codec.new_record(
        job_id="7d1f7c1e-0000-4000-8000-000000000001",
        workspace_id="ws-a",
        provider="openai",
        action="chat",
        params_json=text,
        actor_id="me",
        enqueued_at="2025-10-01T12:00:00.123456+00:00",
        params_pb=codec.encoded(text, struct),
    )
    if result is not None:
        value = struct_pb2.Value()
        json_format.ParseDict(result, value)
        record["result"] = codec.value_json(value)
        record["result_pb"] = codec.encoded(record["result"], value)
    return record


def _from_text(record: codec.Record) -> pb.Job:
    return codec.to_proto({k: v for k, v in record.items() if not k.endswith("_pb")})


def test_an_encoded_record_is_served_exactly_as_its_text_would_be():
    record = _record(PARAMS, {"answer": [1.5, "x"]})
    assert codec.to_proto(record) == _from_text(record)
    assert json_format.MessageToDict(codec.to_proto(record).params) == PARAMS


def test_the_text_wins_when_the_old_system_rewrote_it_after_relay_encoded_it():
    record = _record(PARAMS, {"answer": 1})
    record["result"] = json.dumps({"answer": 2})  # the old system's later write; result_pb is stale
    record["params"] = json.dumps({"prompt": "changed"})
    job = codec.to_proto(record)
    assert job.result.struct_value["answer"] == 2
    assert dict(job.params) == {"prompt": "changed"}


def test_a_damaged_encoded_form_falls_back_to_the_text():
    record = _record(PARAMS)
    crc = record["params_pb"][:8]
    for damaged in (crc + ":!!!not base64", crc + ":" + "AAAA" * 3, "zzzzzzzz:AAAA", "short", ""):
        record["params_pb"] = damaged
        assert codec.to_proto(record) == _from_text(record)


def test_timestamps_keep_their_microseconds_and_out_of_range_ones_are_left_unset():
    record = _record(PARAMS)
    assert codec.to_proto(record).enqueue_time.ToMicroseconds() == 1_759_320_000_123_456
    for moment in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"):
        record["finished_at"] = moment
        assert not codec.to_proto(record).HasField("finish_time")


async def test_execute_and_update_store_the_encoded_forms_and_reads_return_the_same_job(relay, redis, keys):
    [job_id] = await execute(relay.jobs, keys.md("ws_a"), **PARAMS)
    stored = {k.decode(): v.decode() for k, v in (await redis.hgetall(f"ai:jobs:{job_id}")).items()}
    assert stored["params_pb"].startswith(f"{codec.zlib.crc32(stored['params'].encode()):08x}:")
    value = struct_pb2.Value()
    json_format.ParseDict({"text": "done", "n": 3}, value)
    await relay.jobs.UpdateJobStatus(
        pb.UpdateJobStatusRequest(
            job_id=job_id, workspace_id="ws-a", status=pb.JOB_STATUS_COMPLETED, result=value
        ),
        metadata=keys.md("worker"),
    )
    got = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    stored = {k.decode(): v.decode() for k, v in (await redis.hgetall(f"ai:jobs:{job_id}")).items()}
    assert "result_pb" in stored
    assert got == _from_text(stored)
    assert json_format.MessageToDict(got.params) == PARAMS
