"""The old system's five backfill metrics exist from the first event of a workspace's backfill.

After a clean backfill (nothing skipped, nothing failed), /metrics has every old name: the errors and
every skip reason at 0 for each workspace label the backfill counted, so ``rate()``, the "errors > 0"
alert and ``absent()`` checks see a series at 0 instead of nothing.
"""

from __future__ import annotations

import asyncio

from relay.core.telemetry import BACKFILL_ZERO_SKIP_REASONS, build_metrics
from relay.v1 import backfill_pb2 as bpb
from tests.backfill_support import events_of, seed_clean
from tests.conftest import Keys, StartRelay
from tests.core.test_telemetry import samples, scrape_http, value

OLD_NAMES = (
    "relay_backfill_scanned_total",
    "relay_backfill_migrated_total",
    "relay_backfill_skipped_total",
    "relay_backfill_errors_total",
    "relay_backfill_duration_seconds_count",
)


def test_a_workspace_label_first_counted_starts_all_its_backfill_series_at_zero():
    metrics = build_metrics(top_n=5, env={})
    metrics.backfill_migrated.add(3, {"workspace_id": "ws-a"})
    text = scrape_http(metrics)
    assert value(text, "relay_backfill_migrated_total", workspace_id="ws-a") == 3
    assert value(text, "relay_backfill_scanned_total", workspace_id="ws-a") == 0
    assert value(text, "relay_backfill_errors_total", workspace_id="ws-a") == 0
    for reason in ("exists", "invalid", "error", "newer", "vanished"):
        assert value(text, "relay_backfill_skipped_total", workspace_id="ws-a", reason=reason) == 0
    # Counting again adds, it does not start over.
    metrics.backfill_errors.add(1, {"workspace_id": "ws-a"})
    metrics.backfill_migrated.add(1, {"workspace_id": "ws-a"})
    text = scrape_http(metrics)
    assert value(text, "relay_backfill_migrated_total", workspace_id="ws-a") == 4
    assert value(text, "relay_backfill_errors_total", workspace_id="ws-a") == 1


async def test_after_a_clean_backfill_every_old_name_is_there_with_errors_at_zero(
    start_relay: StartRelay, redis, keys: Keys
):
    relay = await start_relay()  # no allow-list: workspace labels are earned (top N) or "other"
    await seed_clean(redis, 90)
    events = await events_of(
        relay.controller.StartBackfill(bpb.StartBackfillRequest(batch_size=10), metadata=keys.md("admin"))
    )
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    progress = events[-1].backfill.progress
    assert (progress.scanned, progress.migrated, progress.errors) == (90, 90, 0)

    text = await asyncio.to_thread(scrape_http, relay.app.metrics)
    names = {name for name, _labels in samples(text)}
    assert set(OLD_NAMES) <= names, set(OLD_NAMES) - names
    labels = {
        dict(lbl)["workspace_id"] for name, lbl in samples(text) if name == "relay_backfill_scanned_total"
    }
    assert labels, "no workspace label was counted"
    scanned = sum(value(text, "relay_backfill_scanned_total", workspace_id=w) or 0 for w in labels)
    migrated = sum(value(text, "relay_backfill_migrated_total", workspace_id=w) or 0 for w in labels)
    assert (scanned, migrated) == (90, 90)
    for label in labels:
        assert value(text, "relay_backfill_errors_total", workspace_id=label) == 0, label
        for reason in BACKFILL_ZERO_SKIP_REASONS:
            got = value(text, "relay_backfill_skipped_total", workspace_id=label, reason=reason)
            assert got == 0, (label, reason)
    assert (value(text, "relay_backfill_duration_seconds_count") or 0) >= 1
