"""The headline: live traffic through two JobService replicas while the stage walks the whole migration.

Forward from LEGACY_ONLY to LEGACY_CLEANED (dual-write, a real backfill, read-new with shadow reads, a
verification, new-only, a cleanup), and on another dataset forward and back again to LEGACY_ONLY (reverse
copies on each side of the resume). At every moment no acknowledged write is lost or hidden, every read
returns the latest acknowledged state, and no workspace sees another's jobs.
"""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.v1 import backfill_pb2, cleanup_pb2, stage_pb2
from relay.v1 import migration_controller_pb2 as mpb
from tests.live_traffic import Traffic
from tests.migration_testkit import SETTLE, cleanup, get_stage, reverse_copy, set_stage, settle, verify


async def setup(start_relay, keys, redis) -> tuple[object, Traffic]:
    replicas = [await start_relay(stage=Stage.LEGACY_ONLY, role="jobs") for _ in range(2)]
    relay = await start_relay(stage=Stage.LEGACY_ONLY, role="controller", stage_settle_seconds=SETTLE)
    created = await relay.controller.CreateApiKey(
        mpb.CreateApiKeyRequest(workspace_id="ws-c", scopes=["actions:execute", "actions:preview"]),
        metadata=keys.md("admin"),
    )
    md = {
        "ws-a": keys.md("ws_a"),
        "ws-b": keys.md("ws_b"),
        "ws-c": (("authorization", f"Bearer {created.api_key}"),),
    }
    traffic = Traffic(replicas, md, keys.md("worker"))
    await traffic.seed_legacy(redis, per_workspace=40)
    return relay, traffic


async def step(relay, md, stage: Stage, traffic: Traffic) -> None:
    traffic.phase = f"switching to {stage.name}"
    await set_stage(relay.controller, md, stage, shadow=stage is Stage.READ_NEW)
    await settle()
    traffic.phase = stage.name
    await asyncio.sleep(0.2)  # traffic in the new stage


async def backfill(relay, md) -> None:
    call = relay.controller.StartBackfill(backfill_pb2.StartBackfillRequest(batch_size=50), metadata=md)
    ended = (backfill_pb2.BACKFILL_EVENT_KIND_COMPLETED, backfill_pb2.BACKFILL_EVENT_KIND_FAILED)
    async for event in call:
        if event.kind in ended:
            assert event.kind == backfill_pb2.BACKFILL_EVENT_KIND_COMPLETED, event
            break
    call.cancel()


async def legacy_jobs_settled(redis) -> None:
    """Wait until workers have taken every job that still has a legacy copy (cleanup keeps pending ones).

    A job's state is its new copy's: in NEW_ONLY updates no longer reach the legacy copy.
    """
    for _ in range(600):
        keys = [key async for key in redis.scan_iter(match="ai:jobs:*", count=1000)]
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "workspace_id")
        workspaces = await pipe.execute(raise_on_error=False)
        pipe = redis.pipeline(transaction=False)
        for key, ws in zip(keys, workspaces, strict=True):
            if isinstance(ws, bytes):
                pipe.hget(KEYS.new_job(ws.decode(), key.decode()[len("ai:jobs:") :]), "status")
        pending = sum(1 for status in await pipe.execute() if status == b"pending")
        if not pending:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pending} jobs with a legacy copy still pending")


async def walk_forward(relay, md, traffic: Traffic, redis) -> None:
    await asyncio.sleep(0.3)  # legacy-only traffic
    await step(relay, md, Stage.DUAL_WRITE, traffic)
    traffic.phase = "backfill"
    await backfill(relay, md)
    traffic.phase = "backfill done"
    await step(relay, md, Stage.READ_NEW, traffic)
    result = (await verify(relay.controller, md, batch_size=100))[-1].verification
    assert result.clean, result
    await step(relay, md, Stage.NEW_ONLY, traffic)
    await legacy_jobs_settled(redis)
    done = (await cleanup(relay.controller, md, batch_size=100))[-1].cleanup
    assert done.state == cleanup_pb2.CLEANUP_STATE_COMPLETED, done
    assert (done.kept_missing_new, done.kept_legacy_newer, done.kept_differing, done.kept_pending) == (
        0,
        0,
        0,
        0,
    )
    await step(relay, md, Stage.LEGACY_CLEANED, traffic)
    assert [k for k in await redis.keys("ai:jobs:*")] == [KEYS.legacy_job("not-a-job").encode()]


def shadow_reads(traffic: Traffic) -> dict[str, float]:
    counts: dict[str, float] = {}
    for replica in traffic.replicas:
        for family in text_string_to_metric_families(generate_latest(replica.app.metrics.registry).decode()):
            for sample in family.samples:
                if sample.name == "relay_shadow_reads_total":
                    result = sample.labels["result"]
                    counts[result] = counts.get(result, 0) + sample.value
    return counts


async def test_live_traffic_survives_the_walk_from_legacy_only_to_legacy_cleaned(start_relay, keys, redis):
    relay, traffic = await setup(start_relay, keys, redis)
    md = keys.md("admin")
    traffic.start()
    try:
        await walk_forward(relay, md, traffic, redis)
        await asyncio.sleep(0.3)
    finally:
        await traffic.stop()
    await traffic.check_at_rest()
    assert traffic.failures == []
    assert (await get_stage(relay.controller, md)).stage == stage_pb2.STAGE_LEGACY_CLEANED
    assert min(traffic.ops.get(op, 0) for op in ("execute", "claim", "get", "list", "probe")) > 5, traffic.ops
    assert shadow_reads(traffic).get("match", 0) > 0


async def test_live_traffic_survives_the_walk_back_to_legacy_only(start_relay, keys, redis):
    relay, traffic = await setup(start_relay, keys, redis)
    md = keys.md("admin")
    traffic.start()
    try:
        await walk_forward(relay, md, traffic, redis)
        copied = (await reverse_copy(relay.controller, md, batch_size=100))[-1].cleanup
        assert copied.state == cleanup_pb2.CLEANUP_STATE_COMPLETED and copied.done > 0
        await step(relay, md, Stage.READ_NEW, traffic)  # legacy writes resume
        await reverse_copy(relay.controller, md, batch_size=100)  # what was enqueued new-only meanwhile
        await step(relay, md, Stage.DUAL_WRITE, traffic)
        await step(relay, md, Stage.LEGACY_ONLY, traffic)
        await asyncio.sleep(0.3)
    finally:
        await traffic.stop()
    assert (await get_stage(relay.controller, md)).stage == stage_pb2.STAGE_LEGACY_ONLY
    await traffic.check_at_rest()  # read through the legacy layout alone
    assert traffic.failures == []
