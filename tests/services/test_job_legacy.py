"""Jobs the old system wrote, only in the legacy layout: readable wherever a stage reads legacy, invisible
where it does not, and never a crash however messy the record is."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
import pytest

from relay.core import codec
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import list_all, old_timestamp, refusal, write_legacy_job

READS_LEGACY = [s for s in Stage if s.reads_legacy]
IGNORES_LEGACY = [s for s in Stage if not s.reads_legacy]


@pytest.mark.parametrize("stage", READS_LEGACY, ids=lambda s: s.name)
async def test_a_legacy_only_job_is_readable_and_listable_where_the_stage_reads_legacy(
    start_relay, redis, keys, stage
):
    job_id = await write_legacy_job(
        redis,
        "ws-a",
        status="completed",
        params={"prompt": "hi", "n": 3},
        result='{"text": "hello"}',
        enqueued_at=old_timestamp(0),
        started_at=old_timestamp(1),
        finished_at=old_timestamp(2),
    )
    relay = await start_relay(stage=stage)
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert (job.job_id, job.workspace_id, job.status) == (job_id, "ws-a", pb.JOB_STATUS_COMPLETED)
    assert (job.action_provider, job.action_name, job.actor_id) == ("openai", "chat", "legacy-user")
    assert dict(job.params) == {"prompt": "hi", "n": 3}
    assert job.result.struct_value["text"] == "hello"
    assert job.revision == 0, "the old system kept no revision"
    assert job.enqueue_time.ToJsonString() == "2025-10-01T00:00:00Z"
    assert job.finish_time.ToJsonString() == "2025-10-01T00:00:02Z"
    listed, _ = await list_all(relay.jobs, keys.md("ws_a"))
    assert [j.job_id for j in listed] == [job_id]


@pytest.mark.parametrize("stage", IGNORES_LEGACY, ids=lambda s: s.name)
async def test_a_legacy_only_job_is_not_found_once_the_stage_reads_new_only(start_relay, redis, keys, stage):
    job_id = await write_legacy_job(redis, "ws-a")
    relay = await start_relay(stage=stage)
    missing = await refusal(relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a")))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert (await list_all(relay.jobs, keys.md("ws_a")))[0] == []


async def test_a_job_the_old_system_wrote_with_a_naive_utc_time_reads_as_utc(relay, redis, keys):
    job_id = await write_legacy_job(redis, "ws-a", enqueued_at="2025-10-18T12:00:00.250000")
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert job.enqueue_time.ToDatetime(tzinfo=UTC) == datetime(2025, 10, 18, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize("stage", [Stage.DUAL_WRITE, Stage.READ_NEW], ids=lambda s: s.name)
async def test_the_higher_revision_wins_whichever_layout_holds_it(start_relay, redis, keys, stage):
    """Copies can differ after a rollback; a read returns the latest acknowledged write."""
    job_id = await write_legacy_job(redis, "ws-a", status="running")
    await redis.hset(KEYS.legacy_job(job_id), "rev", "5")
    record = {k.decode(): v for k, v in (await redis.hgetall(KEYS.legacy_job(job_id))).items()}
    await redis.hset(KEYS.new_job("ws-a", job_id), mapping={**record, "status": "pending", "rev": "4"})
    relay = await start_relay(stage=stage)
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert (job.status, job.revision) == (pb.JOB_STATUS_RUNNING, 5)


#: (new copy's rev, legacy copy's rev, the copy of the higher revision): revisions as Python's int() reads
#: them, beside plain digits, including those a Lua number would read otherwise (signs, spaces,
#: underscores, hex, beyond 2**53).
REVISION_TEXTS = [
    ("4", "5", "legacy"),
    ("5", "5", "tie"),
    ("", "0", "tie"),
    ("+7", "6", "new"),
    (" 7 ", "8", "legacy"),
    ("1_000", "999", "new"),
    ("0x10", "3", "legacy"),
    ("9007199254740993", "9007199254740992", "new"),
    ("9007199254740992", "9007199254740993", "legacy"),
    ("many", "1", "legacy"),
]


@pytest.mark.parametrize(("new_rev", "legacy_rev", "higher"), REVISION_TEXTS)
@pytest.mark.parametrize("stage", [Stage.DUAL_WRITE, Stage.READ_NEW], ids=lambda s: s.name)
async def test_revisions_compare_as_numbers_however_they_are_written(
    start_relay, redis, keys, stage, new_rev, legacy_rev, higher
):
    enqueued_at = old_timestamp(0)
    job_id = await write_legacy_job(redis, "ws-a", status="running", rev=legacy_rev, enqueued_at=enqueued_at)
    record = {k.decode(): v for k, v in (await redis.hgetall(KEYS.legacy_job(job_id))).items()}
    await redis.hset(KEYS.new_job("ws-a", job_id), mapping={**record, "status": "pending", "rev": new_rev})
    await redis.zadd(KEYS.job_index("ws-a"), {codec.index_member(job_id, enqueued_at): 0})
    relay = await start_relay(stage=stage)
    served_new = higher == "new" or (higher == "tie" and stage.prefers_new)
    expected = pb.JOB_STATUS_PENDING if served_new else pb.JOB_STATUS_RUNNING
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert job.status == expected
    listed, _ = await list_all(relay.jobs, keys.md("ws_a"))
    assert [j.status for j in listed] == [expected]


# --- messy records ----------------------------------------------------------------------------------

#: name -> (raw hash fields, what GetJob shows). Each is ws-a's unless its workspace_id says otherwise.
MESSY: dict[str, tuple[dict[bytes | str, bytes | str], dict[str, object]]] = {
    "only-status": ({"workspace_id": "ws-a", "status": "pending"}, {"status": pb.JOB_STATUS_PENDING}),
    "params-not-json": (
        {"workspace_id": "ws-a", "params": "prompt=hi&n=3"},
        {"params_text": "prompt=hi&n=3"},
    ),
    "params-json-list": ({"workspace_id": "ws-a", "params": "[1, 2]"}, {"params_text": "[1, 2]"}),
    "params-json-scalar": ({"workspace_id": "ws-a", "params": "42"}, {"params_text": "42"}),
    "result-not-json": ({"workspace_id": "ws-a", "result": "OK!"}, {"result_text": "OK!"}),
    "result-json-string": ({"workspace_id": "ws-a", "result": '"done"'}, {"result": "done"}),
    "result-json-null": ({"workspace_id": "ws-a", "result": "null"}, {"result": None}),
    "unknown-status": ({"workspace_id": "ws-a", "status": "queued"}, {"status": pb.JOB_STATUS_UNSPECIFIED}),
    "bad-times": (
        {"workspace_id": "ws-a", "enqueued_at": "yesterday", "started_at": "", "finished_at": "99:99"},
        {"times": 0},
    ),
    "year-one": ({"workspace_id": "ws-a", "enqueued_at": "0001-01-01T00:00:00"}, {}),
    "not-utf8": (
        {"workspace_id": "ws-a", "params": b"\xff\xfe{", "action_name": b"\xc3(", b"\xff\xfefield": b"x"},
        {"params_text": "\ufffd\ufffd{"},
    ),
    "deeply-nested-params": (
        {"workspace_id": "ws-a", "params": '{"a":' * 150 + "1" + "}" * 150},
        {"params_text": '{"a":' * 150 + "1" + "}" * 150},
    ),
    "huge-number-result": ({"workspace_id": "ws-a", "result": "1e999"}, {}),
    "rev-not-a-number": ({"workspace_id": "ws-a", "rev": "many"}, {"revision": 0}),
}
#: Records no workspace can see: read as missing, listed by nobody.
NOBODYS: dict[str, object] = {
    "no-workspace": {"status": "pending", "params": "{}"},
    "bad-workspace": {"workspace_id": "WS A", "status": "pending"},
    "string": "just a string",
    "list": ["a", "b"],
    "set": {"a"},
    "zset": {"a": 1.0},
}


async def _write_messy(redis) -> dict[str, str]:
    ids = {}
    for name, (fields, _) in MESSY.items():
        job_id = f"messy-{name}"
        await redis.hset(KEYS.legacy_job(job_id), mapping=fields)
        ids[name] = job_id
    for name, value in NOBODYS.items():
        key = KEYS.legacy_job(f"nobody-{name}")
        if isinstance(value, dict) and name.endswith("workspace"):
            await redis.hset(key, mapping=value)
        elif isinstance(value, str):
            await redis.set(key, value)
        elif isinstance(value, list):
            await redis.rpush(key, *value)
        elif isinstance(value, set):
            await redis.sadd(key, *value)
        else:
            await redis.zadd(key, value)
    return ids


@pytest.mark.parametrize("name", list(MESSY))
async def test_a_messy_legacy_record_is_served_as_far_as_it_goes(relay, redis, keys, name):
    ids = await _write_messy(redis)
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=ids[name]), metadata=keys.md("ws_a"))).job
    assert (job.job_id, job.workspace_id) == (ids[name], "ws-a")
    expected = MESSY[name][1]
    for field, value in expected.items():
        if field == "result":
            assert json.loads(json.dumps(_value(job.result))) == value
        elif field == "times":
            assert not (
                job.HasField("enqueue_time") or job.HasField("start_time") or job.HasField("finish_time")
            )
        else:
            assert getattr(job, field) == value, field


def _value(value) -> object:
    from google.protobuf import json_format

    return json_format.MessageToDict(value)


@pytest.mark.parametrize("name", list(NOBODYS))
async def test_a_legacy_key_of_no_workspace_reads_as_missing(relay, redis, keys, name):
    await _write_messy(redis)
    missing = await refusal(
        relay.jobs.GetJob(pb.GetJobRequest(job_id=f"nobody-{name}"), metadata=keys.md("ws_a"))
    )
    assert missing.code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("stage", READS_LEGACY, ids=lambda s: s.name)
async def test_listing_among_messy_records_lists_each_of_the_workspaces_once(start_relay, redis, keys, stage):
    ids = await _write_messy(redis)
    relay = await start_relay(stage=stage)
    for page_size in (1, 4, 50):
        listed, _ = await list_all(relay.jobs, keys.md("ws_a"), page_size=page_size)
        assert sorted(j.job_id for j in listed) == sorted(ids.values())
    listed_b, _ = await list_all(relay.jobs, keys.md("ws_b"))
    assert listed_b == []
