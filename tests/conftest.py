"""Shared fixtures: a private Redis, a running Relay on a free port, and api keys.

Tests never touch a Redis they did not start: a private ``redis-server`` on a free port is started once
per session (set RELAY_TEST_REDIS_URL to use another one, which is flushed). Each test gets a flushed
database.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from harness.ports import free_port  # noqa: F401  (test modules import it from here)
from harness.redis_server import DEBUG_COMMAND, RedisServer, RedisServerMissing
from harness.redis_server import start_redis_server as harness_start_redis
from relay import server
from relay.core.config import Settings
from relay.core.stages import Stage
from relay.v1 import job_service_pb2_grpc, migration_controller_pb2_grpc


def start_redis_server(extra: list[str] | None = None) -> RedisServer:
    """The suite's private redis-server (DEBUG allowed); the test is skipped where redis-server is missing."""
    try:
        return harness_start_redis([*DEBUG_COMMAND, *(extra or [])])
    except RedisServerMissing:
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    url = os.environ.get("RELAY_TEST_REDIS_URL")
    if url:
        yield RedisServer(0, None, "", url=url)
        return
    srv = start_redis_server()
    yield srv
    srv.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@dataclass
class Keys:
    """Raw api keys by name, as written to the key file of a test server."""

    raw: dict[str, str]

    def md(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.raw[name]}"),)


#: name -> (workspace_id, scopes)
KEY_SPECS: dict[str, tuple[str, list[str]]] = {
    "ws_a": ("ws-a", ["actions:execute", "actions:preview"]),
    "ws_b": ("ws-b", ["actions:execute", "actions:preview"]),
    "ws_a_preview": ("ws-a", ["actions:preview"]),
    "ws_a_execute": ("ws-a", ["actions:execute"]),
    "worker": ("", ["jobs:work"]),
    "admin": ("", ["migration:admin"]),
}


@pytest.fixture(scope="session")
def keys_file() -> Iterator[tuple[Path, Keys]]:
    raw = {name: f"test-key-{name}-{os.urandom(8).hex()}" for name in KEY_SPECS}
    entries = [
        {"key": raw[name], "workspace_id": ws, "scopes": scopes} for name, (ws, scopes) in KEY_SPECS.items()
    ]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "keys.json"
        path.write_text(json.dumps(entries))
        yield path, Keys(raw)


@pytest.fixture
def keys(keys_file: tuple[Path, Keys]) -> Keys:
    return keys_file[1]


@dataclass
class Running:
    app: server.App
    channel: grpc.aio.Channel
    jobs: job_service_pb2_grpc.JobServiceStub
    controller: migration_controller_pb2_grpc.MigrationControllerStub
    target: str


StartRelay = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_relay(
    redis_server: RedisServer, redis: Redis, keys_file: tuple[Path, Keys]
) -> AsyncIterator[StartRelay]:
    """Start Relay servers on free ports against the private Redis: ``await start_relay(stage=...)``."""
    async with relay_starter(redis_server.url, keys_file[0]) as start:
        yield start


@contextlib.asynccontextmanager
async def relay_starter(
    redis_url: str, api_keys_file: Path, legacy_redis_url: str = ""
) -> AsyncIterator[StartRelay]:
    """``start(stage=..., role=..., **settings)`` for Relay servers on free ports against these stores; all
    of them are stopped at the end."""
    started: list[Running] = []

    async def start(stage: Stage = Stage.READ_NEW, role: str = "all", **overrides: object) -> Running:
        settings = Settings.from_env(
            {},
            listen="127.0.0.1:0",
            redis_url=redis_url,
            legacy_redis_url=legacy_redis_url,
            api_keys_file=str(api_keys_file),
            metrics_listen="",
            default_stage=stage,
            **{"stage_refresh_seconds": 0.1, **overrides},
        )
        app = await server.start(settings, role)
        target = f"127.0.0.1:{app.port}"
        channel = grpc.aio.insecure_channel(target)
        running = Running(
            app,
            channel,
            job_service_pb2_grpc.JobServiceStub(channel),
            migration_controller_pb2_grpc.MigrationControllerStub(channel),
            target,
        )
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            await running.channel.close()
            await running.app.stop(0.5)


@pytest.fixture
async def relay(start_relay: StartRelay) -> Running:
    """One Relay (JobService and controller) in the read-new stage."""
    return await start_relay()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: longer tests, still part of the normal run")
