"""/metrics speaks the old system's names and labels, adds what operators need, and stays bounded."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import Counter

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ResponseError

from harness.ports import free_port
from relay.core.config import Settings
from relay.core.keys import KEYS
from relay.core.stages import Stage, StageSetting
from relay.core.telemetry import (
    BACKFILL_ZERO_SKIP_REASONS,
    CANDIDATE_WINDOW,
    OTHER,
    PROMOTE_AFTER,
    BackfillGauges,
    Metrics,
    WorkspaceLabels,
    build_metrics,
    serve_metrics,
)
from relay.v1 import job_service_pb2 as pb
from tests.conftest import Keys, StartRelay
from tests.migration_testkit import force_stage


def scrape(metrics: Metrics) -> str:
    """The exposition text /metrics serves."""
    return generate_latest(metrics.registry).decode()


def scrape_http(metrics: Metrics) -> str:
    """GET /metrics over HTTP, the way Prometheus does."""
    port = free_port()
    server = serve_metrics(metrics, f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return reply.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


# --- names and labels on the wire -------------------------------------------------------------------


def test_the_old_systems_backfill_series_are_exposed_exactly():
    metrics = build_metrics(allow=["ws_prod"])
    ws = metrics.ws("ws_prod")
    metrics.backfill_scanned.add(10, {"workspace_id": ws})
    metrics.backfill_migrated.add(7, {"workspace_id": ws})
    metrics.backfill_skipped.add(2, {"workspace_id": ws, "reason": "exists"})
    metrics.backfill_errors.add(1, {"workspace_id": ws})
    metrics.backfill_duration.record(0.3)
    text = scrape_http(metrics)

    assert 'relay_backfill_scanned_total{workspace_id="ws_prod"} 10.0' in text
    assert 'relay_backfill_migrated_total{workspace_id="ws_prod"} 7.0' in text
    assert 'relay_backfill_skipped_total{reason="exists",workspace_id="ws_prod"} 2.0' in text
    assert 'relay_backfill_errors_total{workspace_id="ws_prod"} 1.0' in text
    assert "# TYPE relay_backfill_duration_seconds histogram" in text
    assert 'relay_backfill_duration_seconds_bucket{le="0.5"} 1.0' in text
    assert "relay_backfill_duration_seconds_count 1.0" in text
    # Nothing the old series did not have: no scope labels, no target_info.
    assert "otel_scope" not in text and "target_info" not in text


def test_known_series_start_at_zero_so_rates_count_from_the_first_event():
    text = scrape(build_metrics(allow=["ws_prod"]))
    for path in ("new", "old", "miss"):
        assert value(text, "relay_job_read_path_total", path=path) == 0
    for name in (
        "relay_backfill_scanned_total",
        "relay_backfill_migrated_total",
        "relay_backfill_errors_total",
    ):
        assert value(text, name, workspace_id="ws_prod") == 0
    for reason in ("exists", "newer", "invalid", "vanished"):
        assert value(text, "relay_backfill_skipped_total", workspace_id="ws_prod", reason=reason) == 0
    assert 'workspace_id="other"' not in text


async def test_rpcs_count_read_paths_dual_writes_and_redis_calls(start_relay: StartRelay, keys: Keys):
    relay = await start_relay(stage=Stage.READ_NEW)
    md = keys.md("ws_a")
    reply = await relay.jobs.Execute(
        pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=md
    )
    await relay.jobs.GetJob(pb.GetJobRequest(job_id=reply.job_ids[0]), metadata=md)
    # A legacy-only job (written before the migration) is read from the old layout.
    await relay.app.redis.hset("ai:jobs:legacy-1", mapping={"job_id": "legacy-1", "workspace_id": "ws-a"})
    await relay.jobs.GetJob(pb.GetJobRequest(job_id="legacy-1"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await relay.jobs.GetJob(pb.GetJobRequest(job_id="missing"), metadata=md)
    # Pipelines and transactions are timed as one call each; a failed command counts as an error.
    redis = relay.app.redis
    await redis.set("ai:relay:test-string", "x")
    for transaction in (True, False):
        pipe = redis.pipeline(transaction=transaction)
        pipe.get("ai:relay:test-string")
        assert await pipe.execute() == [b"x"]
    with pytest.raises(ResponseError):
        await redis.hgetall("ai:relay:test-string")
    text = scrape(relay.app.metrics)

    for path in ("new", "old", "miss"):
        assert value(text, "relay_job_read_path_total", path=path) == 1, path
    assert value(text, "relay_dual_write_total", layouts="both", result="ok") == 1
    assert value(text, "relay_redis_duration_seconds_count", command="EVALSHA", result="ok") >= 1
    assert value(text, "relay_redis_duration_seconds_count", command="MULTI", result="ok") >= 1
    assert value(text, "relay_redis_duration_seconds_count", command="PIPELINE", result="ok") >= 1
    assert value(text, "relay_redis_duration_seconds_count", command="HGETALL", result="error") == 1
    # Only command names become labels, never a key.
    redis_labels = {dict(k[1]).get("command") for k in samples(text) if k[0].startswith("relay_redis_")}
    assert all(re.fullmatch(r"[A-Z ]+", c) for c in redis_labels if c)


async def test_shadow_reads_count_matches_and_mismatches(start_relay: StartRelay, keys: Keys):
    relay = await start_relay(stage=Stage.READ_NEW)
    await force_stage(relay.app.redis, "", StageSetting(Stage.READ_NEW, shadow_reads=True))
    await relay.app.stages.refresh()
    md = keys.md("ws_a")
    job_ids = (
        await relay.jobs.Execute(
            pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")] * 2), metadata=md
        )
    ).job_ids
    await relay.app.redis.hset(f"ai:jobs:{job_ids[1]}", "action_name", "edited")
    for job_id in job_ids:
        await relay.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md)
    text = scrape(relay.app.metrics)
    assert value(text, "relay_shadow_reads_total", result="match") == 1
    assert value(text, "relay_shadow_reads_total", result="mismatch") == 1


async def test_the_stage_of_each_labelled_workspace_and_the_default_are_gauges(start_relay: StartRelay):
    relay = await start_relay(stage=Stage.DUAL_WRITE, metric_workspaces=("ws-a",))
    await force_stage(relay.app.redis, "ws-a", StageSetting(Stage.NEW_ONLY))
    await force_stage(relay.app.redis, "ws-zz", StageSetting(Stage.READ_NEW))
    await relay.app.stages.refresh()
    text = scrape(relay.app.metrics)
    assert value(text, "relay_stage", workspace_id="*") == int(Stage.DUAL_WRITE)
    assert value(text, "relay_stage", workspace_id="ws-a") == int(Stage.NEW_ONLY)
    assert value(text, "relay_stage", workspace_id="ws-zz") is None  # not labelled: counted below
    assert value(text, "relay_stage_workspaces", stage="READ_NEW") == 1
    assert value(text, "relay_stage_workspaces", stage="NEW_ONLY") == 1
    assert value(text, "relay_stage_workspaces", stage="LEGACY_ONLY") == 0


def test_backfill_state_and_progress_come_from_the_registered_source():
    metrics = build_metrics()
    current: list[BackfillGauges | None] = [None]
    unwatch = metrics.watch_backfill(lambda: current[0])
    assert "relay_backfill_state{" not in scrape(metrics)  # no backfill, no gauges

    current[0] = BackfillGauges("running", 0.25, 4000, 812.5, eta_seconds=3.7)
    text = scrape(metrics)
    assert value(text, "relay_backfill_state", state="running", dry_run="false") == 1
    assert value(text, "relay_backfill_state", state="completed", dry_run="false") == 0
    assert value(text, "relay_backfill_progress_ratio") == 0.25
    assert value(text, "relay_backfill_total_keys") == 4000
    assert value(text, "relay_backfill_rate_keys_per_second") == 812.5
    assert value(text, "relay_backfill_eta_seconds") == 3.7

    current[0] = BackfillGauges("completed", 1.0, 4000, 0.0, dry_run=True)
    text = scrape(metrics)
    assert value(text, "relay_backfill_state", state="completed", dry_run="true") == 1
    assert value(text, "relay_backfill_state", state="running", dry_run="false") is None
    assert value(text, "relay_backfill_eta_seconds") is None
    unwatch()
    assert "relay_backfill_progress_ratio " not in scrape(metrics)


def test_a_failing_backfill_source_does_not_break_the_scrape():
    metrics = build_metrics()

    def broken() -> BackfillGauges:
        raise RuntimeError("engine is gone")

    metrics.watch_backfill(broken)
    metrics.read_path.add(1, {"path": "new"})
    assert 'relay_job_read_path_total{path="new"} 1.0' in scrape(metrics)


def test_an_empty_address_turns_the_endpoint_off_and_the_top_n_is_configurable():
    assert serve_metrics(build_metrics(), "") is None
    settings = Settings.from_env({"RELAY_METRIC_WORKSPACE_TOP_N": "5", "RELAY_METRIC_WORKSPACES": "a, b"})
    assert settings.metric_workspace_top_n == 5 and settings.metric_workspaces == ("a", "b")


# --- bounded workspace labels ----------------------------------------------------------------------


def test_an_allow_list_keeps_exactly_its_workspaces():
    labels = WorkspaceLabels(allow=["ws-a", "ws-b"])
    assert [labels(w) for w in ("ws-a", "ws-b", "ws-c", "")] == ["ws-a", "ws-b", OTHER, OTHER]
    assert all(labels("ws-c") == OTHER for _ in range(100))


def test_the_busiest_workspaces_earn_their_label_and_one_off_workspaces_never_do():
    labels = WorkspaceLabels(top_n=3, promote_after=10)
    seen: Counter[str] = Counter()
    for i in range(20_000):
        seen[labels(f"once-{i}")] += 1  # a flood of workspaces seen once each
        if i % 50 == 0:
            for heavy in ("heavy-1", "heavy-2", "heavy-3", "heavy-4"):
                seen[labels(heavy)] += 1
    assert labels.labelled() == {"heavy-1", "heavy-2", "heavy-3"}
    assert seen[OTHER] > 20_000 - 10
    # A label once earned is kept; the fourth heavy workspace found no room left.
    assert labels("heavy-1") == "heavy-1" and labels("heavy-4") == OTHER


def test_a_workspace_in_every_batch_earns_its_label_among_many_small_ones_in_bounded_memory():
    labels = WorkspaceLabels(top_n=5)  # the defaults: promote after 3 observations, window of 4096
    big_labels = []
    for batch in range(20):  # a backfill: each batch of 1,000 keys meets 1,000 one-off workspaces and "big"
        for n in range(1000):
            assert labels(f"small-{batch}-{n}") == OTHER
        big_labels.append(labels("big"))
        assert labels.candidates() <= CANDIDATE_WINDOW
    assert labels.labelled() == {"big"}
    assert big_labels.index("big") == PROMOTE_AFTER - 1  # its third observation earned it


def test_only_valid_workspace_ids_can_earn_a_label():
    labels = WorkspaceLabels(top_n=5, promote_after=1)
    assert labels("Bad Id!") == OTHER and labels("x" * 40) == OTHER and labels("ok-1") == "ok-1"


async def test_a_flood_of_ten_thousand_workspaces_leaves_a_bounded_number_of_series(start_relay: StartRelay):
    relay = await start_relay(metric_workspace_top_n=20)
    metrics = relay.app.metrics
    flood = [f"ws-{i:05d}" for i in range(10_000)]
    busy = [f"busy-{i:02d}" for i in range(25)]  # more busy workspaces than there are labels
    given: Counter[str] = Counter()

    def observe(ws: str) -> None:
        label = metrics.ws(ws)
        given[label] += 1
        metrics.backfill_scanned.add(1, {"workspace_id": label})
        metrics.backfill_skipped.add(1, {"workspace_id": label, "reason": "exists"})

    for _round in range(2):
        for n, ws in enumerate(flood):
            observe(ws)
            if n % 100 == 0:
                for ws_busy in busy:
                    observe(ws_busy)
    # Every workspace also has its own stage override.
    await relay.app.redis.hset(
        KEYS.stage, mapping={ws: StageSetting(Stage.NEW_ONLY).to_json() for ws in flood + busy}
    )
    await relay.app.stages.refresh()
    text = await asyncio.to_thread(scrape_http, metrics)

    by_metric: Counter[str] = Counter()
    workspaces: set[str] = set()
    for name, labels in samples(text):
        labels_dict = dict(labels)
        if "workspace_id" in labels_dict:
            by_metric[name] += 1
            workspaces.add(labels_dict["workspace_id"])
    assert by_metric["relay_backfill_scanned_total"] == 21  # 20 workspaces and "other"
    assert by_metric["relay_backfill_skipped_total"] == 21 * len(BACKFILL_ZERO_SKIP_REASONS)  # all from zero
    assert by_metric["relay_stage"] == 21  # the default ("*") and the 20 labelled workspaces
    assert workspaces - {OTHER, "*"} == metrics.workspace_label.labelled()
    assert metrics.workspace_label.labelled() < set(busy)  # the busy ones, not the flood
    # Nothing is lost: each observation is in exactly one series.
    for label, count in given.items():
        assert value(text, "relay_backfill_scanned_total", workspace_id=label) == count
    assert value(text, "relay_stage_workspaces", stage="NEW_ONLY") == 10_025
    assert len(text.splitlines()) < 1_000
