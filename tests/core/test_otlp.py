"""OTLP push beside /metrics: an OTLP receiver started here (the collector's MetricsService, from the
opentelemetry-proto package) gets the metrics, the backfill's old names with errors at 0 among them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from prometheus_client import generate_latest

from harness.ports import free_port
from relay import server
from relay.core.config import Settings
from relay.core.telemetry import build_metrics, otlp_reader
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import migration_controller_pb2_grpc
from tests.backfill_support import events_of, seed_clean
from tests.conftest import Keys, RedisServer


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps every data point it is sent: name -> list of (attributes, value)."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.requests = 0
        self.changed = threading.Condition()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self.changed:
            self.requests += 1
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attrs = {a.key: a.value.string_value for a in point.attributes}
                            if kind == "histogram":
                                number = float(point.count)
                            else:
                                number = (
                                    point.as_double if point.HasField("as_double") else float(point.as_int)
                                )
                            self.points.setdefault(metric.name, []).append((attrs, number))
            self.changed.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def wait_for(self, predicate, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def last(self, name: str, **attrs: str) -> float | None:
        with self.changed:
            found = [v for a, v in self.points.get(name, []) if all(a.get(k) == w for k, w in attrs.items())]
        return found[-1] if found else None


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    port = free_port()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sink = Receiver()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(sink, grpc_server)
    grpc_server.add_insecure_port(f"127.0.0.1:{port}")
    grpc_server.start()
    yield sink, port
    grpc_server.stop(0)


def test_no_endpoint_no_push_and_a_bad_protocol_is_refused():
    assert otlp_reader({}) is None
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        otlp_reader({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "x"})


async def test_a_backfill_pushes_the_old_names_over_otlp_with_errors_at_zero(
    receiver: tuple[Receiver, int], redis_server: RedisServer, redis, keys_file: tuple[Path, Keys]
):
    sink, port = receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
    }
    metrics = build_metrics(env=env)
    settings = Settings.from_env(
        {},
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        api_keys_file=str(keys_file[0]),
        metrics_listen="",
    )
    app = await server.start(settings, "all", metrics=metrics)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        await seed_clean(redis, 40)
        controller = migration_controller_pb2_grpc.MigrationControllerStub(channel)
        events = await events_of(
            controller.StartBackfill(
                bpb.StartBackfillRequest(batch_size=10), metadata=keys_file[1].md("admin")
            )
        )
        assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED

        def migrated_all() -> bool:
            by_label: dict[str, float] = {}
            for attrs, number in sink.points.get("relay_backfill_migrated", []):
                by_label[attrs["workspace_id"]] = number  # cumulative: the last point of each label
            return sum(by_label.values()) == 40

        assert await asyncio.to_thread(sink.wait_for, migrated_all), sorted(sink.points)
        # Prometheus' /metrics still serves at the same time.
        assert b"relay_backfill_migrated_total" in generate_latest(metrics.registry)
    finally:
        await channel.close()
        await app.stop(0.5)
        metrics.shutdown()
    for name in ("relay_backfill_scanned", "relay_backfill_migrated", "relay_backfill_skipped"):
        assert name in sink.points, name
    assert "relay_backfill_duration_seconds" in sink.points
    labels = {attrs["workspace_id"] for attrs, _ in sink.points["relay_backfill_migrated"]}
    for label in labels:
        assert sink.last("relay_backfill_errors", workspace_id=label) == 0
        for reason in ("exists", "invalid", "error"):
            assert sink.last("relay_backfill_skipped", workspace_id=label, reason=reason) == 0


def test_relay_serve_pushes_when_the_standard_variables_are_set(
    receiver: tuple[Receiver, int], tmp_path: Path
):
    sink, otlp_port = receiver
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OTEL_"))},
        "REDIS_URL": "",
        "RELAY_LISTEN": f"127.0.0.1:{port}",
        "RELAY_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_CREDENTIALS": str(tmp_path / "credentials.json"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from relay.server import main; main()", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Serving first (SIGTERM drains only from then on), then the pushes.
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        channel.close()
        # The read-path series start at 0 in every process: they arrive without any traffic.
        assert sink.wait_for(lambda: "relay_job_read_path" in sink.points, 30), proc.poll()
        assert sink.last("relay_job_read_path", path="new") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert b"pushing metrics over OTLP (grpc)" in err


def test_the_default_protocol_is_http_protobuf_to_the_base_endpoint_plus_v1_metrics():
    got: list[tuple[str, metrics_service_pb2.ExportMetricsServiceRequest]] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = metrics_service_pb2.ExportMetricsServiceRequest()
            request.ParseFromString(body)
            got.append((self.path, request))
            arrived.set()
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        metrics = build_metrics(
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http.server_address[1]}",
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
            }
        )
        metrics.backfill_migrated.add(2, {"workspace_id": "ws-a"})
        assert arrived.wait(20)
        metrics.shutdown()
    finally:
        http.shutdown()
        http.server_close()
    path, request = got[-1]
    assert path == "/v1/metrics"
    names = {m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"relay_backfill_migrated", "relay_backfill_errors", "relay_backfill_skipped"} <= names
