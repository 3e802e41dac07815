"""The gRPC service config relayctl uses (relay/service_config.json): deadlines on every unary method,
UNAVAILABLE retried on the methods safe to repeat, and Execute retried only with a client_request_id.

A stand-in JobService answers UNAVAILABLE to the first call of each method, then OK: a retried method
succeeds in one client call (two arrive), one that is not retried fails (one arrives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from harness.ports import free_port
from relay.clients.connection import EXECUTE, Connection, service_config
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc, migration_controller_pb2

REPO = Path(__file__).resolve().parent.parent


class FlakyJobs(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _first_fails(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            first = self.calls[method] == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")

    def Execute(self, request, context):  # type: ignore[no-untyped-def]
        self._first_fails("Execute", context)
        return pb.ExecuteResponse(job_ids=["j-1"], queue_depth=1)

    def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        self._first_fails("GetJob", context)
        return pb.GetJobResponse(job=pb.Job(job_id=request.job_id, workspace_id="dev"))


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyJobs, str]]:
    port = free_port()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = FlakyJobs()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, srv)
    srv.add_insecure_port(f"127.0.0.1:{port}")
    srv.start()
    yield servicer, f"127.0.0.1:{port}"
    srv.stop(0)


def _names(entry: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(n["service"], n.get("method", "")) for n in entry["name"]}


def test_the_config_covers_every_unary_method_and_retries_only_safe_ones():
    config = service_config()
    assert config == json.loads((REPO / "relay" / "service_config.json").read_text())
    timeouts: set[tuple[str, str]] = set()
    retried: set[tuple[str, str]] = set()
    for entry in config["methodConfig"]:
        if "timeout" in entry:
            timeouts |= _names(entry)
        if "retryPolicy" in entry:
            assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
            retried |= _names(entry)
    for descriptor in (pb.DESCRIPTOR, migration_controller_pb2.DESCRIPTOR):
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                key = (service.full_name, method.name)
                if not method.server_streaming:
                    assert key in timeouts, f"{key} has no deadline"
    safe = {
        ("relay.v1.JobService", "GetJob"),
        ("relay.v1.JobService", "ListJobs"),
        ("relay.v1.MigrationController", "GetBackfill"),
        ("relay.v1.MigrationController", "WatchBackfill"),
        ("relay.v1.MigrationController", "GetStage"),
        ("relay.v1.MigrationController", "GetVerification"),
    }
    assert retried == safe
    with_crid = service_config(retry_execute=True)
    retried_with_crid = set().union(*(_names(e) for e in with_crid["methodConfig"] if "retryPolicy" in e))
    assert retried_with_crid == safe | {(EXECUTE["service"], EXECUTE["method"])}
    # Execute keeps its deadline either way, and is named once.
    execute_entries = [e for e in with_crid["methodConfig"] if (EXECUTE["service"], "Execute") in _names(e)]
    assert len(execute_entries) == 1 and execute_entries[0]["timeout"] == "10s"


async def test_reads_are_retried_and_execute_only_with_a_client_request_id(flaky: tuple[FlakyJobs, str]):
    servicer, target = flaky
    conn = Connection(target, "k")
    async with conn.channel() as channel:
        stub = conn.jobs(channel)
        job = await stub.GetJob(pb.GetJobRequest(job_id="j-1"))
        assert job.job.job_id == "j-1" and servicer.calls["GetJob"] == 2
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Execute(pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls["Execute"] == 1
    servicer.calls.clear()
    async with conn.channel(retry_execute=True) as channel:
        reply = await conn.jobs(channel).Execute(
            pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a", client_request_id="r-1")])
        )
        assert reply.job_ids == ["j-1"] and servicer.calls["Execute"] == 2


def test_relayctl_retries_execute_when_it_sets_a_client_request_id(
    flaky: tuple[FlakyJobs, str], tmp_path: Path
):
    servicer, target = flaky
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
        "RELAY_CREDENTIALS": str(tmp_path / "none.json"),
    }

    def relayctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from relay.clients.relayctl import main; main()",
                "--target",
                target,
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    plain = relayctl("jobs", "execute", "--provider", "p", "--action", "a")
    assert plain.returncode == 5 and "UNAVAILABLE" in plain.stderr
    servicer.calls.clear()
    with_id = relayctl("jobs", "execute", "--provider", "p", "--action", "a", "--client-request-id", "r-2")
    assert with_id.returncode == 0, with_id.stderr
    assert "job_id: j-1" in with_id.stdout and servicer.calls["Execute"] == 2
