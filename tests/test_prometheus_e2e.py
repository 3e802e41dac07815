"""A real Prometheus scrapes a real ``relay serve`` during a backfill, and the old system's sample queries
return what the backfill reported.

Prometheus (Debian's package) runs on a free loopback port with a 1 s scrape interval; Relay runs as a
process with /metrics on another. The backfill copies seeded legacy records of one workspace, rate
limited so that it spans several scrapes. The queries are evaluated at the timestamp of the last scrape,
where Prometheus extrapolates nothing: the workspace's counters start at 0 (it is allow-listed), so
``rate(x[W])`` there is exactly the backfill's count divided by W.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis as sync_redis

from harness.ports import free_port
from harness.redis_server import RedisServer
from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import migration_controller_pb2_grpc
from tests.ops_tools import prometheus

WS = "ws_prod"
TO_MIGRATE, ALREADY_THERE, BROKEN, OTHER_WORKSPACE = 480, 120, 24, 200
RATE_LIMIT = 250  # keys/s: about 2.5 s of backfill, several scrapes

# The release notes' sample queries (v1.0.0, "Sample Grafana Queries"), for workspace ws_prod.
NOTES_COMPLETION = (
    f'relay_backfill_migrated_total{{workspace_id="{WS}"}} /\n'
    f'  (relay_backfill_migrated_total{{workspace_id="{WS}"}} +\n'
    f'   relay_backfill_skipped_total{{workspace_id="{WS}",reason="exists"}})'
)
NOTES_ERROR_RATE = f'rate(relay_backfill_errors_total{{workspace_id="{WS}"}}[5m])'
NOTES_THROUGHPUT = f'rate(relay_backfill_scanned_total{{workspace_id="{WS}"}}[1m])'
# The dashboard's completion query (ops/grafana/relay.json): the notes' ratio, summed by workspace.
DASHBOARD_COMPLETION = (
    f'sum by (workspace_id) (relay_backfill_migrated_total{{workspace_id="{WS}"}})'
    f' / (sum by (workspace_id) (relay_backfill_migrated_total{{workspace_id="{WS}"}})'
    f' + sum by (workspace_id) (relay_backfill_skipped_total{{workspace_id="{WS}",reason="exists"}}))'
)


def _record(job_id: str, workspace_id: str) -> dict[str, str]:
    return {
        "job_id": job_id,
        "status": "completed",
        "action_provider": "p",
        "action_name": "a",
        "params": "{}",
        "workspace_id": workspace_id,
        "actor_id": "u",
        "result": "{}",
        "enqueued_at": "2024-05-01T00:00:00+00:00",
    }


def seed(client: sync_redis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    for n in range(TO_MIGRATE):
        pipe.hset(KEYS.legacy_job(f"m-{n}"), mapping=_record(f"m-{n}", WS))
    for n in range(ALREADY_THERE):  # the new copy exists with the same revision: skipped, "exists"
        job_id = f"e-{n}"
        pipe.hset(KEYS.legacy_job(job_id), mapping=_record(job_id, WS))
        pipe.hset(KEYS.new_job(WS, job_id), mapping=_record(job_id, WS))
    for n in range(BROKEN):  # the new key holds another type: the copy fails, an error
        job_id = f"x-{n}"
        pipe.hset(KEYS.legacy_job(job_id), mapping=_record(job_id, WS))
        pipe.set(KEYS.new_job(WS, job_id), "not a hash")
    for n in range(OTHER_WORKSPACE):
        pipe.hset(KEYS.legacy_job(f"o-{n}"), mapping=_record(f"o-{n}", "ws-other"))
    pipe.execute()


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> object:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, expr: str, at: float | None = None) -> list[dict[str, object]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        data = self.api("query", **params)
        return data["result"]  # type: ignore[index,no-any-return]

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        result = self.instant(expr, at)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])  # type: ignore[index]

    def wait_for(self, expr: str, predicate: object, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.scalar(expr)
            if last is not None and predicate(last):  # type: ignore[operator]
                return last
            time.sleep(0.2)
        raise AssertionError(f"{expr} never got there (last: {last})")


@pytest.fixture
def legacy_keys(redis_server: RedisServer) -> None:
    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushdb()
    seed(client)
    client.close()


@pytest.fixture
def relay_process(
    redis_server: RedisServer, legacy_keys: None, tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """``relay serve all`` with /metrics; yields (grpc target, metrics address, admin key)."""
    admin = f"k-admin-{os.urandom(6).hex()}"
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"key": admin, "workspace_id": "", "scopes": ["migration:admin"]}]))
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "RELAY_API_KEYS_FILE": str(keys_file),
        "RELAY_LISTEN": f"127.0.0.1:{grpc_port}",
        "RELAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "RELAY_METRIC_WORKSPACES": WS,
        "RELAY_BACKFILL_LATENCY_CEILING_MS": "0",  # a loaded test machine must not slow it further
    }
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from relay.server import main; main()", "serve", "all"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    target = f"127.0.0.1:{grpc_port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        yield target, f"127.0.0.1:{metrics_port}", admin
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def prometheus_server(relay_process: tuple[str, str, str]) -> Iterator[Prometheus]:
    binary = prometheus()
    _, metrics_address, _ = relay_process
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="relay-prometheus-")
    config = Path(workdir) / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: relay\n    static_configs:\n"
        f"      - targets: ['{metrics_address}']\n"
    )
    log = (Path(workdir) / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(
                    "prometheus did not start: " + (Path(workdir) / "prometheus.log").read_text()
                )
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["rm", "-rf", workdir], check=False)


def test_the_old_systems_queries_return_what_the_backfill_reported(
    relay_process: tuple[str, str, str], prometheus_server: Prometheus
):
    prom = prometheus_server
    target, _, admin = relay_process
    scanned_series = f'relay_backfill_scanned_total{{workspace_id="{WS}"}}'
    # The workspace's series exist at 0 before the backfill, and Prometheus has scraped them.
    prom.wait_for(f"count_over_time({scanned_series}[1m])", lambda n: n >= 1)
    assert prom.scalar(scanned_series) == 0

    events = []
    with grpc.insecure_channel(target) as channel:
        stub = migration_controller_pb2_grpc.MigrationControllerStub(channel)
        request = bpb.StartBackfillRequest(workspace_id=WS, rate_limit=RATE_LIMIT, batch_size=40)
        for event in stub.StartBackfill(
            request, metadata=(("authorization", f"Bearer {admin}"),), timeout=60
        ):
            events.append(event)
    final = events[-1]
    assert final.kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, final
    reported = final.backfill.progress
    assert (reported.migrated, reported.skipped_exists, reported.errors) == (
        TO_MIGRATE,
        ALREADY_THERE,
        BROKEN,
    )
    assert reported.scanned == TO_MIGRATE + ALREADY_THERE + BROKEN

    # Wait for a scrape of the final values, then evaluate at the timestamp of the last scrape.
    prom.wait_for(scanned_series, lambda v: v == reported.scanned)
    time.sleep(1.2)
    [series] = prom.instant(f"{scanned_series}[1m]")
    at = float(series["values"][-1][0])  # type: ignore[index]

    completion = reported.migrated / (reported.migrated + reported.skipped_exists)
    assert prom.scalar(DASHBOARD_COMPLETION, at) == pytest.approx(completion, rel=1e-12)
    # The notes' literal form divides series whose label sets differ (only the skipped one has
    # `reason`), so Prometheus matches nothing; the dashboard sums by workspace_id instead.
    assert prom.instant(NOTES_COMPLETION, at) == []
    assert prom.scalar(NOTES_ERROR_RATE, at) == pytest.approx(reported.errors / 300, rel=1e-9)
    assert prom.scalar(NOTES_THROUGHPUT, at) == pytest.approx(reported.scanned / 60, rel=1e-9)

    # Relay's own gauges saw the backfill run and finish; its batches were timed.
    assert prom.scalar('max_over_time(relay_backfill_state{state="running"}[1m])', at) == 1
    assert prom.scalar('relay_backfill_state{state="completed"}', at) == 1
    assert prom.scalar("relay_backfill_progress_ratio", at) == 1
    batches = prom.scalar("sum(relay_backfill_duration_seconds_count)", at)
    assert batches is not None and batches >= reported.scanned / 40
    p99 = prom.scalar(
        "histogram_quantile(0.99, sum by (le) (rate(relay_backfill_duration_seconds_bucket[1m])))", at
    )
    assert p99 is not None and 0 < p99 <= 60
    # The other workspace's keys were passed over by the filter, and no series was made for them.
    assert prom.instant('relay_backfill_scanned_total{workspace_id="other"}', at) == []
