"""Metrics: one OpenTelemetry MeterProvider per process, exported for Prometheus on ``/metrics``, and
pushed over OTLP too when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``) is set.

Names and labels are the old system's where it had them (``relay_backfill_*_total{workspace_id}``,
``relay_backfill_duration_seconds``, ``relay_job_read_path_total{path}``), so its dashboards keep
working. The exposition carries no ``otel_scope_*`` labels and no ``target_info``: Prometheus' own
``job``/``instance`` labels identify the process, and series look exactly like the old system's.

Workspace labels are bounded by :class:`WorkspaceLabels`: an allow-list, else the top N workspaces by
traffic, and ``other`` for the rest. Gauges that describe state rather than events (the stage table, the
running backfill) are observable gauges, read at scrape time from in-memory state: a scrape never
touches Redis.

The old system's five backfill metrics exist from the first event of a workspace's backfill: the first
count for a workspace label adds 0 to every one of its series (scanned, migrated, errors, each skip
reason), so ``rate()``, an "errors > 0" alert and ``absent()`` see a series at 0 rather than nothing.

OTLP follows the standard variables: ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default,
or ``grpc``; ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` wins), ``OTEL_METRIC_EXPORT_INTERVAL`` (ms, default
60000) and the exporters' own (headers, certificates, timeout, ``OTEL_EXPORTER_OTLP_INSECURE``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Counter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from relay.core.ids import is_workspace_id
from relay.core.stages import GLOBAL_FIELD, Stage, StageTable

log = logging.getLogger("relay.telemetry")

OTHER = "other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Observations after which a workspace earns its own label (while fewer than N have one).
PROMOTE_AFTER = 3
#: Candidate workspaces counted at most; when the table is full every count is halved and those seen
#: once are dropped, so a flood of one-off workspaces costs bounded memory and never earns a label.
CANDIDATE_WINDOW = 4096
#: The label of the global default in ``relay_stage`` (never a valid workspace id).
GLOBAL_STAGE_LABEL = GLOBAL_FIELD
BACKFILL_STATES = ("running", "paused", "completed", "failed", "cancelled", "orphaned")
#: The ``reason`` values of ``relay_backfill_skipped_total`` (the old system's exists|invalid, and ours).
BACKFILL_SKIP_REASONS = ("exists", "newer", "invalid", "vanished")
#: The skip reasons that start at 0 with a workspace's series: ours, and the old system's ``error``
#: (kept at 0 for its dashboards: Relay counts a record that failed to copy in relay_backfill_errors_total).
BACKFILL_ZERO_SKIP_REASONS = (*BACKFILL_SKIP_REASONS, "error")
READ_PATHS = ("new", "old", "miss")


class WorkspaceLabels:
    """Maps workspace ids to a bounded set of label values.

    With an allow-list, exactly those workspaces keep their own label. Without one, a workspace earns
    its own label once it has been observed ``promote_after`` times (counts decay as newcomers arrive,
    see ``CANDIDATE_WINDOW``), until ``top_n`` have one: the busiest workspaces get there first, while
    one-off workspaces never do. An observation is one call of :meth:`__call__` (the backfill makes one
    per workspace per batch). A label, once earned, stays for the life of the process: a
    counter needs a stable series, and the SDK keeps every series it has exported, so letting labels
    come and go would grow the series without bound. Observations made before a workspace earned its
    label count as ``other``; exact per-workspace totals need the allow-list.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        top_n: int = 20,
        promote_after: int = PROMOTE_AFTER,
        window: int = CANDIDATE_WINDOW,
    ):
        self._allow = frozenset(allow)
        self._top_n = 0 if self._allow else max(top_n, 0)
        self._promote_after = max(promote_after, 1)
        self._window = max(window, 1)
        self._own: set[str] = set(self._allow)
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, workspace_id: str) -> str:
        """The label of one observation of ``workspace_id``; it counts toward earning a label."""
        if workspace_id in self._own:
            return workspace_id
        if len(self._own) >= self._top_n or not is_workspace_id(workspace_id):
            return OTHER
        with self._lock:
            if len(self._own) >= self._top_n:
                return OTHER
            seen = self._counts.get(workspace_id, 0) + 1
            if seen >= self._promote_after:
                self._own.add(workspace_id)
                self._counts.pop(workspace_id, None)
                if len(self._own) >= self._top_n:
                    self._counts.clear()  # no label left to earn
                return workspace_id
            if seen == 1 and len(self._counts) >= self._window:
                self._decay()
            self._counts[workspace_id] = seen
        return OTHER

    def _decay(self) -> None:
        # Halving keeps the busy candidates ahead and drops those seen once: a full table costs one pass
        # per ``window`` newcomers, and a flood of one-off workspaces never piles up.
        self._counts = {w: n // 2 for w, n in self._counts.items() if n > 1}

    @property
    def allow_list(self) -> frozenset[str]:
        return self._allow

    def candidates(self) -> int:
        """How many workspaces are being counted toward a label (never more than the window)."""
        return len(self._counts)

    def labelled(self) -> frozenset[str]:
        """The workspaces that have their own label."""
        with self._lock:
            return frozenset(self._own)


class ZeroFirstCounter:
    """A backfill counter whose first count for a workspace label first starts all of that label's
    backfill series at 0 (see :meth:`Metrics.start_backfill_series`)."""

    def __init__(self, counter: Counter, start: Callable[[str], None]):
        self._counter = counter
        self._start = start

    def add(self, amount: float, attributes: dict[str, str] | None = None) -> None:
        label = (attributes or {}).get("workspace_id")
        if label is not None:
            self._start(label)
        self._counter.add(amount, attributes)


@dataclass(frozen=True, slots=True)
class BackfillGauges:
    """What the running (or last) backfill reports to ``/metrics``, read at scrape time."""

    state: str  # one of BACKFILL_STATES
    progress_ratio: float  # 0 to 1, against total_keys
    total_keys: int
    rate: float  # keys per second over the last few seconds
    eta_seconds: float | None = None
    dry_run: bool = False


#: Returns the current backfill's gauges, or None when this process runs none. Called on the scrape
#: thread: it must only read in-memory state (no Redis, no awaiting), quickly.
BackfillWatch = Callable[[], BackfillGauges | None]


class HasStageTable(Protocol):
    table: StageTable


@dataclass
class Metrics:
    """The process's instruments. Methods take plain values; labels are bounded here."""

    provider: MeterProvider
    registry: CollectorRegistry
    workspace_label: WorkspaceLabels
    _stage_views: list[HasStageTable] = field(default_factory=list)
    _backfill_watches: list[BackfillWatch] = field(default_factory=list)
    _backfill_started: set[str] = field(default_factory=set)
    _backfill_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        meter = self.provider.get_meter("relay")
        c = meter.create_counter
        h = meter.create_histogram
        g = meter.create_observable_gauge
        # --- the old system's names ----------------------------------------------------------
        self._backfill_counters = (
            c("relay_backfill_scanned", description="Legacy keys examined"),
            c("relay_backfill_migrated", description="Legacy records copied"),
            c("relay_backfill_errors", description="Legacy records that failed to copy"),
        )
        self._backfill_skipped = c("relay_backfill_skipped", description="Legacy records skipped, by reason")
        start = self.start_backfill_series
        self.backfill_scanned, self.backfill_migrated, self.backfill_errors = (
            ZeroFirstCounter(counter, start) for counter in self._backfill_counters
        )
        self.backfill_skipped = ZeroFirstCounter(self._backfill_skipped, start)
        self.backfill_duration = h(
            "relay_backfill_duration_seconds", unit="s", description="Time to copy one backfill batch"
        )
        self.read_path = c("relay_job_read_path", description="Job reads by the layout that answered")
        self.dual_write = c("relay_dual_write", description="Job writes by the layouts written and result")
        # --- added -----------------------------------------------------------------------------
        self.shadow_reads = c("relay_shadow_reads", description="Shadow reads comparing both layouts")
        self.foreign_records = c(
            "relay_foreign_records", description="Records under a key of another workspace, served to nobody"
        )
        self.undecodable_fields = c(
            "relay_undecodable_fields",
            description="Stored fields protobuf cannot carry, served as text or left unset, by field",
        )
        self.replica_repairs = c(
            "relay_replica_repairs", description="Replica writes a crash left owed, replayed by the repairer"
        )
        self.rpc_duration = h(
            "relay_rpc_duration_seconds", unit="s", description="RPC handling time by method and status code"
        )
        self.redis_duration = h(
            "relay_redis_duration_seconds", unit="s", description="Redis call time by command and result"
        )
        g("relay_stage", [self._observe_stage], description="Current stage (1-5) per workspace; * is default")
        g("relay_stage_workspaces", [self._observe_stage_overrides], description="Workspace overrides")
        g("relay_backfill_state", [self._observe_backfill_state], description="1 for the backfill's state")
        g("relay_backfill_progress_ratio", [self._backfill_value("progress")], description="Done, 0 to 1")
        g("relay_backfill_total_keys", [self._backfill_value("total")], description="Keys to scan, estimated")
        g("relay_backfill_rate_keys_per_second", [self._backfill_value("rate")], description="Recent rate")
        g("relay_backfill_eta_seconds", [self._backfill_value("eta")], description="Estimated time left")

        self._start_known_series_at_zero()

    def _start_known_series_at_zero(self) -> None:
        # Series whose labels are known up front exist (at 0) from the first scrape, so rate() and
        # increase() count from the very first event: the read paths, and the backfill series of the
        # allow-listed workspaces.
        for path in READ_PATHS:
            self.read_path.add(0, {"path": path})
        for workspace_id in sorted(self.workspace_label.allow_list):
            self.start_backfill_series(workspace_id)

    def start_backfill_series(self, label: str) -> None:
        """Every backfill series of one workspace label at 0 (once per label; later calls do nothing)."""
        if label in self._backfill_started:
            return
        with self._backfill_lock:
            if label in self._backfill_started:
                return
            ws = {"workspace_id": label}
            for counter in self._backfill_counters:
                counter.add(0, ws)
            for reason in BACKFILL_ZERO_SKIP_REASONS:
                self._backfill_skipped.add(0, {**ws, "reason": reason})
            self._backfill_started.add(label)

    def shutdown(self) -> None:
        """Stop the provider: a last push to OTLP when one is configured (at most a few seconds)."""
        try:
            self.provider.shutdown(timeout_millis=5000)
        except Exception as exc:  # an unreachable collector must not turn a clean exit into a crash
            log.warning("metrics shutdown failed: %s", type(exc).__name__)

    def ws(self, workspace_id: str) -> str:
        """The label value for one observation of ``workspace_id``'s traffic."""
        return self.workspace_label(workspace_id)

    # --- sources of the observable gauges ----------------------------------------------------
    def watch_stages(self, view: HasStageTable) -> None:
        """Report ``view.table`` (a replica's cached stage table) as ``relay_stage``."""
        self._stage_views.append(view)

    def watch_backfill(self, watch: BackfillWatch) -> Callable[[], None]:
        """Report what ``watch()`` returns as the backfill gauges; returns a function that stops it."""
        self._backfill_watches.append(watch)

        def unwatch() -> None:
            if watch in self._backfill_watches:
                self._backfill_watches.remove(watch)

        return unwatch

    def _current_backfill(self) -> BackfillGauges | None:
        for watch in list(self._backfill_watches):
            try:
                gauges = watch()
            except Exception as exc:  # a broken source must not break the scrape
                log.warning("backfill gauge source failed: %s", type(exc).__name__)
                continue
            if gauges is not None:
                return gauges
        return None

    def _observe_stage(self, _options: CallbackOptions) -> Iterator[Observation]:
        if not self._stage_views:
            return
        table = self._stage_views[-1].table
        yield Observation(int(table.default.stage), {"workspace_id": GLOBAL_STAGE_LABEL})
        for workspace_id in sorted(self.workspace_label.labelled()):
            yield Observation(int(table.for_workspace(workspace_id).stage), {"workspace_id": workspace_id})

    def _observe_stage_overrides(self, _options: CallbackOptions) -> Iterator[Observation]:
        if not self._stage_views:
            return
        counts = dict.fromkeys(Stage, 0)
        for setting in list(self._stage_views[-1].table.overrides.values()):
            counts[setting.stage] += 1
        for stage, count in counts.items():
            yield Observation(count, {"stage": stage.name})

    def _observe_backfill_state(self, _options: CallbackOptions) -> Iterator[Observation]:
        gauges = self._current_backfill()
        if gauges is None:
            return
        dry_run = "true" if gauges.dry_run else "false"
        for state in BACKFILL_STATES:
            yield Observation(1 if state == gauges.state else 0, {"state": state, "dry_run": dry_run})

    def _backfill_value(self, which: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(_options: CallbackOptions) -> Iterator[Observation]:
            gauges = self._current_backfill()
            if gauges is None:
                return
            value: float | None = {
                "progress": gauges.progress_ratio,
                "total": float(gauges.total_keys),
                "rate": gauges.rate,
                "eta": gauges.eta_seconds,
            }[which]
            if value is not None:
                yield Observation(value)

        return observe


def otlp_reader(env: dict[str, str] | None = None) -> MetricReader | None:
    """The OTLP push reader the standard variables ask for, or None when no endpoint is set."""
    env = dict(os.environ if env is None else env)
    signal_endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    base_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not (signal_endpoint or base_endpoint):
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    # The endpoint is passed as the standard says it is read; headers, certificates, compression and
    # timeout the exporters read from the environment themselves.
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        exporter = Grpc(endpoint=signal_endpoint or base_endpoint)
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        # A base endpoint gets the signal's path; a metrics endpoint is used as it is.
        exporter = Http(endpoint=signal_endpoint or base_endpoint.rstrip("/") + "/v1/metrics")
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, not {protocol!r}")
    interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=float(interval) if interval else 60_000.0
    )
    log.info("pushing metrics over OTLP (%s) every %s ms", protocol, interval or "60000")
    return reader


def build_metrics(
    allow: Iterable[str] = (),
    top_n: int = 20,
    service: str = "relay",
    env: dict[str, str] | None = None,
) -> Metrics:
    """The process's metrics: the Prometheus registry, and OTLP push when ``env`` (default: the
    process environment) sets an OTLP endpoint."""
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    readers: list[MetricReader] = [reader]
    pushed = otlp_reader(env)
    if pushed is not None:
        readers.append(pushed)
    views = [
        View(
            instrument_name="*duration_seconds",
            aggregation=ExplicitBucketHistogramAggregation(boundaries=LATENCY_BUCKETS),
        )
    ]
    provider = MeterProvider(
        metric_readers=readers, views=views, resource=Resource.create({"service.name": service})
    )
    return Metrics(provider=provider, registry=registry, workspace_label=WorkspaceLabels(allow, top_n))


def serve_metrics(metrics: Metrics, listen: str) -> Any | None:
    """Serve ``/metrics`` on ``host:port`` (``[::1]:port`` for IPv6); an empty address turns it off.

    Returns the HTTP server (``shutdown()`` stops it), or None when off.
    """
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server, _thread = start_http_server(int(port), addr=host, registry=metrics.registry)
    return server
