"""`relay serve` as a process: health, reflection, the embedded store, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from redis.asyncio import Redis

from harness.ports import free_port
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc


def _popen_relay(env: dict[str, str], args: tuple[str, ...], port: int) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env, "RELAY_LISTEN": f"127.0.0.1:{port}", "RELAY_METRICS_LISTEN": ""}
    return subprocess.Popen(
        [sys.executable, "-c", "from relay.server import main; main()", "serve", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _spawn(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = _popen_relay(env, args, port)
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
    return proc, target


async def test_serve_with_no_config_uses_the_embedded_store_and_saves_a_dev_key(tmp_path: Path):
    proc, target = await _spawn({"REDIS_URL": "", "RELAY_CREDENTIALS": str(tmp_path / "creds.json")})
    try:
        saved = json.loads((tmp_path / "creds.json").read_text())
        assert saved["target"] == target
        md = (("authorization", f"Bearer {saved['api_key']}"),)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            reply = await stub.Execute(
                pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]), metadata=md
            )
            job = (await stub.GetJob(pb.GetJobRequest(job_id=reply.job_ids[0]), metadata=md)).job
            assert job.workspace_id == "dev"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b"embedded in-memory store" in err
    assert (tmp_path / "creds.json").stat().st_mode & 0o777 == 0o600


async def test_health_and_reflection_name_every_service(redis_server, keys_file):
    proc, target = await _spawn({"REDIS_URL": redis_server.url, "RELAY_API_KEYS_FILE": str(keys_file[0])})
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "relay.v1.JobService", "relay.v1.MigrationController"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request])):
                names = {s.name for s in reply.list_services_response.service}
                break
            assert {"relay.v1.JobService", "relay.v1.MigrationController", "grpc.health.v1.Health"} <= names
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


@pytest.mark.slow
async def test_sigterm_lets_an_in_flight_call_finish_then_exits_cleanly(redis_server, keys_file, keys):
    proc, target = await _spawn(
        {"REDIS_URL": redis_server.url, "RELAY_API_KEYS_FILE": str(keys_file[0])}, "jobs"
    )
    admin = Redis.from_url(redis_server.url)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            await stub.Execute(
                pb.ExecuteRequest(actions=[pb.Action(provider="p", action="warm")]), metadata=keys.md("ws_a")
            )
            # Redis stalls for a second, so the next call is still in flight when SIGTERM arrives.
            stall = asyncio.create_task(admin.execute_command("DEBUG", "SLEEP", "1"))
            await asyncio.sleep(0.1)
            request = pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")])

            async def in_flight() -> pb.ExecuteResponse:
                return await stub.Execute(request, metadata=keys.md("ws_a"))

            call = asyncio.create_task(in_flight())
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            reply = await call
            await stall
            assert len(reply.job_ids) == 1
        proc.wait(20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        await admin.aclose()
