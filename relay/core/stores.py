"""The two Redis stores Relay talks to, and the topology they make.

``REDIS_URL`` names the store of the new layout and of Relay's own state; it may be any node of a Redis
Cluster, which is detected (``INFO cluster``). ``RELAY_LEGACY_REDIS_URL`` names the single Redis that holds
the legacy layout; unset, the legacy layout lives beside the new one. Three topologies follow:

1. ``shared``: one Redis holds both layouts, and every RPC is one atomic script over both;
2. ``split`` onto a cluster: the new layout on a Redis Cluster, the legacy one on its own Redis;
3. ``split`` onto a single Redis: the code path of (2) without cluster routing.

In a split topology no transaction spans the stores: writes follow the protocol in ``docs/two-stores.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from relay.core import redis_client
from relay.core.redis_client import RedisTLS

log = logging.getLogger("relay.stores")


class Topology(StrEnum):
    SHARED = "shared"
    SPLIT_CLUSTER = "split-cluster"
    SPLIT_SINGLE = "split-single"


class TopologyError(ValueError):
    """A configuration of stores Relay refuses to start with."""


@dataclass(frozen=True, slots=True)
class Stores:
    """The store of the new layout and Relay's state (``new``) and of the legacy layout (``legacy``).

    In the shared topology both are the same client object.
    """

    new: Redis | RedisCluster
    legacy: Redis

    @property
    def shared(self) -> bool:
        return self.new is self.legacy

    @property
    def clustered(self) -> bool:
        return isinstance(self.new, RedisCluster)

    @property
    def topology(self) -> Topology:
        if self.shared:
            return Topology.SHARED
        return Topology.SPLIT_CLUSTER if self.clustered else Topology.SPLIT_SINGLE

    @classmethod
    def single(cls, redis: Redis) -> Stores:
        """Both layouts on one Redis (topology 1)."""
        return cls(redis, redis)

    async def aclose(self) -> None:
        await self.new.aclose()
        if not self.shared:
            await self.legacy.aclose()


async def is_cluster_node(url: str, tls: RedisTLS | None = None) -> bool:
    """Whether the Redis at ``url`` runs in cluster mode."""
    probe = redis_client.connect(url, tls)
    try:
        try:
            info = await probe.info("cluster")
            return bool(int(info.get("cluster_enabled", 0)))
        except NoPermissionError:
            pass  # an ACL user without INFO: CLUSTER INFO tells as well
        try:
            await probe.execute_command("CLUSTER", "INFO")
            return True
        except NoPermissionError:
            log.warning(
                "this Redis user may run neither INFO nor CLUSTER INFO: taking the store for a single Redis "
                "(allow +info or +cluster|info to have a cluster detected)",
                extra={"reason": "noperm-cluster-info"},
            )
            return False
        except ResponseError:  # "cluster support disabled"
            return False
    finally:
        await probe.aclose()


def single_client(url: str, tls: RedisTLS | None = None, what: str = "REDIS_URL") -> Redis:
    return redis_client.connect(url, tls, what=what)


async def cluster_client(url: str, tls: RedisTLS | None = None) -> RedisCluster:
    """A cluster client that finds every node from any one; ``rediss://`` and ACL users as for one Redis."""
    client = redis_client.connect_cluster(url, tls)
    await client.initialize()
    return client


async def open_stores(redis_url: str, legacy_url: str = "", tls: RedisTLS | None = None) -> Stores:
    """Connect to the configured stores, detecting a cluster, and refuse what cannot work."""
    new_is_cluster = await is_cluster_node(redis_url, tls)
    if legacy_url and legacy_url != redis_url:
        if await is_cluster_node(legacy_url, tls):
            raise TopologyError(
                "RELAY_LEGACY_REDIS_URL names a Redis Cluster node: the legacy layout cannot live in a "
                "cluster (its keys carry no workspace, so its multi-key steps would cross slots). Point it "
                "at the single Redis that holds the ai:jobs:* keys"
            )
        new = await cluster_client(redis_url, tls) if new_is_cluster else single_client(redis_url, tls)
        stores = Stores(new, single_client(legacy_url, tls, what="RELAY_LEGACY_REDIS_URL"))
    elif new_is_cluster:
        raise TopologyError(
            "REDIS_URL names a Redis Cluster node but RELAY_LEGACY_REDIS_URL is not set: the legacy layout "
            "cannot live in a cluster. Set RELAY_LEGACY_REDIS_URL to the single Redis that holds the "
            "ai:jobs:* keys (the new layout and Relay's state go to the cluster)"
        )
    else:
        stores = Stores.single(single_client(redis_url, tls))
    log.info("redis topology", extra={"topology": stores.topology.value})
    return stores
