"""The backfill's outcome counters, tallied per batch and added to OpenTelemetry at most once a second.

An OpenTelemetry ``add`` costs as much as copying a few keys, and scrapes are seconds apart.
"""

from __future__ import annotations

import time
from collections import Counter

from relay.controller.backfill.batch import Batch
from relay.controller.backfill.state import SKIP_REASON_OF_OUTCOME
from relay.core.telemetry import Metrics

METRICS_EVERY_SECONDS = 1.0


class OutcomeTally:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._tally: Counter[tuple[str, str]] = Counter()
        self._tallied = time.monotonic()

    def count(self, batch: Batch, outcomes: str, seconds: float) -> None:
        """Tally a batch's outcomes by workspace label."""
        m = self._metrics
        labels: dict[str, str] = {}
        for item, outcome in zip(batch.items, outcomes, strict=True):
            label = labels.get(item.workspace_id)
            if label is None:
                label = labels[item.workspace_id] = m.ws(item.workspace_id)
            self._tally[(label, outcome)] += 1
        m.backfill_duration.record(seconds)
        if time.monotonic() - self._tallied >= METRICS_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        m = self._metrics
        for (label, outcome), n in self._tally.items():
            ws = {"workspace_id": label}
            m.backfill_scanned.add(n, ws)
            if outcome == "m":
                m.backfill_migrated.add(n, ws)
            elif outcome == "x":
                m.backfill_errors.add(n, ws)
            else:
                m.backfill_skipped.add(n, {**ws, "reason": SKIP_REASON_OF_OUTCOME[outcome]})
        self._tally.clear()
        self._tallied = time.monotonic()
