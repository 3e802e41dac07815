"""Hostile data in Redis, against a real server and a real Redis (DESIGN.md, invariants 2, 7, 9, 10).

Each case asserts the exact status code, that Redis did not change where it must not (a digest of the
touched keys, or of everything), and that nothing of another workspace is returned.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import grpc
import pytest

from relay.controller.verify.verifier import Verifier
from relay.core import codec
from relay.core.keys import KEYS
from relay.core.limits import PAGE_BYTE_BUDGET
from relay.core.lua import LuaScripts
from relay.core.lua.sweep import CLEANUP_LEGACY_JOBS, REVERSE_COPY
from relay.core.stages import Stage
from relay.v1 import job_service_pb2 as pb
from tests.job_testkit import list_all, refusal, snapshot, write_legacy_job

BIG_INT = "9" * 400
LATE = "9999-12-31T23:59:59-05:00"  # after the end of year 9999 in UTC
EARLY = "0001-01-01T00:00:00+05:00"  # before the start of year 1 in UTC


def metric(relay, name: str, labels: dict[str, str] | None = None) -> float:  # type: ignore[no-untyped-def]
    return relay.app.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def foreign_count(relay) -> float:  # type: ignore[no-untyped-def]
    return metric(relay, "relay_foreign_records_total", {"layout": "new"})


async def digest(redis, *keys: str) -> str:  # type: ignore[no-untyped-def]
    """A digest of the named keys' types and values (DUMP), to show they did not change."""
    h = hashlib.sha256()
    for key in keys:
        h.update(key.encode() + b"\0" + (await redis.dump(key) or b"<none>") + b"\0")
    return h.hexdigest()


def no_foreign_data(jobs: list[pb.Job], workspace_id: str, marker: str) -> None:
    for job in jobs:
        assert job.workspace_id == workspace_id
        assert marker not in job.SerializeToString().decode("utf-8", "replace")


async def plant_foreign(redis, owner_ws: str, under_ws: str, status: str = "pending") -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A record of ``owner_ws`` stored under ``under_ws``'s new-layout key, indexed there too."""
    job_id = str(uuid.uuid4())
    record = codec.new_record(
        job_id=job_id,
        workspace_id=owner_ws,
        provider="openai",
        action="chat",
        params_json=json.dumps({"secret": "of-" + owner_ws}),
        actor_id="intruder",
        enqueued_at=codec.now_iso(),
    )
    record["status"] = status
    key = KEYS.new_job(under_ws, job_id)
    await redis.hset(key, mapping=record)
    await redis.zadd(KEYS.job_index(under_ws), {codec.index_member(job_id, record["enqueued_at"]): 0})
    return job_id, key


# --- 1. another workspace's record under this workspace's new-layout key -----------------------------
async def test_a_foreign_new_record_is_missing_for_get_list_update_and_claim(relay, redis, keys):
    job_id, key = await plant_foreign(redis, "ws-b", "ws-a")
    before = await digest(redis, key)
    md = keys.md("ws_a")

    got = await refusal(relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md))
    assert got.code == grpc.StatusCode.NOT_FOUND
    listed, _ = await list_all(relay.jobs, md)
    assert job_id not in {j.job_id for j in listed}
    no_foreign_data(listed, "ws-a", "of-ws-b")

    counted = foreign_count(relay)
    update = pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_COMPLETED)
    updated = await refusal(relay.jobs.UpdateJobStatus(update, metadata=keys.md("worker")))
    assert updated.code == grpc.StatusCode.NOT_FOUND
    assert foreign_count(relay) > counted
    assert await digest(redis, key) == before

    # The job id in ws-a's queue: a claim passes over it and leaves the record alone.
    await redis.rpush(KEYS.queue("ws-a"), job_id)
    await redis.zadd(KEYS.ready, {"ws-a": 0})
    counted = foreign_count(relay)
    claimed = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=keys.md("worker"))
    assert not claimed.HasField("job")
    assert foreign_count(relay) > counted
    assert await digest(redis, key) == before
    assert await redis.llen(KEYS.claiming("ws-a")) == 0  # forgotten: there is no claimable job behind it


async def test_a_foreign_new_record_is_no_copy_for_verification_and_cleanup(relay, redis, keys):
    # ws-a's own legacy record, and ws-b's record planted under ws-a's new key of the same job id.
    job_id = await write_legacy_job(redis, "ws-a", status="completed")
    foreign = codec.new_record(
        job_id=job_id,
        workspace_id="ws-b",
        provider="openai",
        action="chat",
        params_json='{"secret":"of-ws-b"}',
        actor_id="intruder",
        enqueued_at=codec.now_iso(),
    )
    foreign["status"], foreign["rev"] = "completed", "9"
    new_key, legacy_key = KEYS.new_job("ws-a", job_id), KEYS.legacy_job(job_id)
    await redis.hset(new_key, mapping=foreign)
    before = await digest(redis, new_key, legacy_key)
    lua = LuaScripts(redis)
    fields = list(codec.DATA_FIELDS)

    # Cleanup must keep the legacy record: its new copy does not exist for ws-a. (Each sweep script
    # answers one outcome per key, then its own run time.)
    args = ["0", len(fields), *fields, "ws-a", job_id]
    *outcomes, _micros = await lua.call(CLEANUP_LEGACY_JOBS, keys=[legacy_key, new_key], args=args)
    assert outcomes == [b"foreign_new"]
    # The reverse copy must not carry ws-b's record into ws-a's legacy one.
    args = ["0", len(fields), *fields, "ws-a", job_id]
    *outcomes, _micros = await lua.call(REVERSE_COPY, keys=[new_key, legacy_key], args=args)
    assert outcomes == [b"foreign_new"]
    assert await digest(redis, new_key, legacy_key) == before

    # Verification counts ws-a's job as missing in the new layout, not as a differing copy of it.
    counted = foreign_count(relay)
    async for kind, run in Verifier(redis, metrics=relay.app.metrics).run("ws-a", 0, 100, False):
        last = (kind, run)
    assert last[0] == "completed"
    counts = last[1].workspaces["ws-a"]
    assert foreign_count(relay) > counted
    assert counts.missing_in_new == 1 and counts.differing == 0
    assert await digest(redis, new_key, legacy_key) == before


# --- 2. stored data protobuf cannot carry ----------------------------------------------------------
@pytest.mark.parametrize(
    "fields,served_as",
    [
        ({"params": '{"n":' + BIG_INT + "}"}, "params_text"),
        ({"result": "[" + BIG_INT + "]", "status": "completed"}, "result_text"),
        ({"result": '{"n":-' + BIG_INT + "}", "status": "completed"}, "result_text"),
        ({"enqueued_at": LATE}, "enqueue_time"),
        ({"finished_at": EARLY, "started_at": EARLY, "status": "failed"}, "finish_time"),
    ],
)
async def test_a_record_protobuf_cannot_carry_is_served_as_text_or_left_unset(
    relay, redis, keys, fields, served_as
):
    record = dict(fields)
    params = record.pop("params", None)
    job_id = await write_legacy_job(redis, "ws-a", **record)
    if params is not None:
        await redis.hset(KEYS.legacy_job(job_id), "params", params)
    await write_legacy_job(redis, "ws-a")  # a healthy neighbour
    before = await snapshot(redis)
    md = keys.md("ws_a")

    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md)).job
    if served_as.endswith("_text"):
        source = "params" if served_as == "params_text" else "result"
        assert getattr(job, served_as) == (params if source == "params" else fields["result"])
        assert not job.HasField(source)
    else:
        assert not job.HasField(served_as)  # out of Timestamp's range: left unset
    listed, _ = await list_all(relay.jobs, md, page_size=1)
    assert len(listed) == 2 and job_id in {j.job_id for j in listed}  # the workspace stays listable
    assert metric(relay, "relay_undecodable_fields_total", {"field": next(iter(_undecodable(fields)))}) > 0
    assert await snapshot(redis) == before


def _undecodable(fields: dict[str, str]) -> list[str]:
    order = ("params", "result", "enqueued_at", "finished_at")
    return [f for f in order if f in fields and (BIG_INT in fields[f] or fields[f] in (LATE, EARLY))]


def test_decoding_never_raises_on_any_of_these():
    for value in (
        BIG_INT,
        "-" + BIG_INT,
        "1e999",
        "[" * 5000,
        '{"a":' * 40 + "1" + "}" * 40,
        r'{"a":"\udcff"}',
        r'"\ud800"',
    ):
        for name in ("params", "result"):
            job = codec.to_proto({name: value, "enqueued_at": LATE, "finished_at": EARLY})
            assert getattr(job, f"{name}_text") == value or job.HasField(name)


# --- 3. a record of 5,000 fields ---------------------------------------------------------------------
async def test_a_record_of_5000_fields_is_updated_and_claimed_without_losing_its_queue_entry(
    relay, redis, keys
):
    job_id = await write_legacy_job(redis, "ws-a", queue=True)
    await redis.hset(KEYS.legacy_job(job_id), mapping={f"x{n}": "v" for n in range(5000)})
    worker = keys.md("worker")

    claimed = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=worker)
    assert claimed.job.job_id == job_id and claimed.job.status == pb.JOB_STATUS_RUNNING
    assert await redis.hlen(KEYS.legacy_job(job_id)) >= 5000
    update = pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_COMPLETED)
    done = await relay.jobs.UpdateJobStatus(update, metadata=worker)
    assert done.job.status == pb.JOB_STATUS_COMPLETED
    assert (await redis.hget(KEYS.legacy_job(job_id), "status")) == b"completed"
    assert await redis.hlen(KEYS.legacy_job(job_id)) >= 5000


async def test_a_claim_that_fails_after_taking_its_entry_leaves_it_to_the_claim_timeout(
    relay, redis, keys, monkeypatch
):
    job_id = await write_legacy_job(redis, "ws-a", queue=True)
    claims = relay.app.job_store._claims
    claims._timeout = 0.3
    worker = keys.md("worker")

    async def broken(queue, entry):  # type: ignore[no-untyped-def]
        raise RuntimeError("the claim broke after TAKE")

    monkeypatch.setattr(claims, "_mark", broken)
    failed = await refusal(relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=worker))
    assert failed.code == grpc.StatusCode.INTERNAL
    assert await redis.lrange(KEYS.legacy_claiming, 0, -1) == [job_id.encode()]  # not lost
    monkeypatch.undo()

    deadline = 50
    while deadline and await redis.llen(KEYS.legacy_claiming):
        claimed = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=worker)
        if claimed.HasField("job"):
            assert claimed.job.job_id == job_id
            break
        deadline -= 1
        await _sleep_past(0.1)
    else:
        claimed = await relay.jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=worker)
    assert claimed.job.job_id == job_id and claimed.job.status == pb.JOB_STATUS_RUNNING


async def _sleep_past(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)  # the claim timeout is a duration: waiting past it is the condition


# --- 4. pages within a byte budget -------------------------------------------------------------------
@pytest.mark.parametrize("stage", [Stage.READ_NEW, Stage.LEGACY_ONLY])
async def test_pages_of_big_results_stay_under_the_byte_budget_and_list_every_job_once(
    start_relay, redis, keys, stage
):
    relay = await start_relay(stage=stage)
    big = json.dumps("r" * (1024 * 1024 - 64))  # just under the 1 MiB result limit
    ids = [await write_legacy_job(redis, "ws-a", status="completed", result=big) for _ in range(6)]
    if stage is Stage.READ_NEW:
        for job_id in ids:  # indexed new-layout copies, as a backfill leaves them
            raw = await redis.hgetall(KEYS.legacy_job(job_id))
            await redis.hset(KEYS.new_job("ws-a", job_id), mapping=raw)
            member = codec.index_member(job_id, raw[b"enqueued_at"].decode())
            await redis.zadd(KEYS.job_index("ws-a"), {member: 0})
        await redis.set(KEYS.legacy_indexed, "1")
    md = keys.md("ws_a")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await relay.jobs.ListJobs(pb.ListJobsRequest(page_token=token), metadata=md)
        assert reply.ByteSize() <= PAGE_BYTE_BUDGET
        assert reply.jobs, "every page holds at least one job"
        seen += [j.job_id for j in reply.jobs]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert pages >= 3


async def test_a_result_that_would_balloon_in_protobuf_is_served_as_text(relay, redis, keys):
    # 1 MiB of one-digit numbers is 5.5 MiB as a protobuf Value: served as its JSON text instead.
    result = "[" + ",".join(["0"] * (512 * 1024 - 1)) + "]"
    job_id = await write_legacy_job(redis, "ws-a", status="completed", result=result)
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert job.result_text == result and not job.HasField("result")


# --- more ------------------------------------------------------------------------------------------
async def test_a_new_key_that_is_not_a_hash_is_not_found_and_untouched(relay, redis, keys):
    job_id = str(uuid.uuid4())
    key = KEYS.new_job("ws-a", job_id)
    await redis.set(key, "garbage")
    before = await digest(redis, key)
    got = await refusal(relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a")))
    assert got.code == grpc.StatusCode.NOT_FOUND
    update = pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_RUNNING)
    updated = await refusal(relay.jobs.UpdateJobStatus(update, metadata=keys.md("worker")))
    assert updated.code == grpc.StatusCode.NOT_FOUND
    assert await digest(redis, key) == before


async def test_invalid_utf8_and_control_bytes_in_a_record_are_served_not_internal(relay, redis, keys):
    job_id = await write_legacy_job(redis, "ws-a")
    await redis.hset(KEYS.legacy_job(job_id), mapping={"params": b"\xff\xfe{", "action_name": b"\x00\xc3"})
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=keys.md("ws_a"))).job
    assert job.params_text and job.job_id == job_id
