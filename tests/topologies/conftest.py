"""Fixtures for the split topologies: the legacy layout on its own single Redis, the new layout on a Redis
Cluster (topology 2) or on another single Redis (topology 3).

The cluster (3 primaries with a replica each) is started once per session, on free ports, by the tests
themselves; every test gets flushed stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

from harness.redis_cluster import RedisCluster as ClusterProcess
from harness.redis_cluster import start_redis_cluster
from tests.conftest import Keys, RedisServer, relay_starter, start_redis_server

SPLITS = ["cluster", "single"]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterProcess]:
    cluster = start_redis_cluster(primaries=3, replicas=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def second_redis_server() -> Iterator[RedisServer]:
    """A second single Redis: the new layout's store of topology 3."""
    srv = start_redis_server()
    yield srv
    srv.stop()


@dataclass
class SplitStores:
    """The two stores of a split topology, as the tests see them."""

    kind: str
    legacy_url: str
    new_url: str
    legacy: Redis
    new: Redis | RedisCluster

    async def flush(self) -> None:
        await self.legacy.flushdb()
        if isinstance(self.new, RedisCluster):
            await self.new.flushall(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self.new.flushdb()


@pytest.fixture(params=SPLITS)
async def split(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis: Redis
) -> AsyncIterator[SplitStores]:
    """Topology 2 (``cluster``) and topology 3 (``single``); ``redis`` (flushed) is the legacy store."""
    if request.param == "cluster":
        cluster: ClusterProcess = request.getfixturevalue("redis_cluster")
        new_url = cluster.url
        new: Redis | RedisCluster = RedisCluster.from_url(new_url)
        await new.initialize()
    else:
        other: RedisServer = request.getfixturevalue("second_redis_server")
        new_url = other.url
        new = Redis.from_url(new_url)
    stores = SplitStores(request.param, redis_server.url, new_url, redis, new)
    await stores.flush()
    yield stores
    await new.aclose()


@pytest.fixture
async def start_split_relay(split: SplitStores, keys_file: tuple[Path, Keys]) -> AsyncIterator:
    """Start Relay servers on free ports against the split stores: ``await start_split_relay(stage=...)``."""
    async with relay_starter(split.new_url, keys_file[0], split.legacy_url) as start:
        yield start
