"""Metrics: one OpenTelemetry MeterProvider per process, exported for Prometheus on ``/metrics``.

Names and labels are the old system's where it had them, so its dashboards keep working. Workspace
labels are bounded by :class:`WorkspaceLabels`: an allow-list, else the first N workspaces seen, and
``other`` for the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

OTHER = "other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkspaceLabels:
    """Maps workspace ids to a bounded set of label values."""

    def __init__(self, allow: Iterable[str] = (), top_n: int = 20):
        self._allow = frozenset(allow)
        self._top_n = 0 if self._allow else top_n
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, workspace_id: str) -> str:
        if not workspace_id:
            return OTHER
        if self._allow:
            return workspace_id if workspace_id in self._allow else OTHER
        if workspace_id in self._seen:
            return workspace_id
        with self._lock:
            if len(self._seen) < self._top_n:
                self._seen.add(workspace_id)
                return workspace_id
        return OTHER


@dataclass
class Metrics:
    """The process's instruments. Methods take plain values; labels are bounded here."""

    provider: MeterProvider
    registry: CollectorRegistry
    workspace_label: WorkspaceLabels
    _instruments: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        meter = self.provider.get_meter("relay")
        c = meter.create_counter
        h = meter.create_histogram
        self.read_path = c("relay_job_read_path", description="Job reads by the layout that answered")
        self.dual_write = c("relay_dual_write", description="Job writes by the layouts written and result")
        self.shadow_reads = c("relay_shadow_reads", description="Shadow reads comparing both layouts")
        self.rpc_duration = h("relay_rpc_duration_seconds", unit="s", description="RPC handling time")
        self.redis_duration = h("relay_redis_duration_seconds", unit="s", description="Redis call time")
        self.backfill_scanned = c("relay_backfill_scanned", description="Legacy keys examined")
        self.backfill_migrated = c("relay_backfill_migrated", description="Legacy records copied")
        self.backfill_skipped = c("relay_backfill_skipped", description="Legacy records skipped, by reason")
        self.backfill_errors = c("relay_backfill_errors", description="Legacy records that failed to copy")
        self.backfill_duration = h(
            "relay_backfill_duration_seconds", unit="s", description="Time to copy one backfill batch"
        )

    def ws(self, workspace_id: str) -> str:
        return self.workspace_label(workspace_id)


def build_metrics(allow: Iterable[str] = (), top_n: int = 20, service: str = "relay") -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    views = [
        View(
            instrument_name="*duration_seconds",
            aggregation=ExplicitBucketHistogramAggregation(boundaries=LATENCY_BUCKETS),
        )
    ]
    provider = MeterProvider(
        metric_readers=[reader], views=views, resource=Resource.create({"service.name": service})
    )
    return Metrics(provider=provider, registry=registry, workspace_label=WorkspaceLabels(allow, top_n))


def serve_metrics(metrics: Metrics, listen: str) -> object | None:
    """Serve ``/metrics`` on ``host:port``; an empty address turns it off."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=metrics.registry)
    return server
