"""Verification, cleanup, reverse copy and the stage walk when the legacy layout and the new one live in
different stores (topologies 2 and 3): every primary of the cluster is scanned, owed writes are reported
and block NEW_ONLY, and cleanup deletes a legacy key only when the new store holds an equal or newer copy.
"""

from __future__ import annotations

import json
import time
import uuid

from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import cleanup_pb2 as cpb
from relay.v1 import job_service_pb2 as jpb
from relay.v1 import verification_pb2 as vpb
from tests.backfill_support import legacy_record
from tests.job_testkit import execute, refusal
from tests.migration_testkit import SETTLE, cleanup, reverse_copy, set_stage, settle, verify
from tests.topologies.split_support import backfill, record

WORKSPACES = ("ws-a", "ws-b")


async def _seed(
    split, count: int, status: str = "completed", workspaces: tuple[str, ...] = WORKSPACES
) -> dict[str, str]:
    """``count`` legacy records over ``workspaces``: job id -> workspace."""
    out = {}
    pipe = split.legacy.pipeline(transaction=False)
    for n in range(count):
        job_id, ws = str(uuid.uuid4()), workspaces[n % len(workspaces)]
        pipe.hset(KEYS.legacy_job(job_id), mapping=legacy_record(job_id, ws, n, status=status))
        out[job_id] = ws
    await pipe.execute()
    return out


def _owed_far_ahead(job_id: str) -> str:
    """An outbox entry the repairer leaves alone for now: its write began (says ``t``) in the future."""
    return json.dumps({"op": "put", "rev": 1, "t": time.time() + 3600})


async def test_verify_is_clean_after_a_backfill_and_reports_differences_and_owed_writes(
    start_split_relay, split, keys
):
    spread = tuple(f"ws-{n}" for n in range(9))
    jobs = await _seed(split, 300, workspaces=spread)
    if split.kind == "cluster":  # the records land on more than one primary: each must be scanned
        nodes = {split.new.get_node_from_key(KEYS.new_job(ws, "x")).name for ws in spread}
        assert len(nodes) > 1
    relay = await start_split_relay(stage=Stage.DUAL_WRITE, stage_settle_seconds=SETTLE)
    md = keys.md("admin")
    assert (await backfill(relay.controller, md, batch_size=64))[-1].backfill.progress.migrated == 300
    result = (await verify(relay.controller, md, batch_size=50))[-1].verification
    assert result.state == vpb.VERIFICATION_STATE_COMPLETED
    assert result.clean and result.legacy_covered and result.outbox_pending == 0
    assert result.scanned_legacy == 300 and result.scanned_new == 300  # every primary was scanned
    assert sum(w.matching for w in result.workspaces) == 300

    differing, missing = list(jobs)[:2]
    await split.new.hset(KEYS.new_job(jobs[differing], differing), "result", '{"other":1}')
    await split.new.delete(KEYS.new_job(jobs[missing], missing))
    only_new = str(uuid.uuid4())
    await split.new.hset(KEYS.new_job("ws-b", only_new), mapping=legacy_record(only_new, "ws-b"))
    await split.legacy.hset(KEYS.legacy_outbox, f"{jobs[differing]}:{differing}", _owed_far_ahead(differing))
    result = (await verify(relay.controller, md))[-1].verification
    assert not result.clean and result.outbox_pending == 1
    by_ws = {w.workspace_id: w for w in result.workspaces}
    assert sum(w.differing for w in result.workspaces) == 1
    assert sum(w.missing_in_new for w in result.workspaces) == 1
    assert by_ws["ws-b"].only_in_new == 1
    assert differing in by_ws[jobs[differing]].sample_job_ids
    assert by_ws[jobs[differing]].differing_fields["result"] == 1


async def test_new_only_is_refused_while_a_write_is_owed(start_split_relay, split, keys):
    await _seed(split, 20)
    relay = await start_split_relay(stage=Stage.DUAL_WRITE, stage_settle_seconds=SETTLE)
    md = keys.md("admin")
    await backfill(relay.controller, md)
    await set_stage(relay.controller, md, Stage.READ_NEW)
    assert (await verify(relay.controller, md))[-1].verification.clean
    job_id = str(uuid.uuid4())
    await split.new.zadd(KEYS.outbox_workspaces, {"ws-a": time.time()})
    await split.new.hset(KEYS.outbox("ws-a"), job_id, _owed_far_ahead(job_id))
    refused = await refusal(set_stage(relay.controller, md, Stage.NEW_ONLY))
    assert refused.reason == "WRITES_OWED" and "owed" in refused.message
    await split.new.hdel(KEYS.outbox("ws-a"), job_id)
    await set_stage(relay.controller, md, Stage.NEW_ONLY)


async def test_the_repairer_settles_a_write_a_crash_left_owed(start_split_relay, split, keys):
    relay = await start_split_relay(stage=Stage.DUAL_WRITE)
    [job_id] = await execute(relay.jobs, keys.md("ws_a"))
    # A crash after the first step: the legacy copy moved on, the new one did not, the outbox says so.
    await split.legacy.hset(KEYS.legacy_job(job_id), mapping={"status": "running", "rev": "2"})
    owed = json.dumps({"op": "put", "rev": 2, "t": time.time() - 5})
    await split.legacy.hset(KEYS.legacy_outbox, f"ws-a:{job_id}", owed)

    from tests.backfill_support import wait_until

    async def settled() -> bool:
        return not await split.legacy.hexists(KEYS.legacy_outbox, f"ws-a:{job_id}")

    await wait_until(settled, within=10)
    assert (await record(split.new, KEYS.new_job("ws-a", job_id)))["status"] == "running"


async def test_cleanup_deletes_only_legacy_keys_whose_new_copy_is_equal_or_newer(
    start_split_relay, split, keys
):
    jobs = await _seed(split, 200)
    relay = await start_split_relay(stage=Stage.DUAL_WRITE, stage_settle_seconds=SETTLE)
    md = keys.md("admin")
    await backfill(relay.controller, md, batch_size=50)
    await set_stage(relay.controller, md, Stage.READ_NEW)
    assert (await verify(relay.controller, md))[-1].verification.clean
    await set_stage(relay.controller, md, Stage.NEW_ONLY)
    await settle()
    ids = list(jobs)
    newer, legacy_newer, differing, gone_new = ids[:4]
    await split.new.hset(KEYS.new_job(jobs[newer], newer), mapping={"rev": "4", "status": "failed"})
    await split.legacy.hset(KEYS.legacy_job(legacy_newer), "rev", "3")
    await split.legacy.hset(KEYS.legacy_job(differing), "actor_id", "changed")
    await split.new.delete(KEYS.new_job(jobs[gone_new], gone_new))
    dry = (await cleanup(relay.controller, md, dry_run=True))[-1].cleanup
    assert dry.done == 197 and dry.dry_run
    assert await split.legacy.exists(*[KEYS.legacy_job(j) for j in ids]) == 200

    result = (await cleanup(relay.controller, md, batch_size=40))[-1].cleanup
    assert result.state == cpb.CLEANUP_STATE_COMPLETED, result.reason
    assert result.done == 197
    assert (result.kept_legacy_newer, result.kept_differing, result.kept_missing_new) == (1, 1, 1)
    left = {j for j in ids if await split.legacy.exists(KEYS.legacy_job(j))}
    assert left == {legacy_newer, differing, gone_new}


async def test_the_stage_walk_forward_to_legacy_cleaned_and_back(start_split_relay, split, keys):
    jobs = await _seed(split, 120)
    relay = await start_split_relay(stage=Stage.LEGACY_ONLY, stage_settle_seconds=SETTLE)
    md, ws_md = keys.md("admin"), {"ws-a": keys.md("ws_a"), "ws-b": keys.md("ws_b")}
    written: dict[str, str] = {}

    async def write_and_read_all(stage: Stage) -> None:
        for ws in WORKSPACES:
            [job_id] = await execute(relay.jobs, ws_md[ws])
            written[job_id] = ws
        for job_id, ws in {**jobs, **written}.items():
            reply = await relay.jobs.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=ws_md[ws])
            assert reply.job.job_id == job_id, (stage.name, job_id)

    async def walk(stage: Stage) -> None:
        await set_stage(relay.controller, md, stage)
        await settle()
        await write_and_read_all(stage)

    await write_and_read_all(Stage.LEGACY_ONLY)
    await walk(Stage.DUAL_WRITE)
    assert (await backfill(relay.controller, md, batch_size=50))[-1].backfill.progress.errors == 0
    await walk(Stage.READ_NEW)
    assert (await verify(relay.controller, md))[-1].verification.clean
    await walk(Stage.NEW_ONLY)
    # Jobs enqueued by Relay are pending: a worker finishes them, so cleanup may delete their legacy copy.
    for job_id, ws in written.items():
        await relay.jobs.UpdateJobStatus(
            jpb.UpdateJobStatusRequest(job_id=job_id, workspace_id=ws, status=jpb.JOB_STATUS_COMPLETED),
            metadata=keys.md("worker"),
        )
    result = (await cleanup(relay.controller, md))[-1].cleanup
    assert result.state == cpb.CLEANUP_STATE_COMPLETED and result.kept_missing_new == 0, result
    assert [k async for k in split.legacy.scan_iter(match="ai:jobs:*")] == []
    await walk(Stage.LEGACY_CLEANED)

    # And back: every step that reads the legacy layout again needs a reverse copy first.
    assert (await refusal(set_stage(relay.controller, md, Stage.READ_NEW))).reason == "REVERSE_COPY_REQUIRED"
    copied = (await reverse_copy(relay.controller, md))[-1].cleanup
    assert copied.done == len(jobs) + len(written)
    await walk(Stage.READ_NEW)
    await walk(Stage.DUAL_WRITE)
    await reverse_copy(relay.controller, md)
    await walk(Stage.LEGACY_ONLY)
    for job_id in {**jobs, **written}:
        assert await split.legacy.exists(KEYS.legacy_job(job_id)), job_id


async def test_reverse_copy_across_stores_only_moves_legacy_copies_forwards(start_split_relay, split, keys):
    relay = await start_split_relay(stage=Stage.READ_NEW, role="controller")
    base = legacy_record("x", "ws-a")
    cases = {"only-new": None, "older": "1", "newer": "4", "same-rev-other-data": "3"}
    for job_id, legacy_rev in cases.items():
        await split.new.hset(
            KEYS.new_job("ws-a", job_id), mapping={**base, "job_id": job_id, "rev": "3", "status": "failed"}
        )
        if legacy_rev is not None:
            await split.legacy.hset(
                KEYS.legacy_job(job_id), mapping={**base, "job_id": job_id, "rev": legacy_rev, "stale": "x"}
            )
    result = (await reverse_copy(relay.controller, keys.md("admin"), batch_size=2))[-1].cleanup
    assert result.state == cpb.CLEANUP_STATE_COMPLETED
    assert (result.done, result.kept_legacy_newer, result.kept_differing) == (2, 1, 1)
    for job_id in ("only-new", "older"):
        legacy = await record(split.legacy, KEYS.legacy_job(job_id))
        assert legacy == await record(split.new, KEYS.new_job("ws-a", job_id))  # whole: "stale" is gone
    assert (await record(split.legacy, KEYS.legacy_job("newer")))["rev"] == "4"
    assert (await record(split.legacy, KEYS.legacy_job("same-rev-other-data")))["status"] == "pending"
