"""The record codec: Redis hash <-> relay.v1.Job, for records of either layout, however messy."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import codec
from relay.v1 import job_service_pb2 as pb


def test_a_new_record_holds_every_field_the_old_system_wrote_plus_error_and_rev():
    record = codec.new_record(
        job_id="j1",
        workspace_id="ws-a",
        provider="openai",
        action="chat",
        params_json="{}",
        actor_id="me",
        enqueued_at="2025-10-18T12:00:00+00:00",
    )
    assert set(record) == {
        "job_id",
        "status",
        "action_provider",
        "action_name",
        "params",
        "workspace_id",
        "actor_id",
        "result",
        "enqueued_at",
        "error",
        "rev",
    }
    assert (record["status"], record["result"], record["rev"]) == ("pending", "", "1")


def test_a_full_record_becomes_a_job():
    job = codec.to_proto(
        {
            "job_id": "j1",
            "workspace_id": "ws-a",
            "status": "failed",
            "action_provider": "openai",
            "action_name": "chat",
            "params": '{"n": 2, "tags": ["a"]}',
            "actor_id": "me",
            "result": '{"partial": true}',
            "error": "boom",
            "rev": "7",
            "enqueued_at": "2025-10-18T12:00:00+00:00",
            "started_at": "2025-10-18T12:00:01Z",
            "finished_at": "2025-10-18T12:00:02.5+00:00",
        }
    )
    assert (job.job_id, job.workspace_id, job.status, job.error, job.revision) == (
        "j1",
        "ws-a",
        pb.JOB_STATUS_FAILED,
        "boom",
        7,
    )
    assert dict(job.params)["n"] == 2 and list(job.params["tags"]) == ["a"]
    assert job.result.struct_value["partial"] is True
    assert job.finish_time.ToJsonString() == "2025-10-18T12:00:02.500Z"
    assert not job.params_text and not job.result_text


@pytest.mark.parametrize(
    "params,text",
    [("not json", "not json"), ("[1]", "[1]"), ("3", "3"), ('"s"', '"s"'), ("{", "{")],
)
def test_params_that_are_not_a_json_object_are_served_verbatim(params, text):
    job = codec.to_proto({"params": params})
    assert job.params_text == text and not job.HasField("params")


def test_a_result_that_is_not_json_is_served_verbatim():
    job = codec.to_proto({"result": "OK, done"})
    assert job.result_text == "OK, done" and not job.HasField("result")


@pytest.mark.parametrize("result", ['"done"', "42", "null", "[1, 2]", "true"])
def test_any_json_result_is_a_value(result):
    job = codec.to_proto({"result": result})
    assert job.HasField("result") and not job.result_text


def test_json_nested_beyond_the_limit_is_served_as_text_not_a_broken_message():
    deep = '{"a":' * 40 + "1" + "}" * 40
    job = codec.to_proto({"params": deep, "result": deep})
    assert (job.params_text, job.result_text) == (deep, deep)
    pb.GetJobResponse(job=job).SerializeToString()


def test_an_empty_record_is_an_empty_job_not_an_error():
    assert codec.to_proto({}) == pb.Job()


def test_unknown_status_and_unreadable_times_are_left_unset():
    job = codec.to_proto({"status": "queued", "enqueued_at": "yesterday", "started_at": "", "rev": "x"})
    assert job.status == pb.JOB_STATUS_UNSPECIFIED
    assert not job.HasField("enqueue_time") and not job.HasField("start_time")
    assert job.revision == 0


def test_decode_never_fails_on_bytes_that_are_not_utf8():
    record = codec.decode({b"\xff\xfe": b"\xc3(", b"params": b"{}"})
    assert record["params"] == "{}"
    assert "\ufffd" in "".join(record)


def test_times_without_a_zone_are_utc_as_the_old_system_meant():
    assert codec.parse_time("2025-10-18T12:00:00") == datetime(2025, 10, 18, 12, tzinfo=UTC)
    assert codec.parse_time("2025-10-18T12:00:00Z") == datetime(2025, 10, 18, 12, tzinfo=UTC)
    assert codec.parse_time("nonsense") is None and codec.parse_time(None) is None


def test_index_members_sort_lexicographically_in_time_order():
    times = ["2025-10-18T12:00:00+00:00", "2025-10-18T12:00:00.000001+00:00", "2026-01-01T00:00:00Z"]
    members = [codec.index_member("j", t) for t in times]
    assert members == sorted(members)
    assert codec.index_member("j", None) < members[0], "records without a time sort as the oldest"
    assert codec.index_member("j", "0001-01-01T00:00:00") == codec.index_member("j", None)
    assert codec.job_id_of_member(codec.index_member("job-1", times[0])) == "job-1"


def test_stored_json_is_compact_sorted_and_keeps_whole_numbers_whole():
    params = struct_pb2.Struct()
    params.update({"max_tokens": 256, "temperature": 0.5, "nested": {"ids": [1, 2.5]}, "big": 2.0**60})
    text = codec.struct_json(params)
    assert text == '{"big":1.152921504606847e+18,"max_tokens":256,"nested":{"ids":[1,2.5]},"temperature":0.5}'
    assert json.loads(codec.value_json(struct_pb2.Value(number_value=3))) == 3


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_numbers_json_cannot_hold_are_not_storable(number):
    params = struct_pb2.Struct()
    params.update({"x": number})
    with pytest.raises(codec.NotStorableJson):
        codec.struct_json(params)


def test_json_depth_counts_objects_and_arrays():
    assert [codec.json_depth(v) for v in (1, {}, [[]], {"a": [{"b": 1}]})] == [0, 1, 2, 3]
    deep: list = []
    for _ in range(4999):
        deep = [deep]
    assert codec.json_depth(deep) == 5000, "no recursion limit"


def test_differing_fields_names_data_fields_only():
    a = {"job_id": "j", "status": "running", "rev": "2", "params": "{}"}
    b = {"job_id": "j", "status": "pending", "rev": "1"}
    assert codec.differing_fields(a, b) == ["status", "params"]


def _reference_json(message: struct_pb2.Struct | struct_pb2.Value) -> str:
    """What the stored JSON must be: protobuf's own JSON mapping, whole numbers as integers."""

    def whole(value: object) -> object:
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            return int(value)
        if isinstance(value, dict):
            return {k: whole(v) for k, v in value.items()}
        if isinstance(value, list):
            return [whole(v) for v in value]
        return value

    return json.dumps(whole(json_format.MessageToDict(message)), separators=(",", ":"), sort_keys=True)


_json_scalars = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.text(max_size=8)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _json_values, max_size=5))
def test_stored_params_json_is_protobufs_own_json_mapping(data):
    params = struct_pb2.Struct()
    params.update(data)
    assert codec.struct_json(params) == _reference_json(params)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_stored_result_json_is_protobufs_own_json_mapping(data):
    result = struct_pb2.Value()
    json_format.ParseDict(data, result)
    assert codec.value_json(result) == _reference_json(result)


def test_an_unset_value_is_stored_as_null():
    params = struct_pb2.Struct()
    params.fields["x"].Clear()
    assert params.fields["x"].WhichOneof("kind") is None
    assert codec.struct_json(params) == '{"x":null}'
    assert codec.value_json(struct_pb2.Value()) == "null"


@pytest.mark.parametrize("depth, storable", [(codec.MAX_JSON_DEPTH, True), (codec.MAX_JSON_DEPTH + 1, False)])
def test_params_nest_at_most_the_limit_in_objects_or_arrays(depth, storable):
    for container in ({}, []):
        value: object = 1
        for _ in range(depth - 1):
            value = {"a": value} if isinstance(container, dict) else [value]
        params = struct_pb2.Struct()
        params.update({"top": value} if depth > 1 else {})
        if storable:
            assert json.loads(codec.struct_json(params)) == ({"top": value} if depth > 1 else {})
        else:
            with pytest.raises(codec.NotStorableJson, match="levels deep"):
                codec.struct_json(params)
