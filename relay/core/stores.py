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

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, NoPermissionError, ResponseError

from relay.core import redis_client
from relay.core.limits import CONTROL_POOL_SIZE, Limits
from relay.core.redis_client import RedisTLS

if TYPE_CHECKING:
    from relay.core.pipelined_connection import PipelinedConnection

log = logging.getLogger("relay.stores")
T = TypeVar("T")

#: What Relay's clients wait for a reply before they give up on a connection.
SOCKET_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0

# --- what is repeated when a connection drops ----------------------------------------------------
#
# redis-py's client-level retry (on by default since redis-py 6, 10 attempts) repeats *any* command whose
# connection failed, writes included: an ENQUEUE whose reply was lost would enqueue the jobs twice, a
# CLAIM would mark a job running that nobody holds. So Relay's clients repeat nothing on their own
# (``NO_CLIENT_RETRY``), and the call sites that are safe to repeat say so with :func:`repeatable`:
#
# - every read of GetJob and ListJobs, each Redis call alone so that a page keeps its progress
#   (READ_RECORDS, READ_SERVED, NOW, LEGACY_KEYS_OF_WORKSPACE, ZREVRANGEBYLEX, ZMSCORE, SCAN, pipelines
#   of ZSCORE and HGETALL: read-only, so a repeat returns what the first would have);
# - the stage refresh and the api key lookups (reads);
# - nothing that writes: ENQUEUE (a repeat without a client_request_id enqueues again), UPDATE_STATUS (a
#   repeat of an applied update bumps the revision or answers JOB_FINISHED), TAKE and CLAIM (a repeat
#   takes a second entry or finds the job already running). Their callers get UNAVAILABLE and may retry
#   as the proto says (Execute with a client_request_id, ClaimJob always).
# The controller's steps keep their own retries (``_retrying`` around scripts idempotent by construction:
# COPY_BATCH skips a key already copied, lease renewal re-sets the same holder).
#
# A connection that Redis closed while it sat in the pool (CLIENT KILL, a timeout) is mostly seen closed
# when the pool hands it out, and connected again before a command is sent; when it is not (its close
# not read yet), the command fails, and :class:`WaitingPool` then closes the idle ones with it, so that
# the repeat of a read starts on a fresh connection.

#: The client never repeats a command by itself.
NO_CLIENT_RETRY = Retry(NoBackoff(), 0)
#: How a repeatable call is repeated: up to 3 more attempts, 10 ms doubling to at most 0.5 s, jittered.
#: (A connection reset can surface as redis-py's ConnectionError or as the socket's own, from a pipeline.)
READ_RETRY = Retry(
    ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3, (RedisConnectionError, ConnectionError)
)


def _worth_repeating(error: Exception) -> bool:
    # A pool that stayed full for its whole timeout is overload, not a dropped connection: waiting again
    # would only make the caller wait past its deadline.
    return not isinstance(error, MaxConnectionsError)


def raise_store_failures(replies: list[Any]) -> list[Any]:
    """Replies of a pipeline run with ``raise_on_error=False``: an error of one key (WRONGTYPE: a legacy
    key that is not a hash) stays a reply, but the store's own failure is raised. A cluster pipeline
    hands back a node's failure (ClusterDownError, a dropped connection) as a reply; read as data it
    would be a TypeError, an INTERNAL, instead of UNAVAILABLE."""
    for reply in replies:
        if isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
            raise reply
    return replies


async def repeatable(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` (safe to repeat: reads only), again with backoff when its connection dropped."""

    async def note(error: Exception) -> None:
        log.info("redis connection dropped; repeating a read", extra={"reason": type(error).__name__})

    return await READ_RETRY.call_with_retry(call, note, is_retryable=_worth_repeating)


class PoolExhausted(MaxConnectionsError):
    """Every connection of the pool stayed busy for the pool's whole timeout (RESOURCE_EXHAUSTED)."""


class WaitingPool(BlockingConnectionPool):
    """A pool that makes a caller wait for a free connection (FIFO), at most ``timeout`` seconds, and
    then raises :class:`PoolExhausted` rather than a bare ConnectionError (which means "Redis is down")."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError | TimeoutError):
                raise PoolExhausted(
                    f"all {self.max_connections} connections stayed busy for {self.timeout} s"
                ) from exc
            raise

    async def release(self, connection: Any) -> None:
        # A connection given back closed failed on a dropped connection (redis-py closes it then). Its
        # idle siblings are most likely dead too (CLIENT KILL, a restart, a failover) and a dead idle
        # connection is not always noticed when handed out (its close may not be read yet): close them
        # now, so that a repeated read starts on a fresh connection instead of the next dead one.
        dropped = not connection.is_connected
        await super().release(connection)
        if not dropped:
            return
        # Taken out of the idle list first (counted as in use meanwhile), so that no caller is handed one
        # while it is being closed; closed ones connect again when next handed out.
        idle = [c for c in self._available_connections if c.is_connected]
        for c in idle:
            self._available_connections.remove(c)
            self._in_use_connections.add(c)
        for c in idle:
            try:
                await c.disconnect()
            finally:
                await super().release(c)


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
    #: Small clients of their own per store, for stage refresh and lease renewal (``control_client_of``).
    control: list[Redis | RedisCluster] = field(default_factory=list, compare=False)
    #: The job service's one connection to a single-Redis ``new`` store, shared by its callers' commands
    #: (``relay.core.pipelined_connection``); None on a cluster and on the embedded store.
    pipelined: PipelinedConnection | None = field(default=None, compare=False)

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
        _CONTROL.pop(id(self.new), None)
        _CONTROL.pop(id(self.legacy), None)
        for client in self.control:
            await client.aclose()
        if self.pipelined is not None:
            await self.pipelined.aclose()
        await self.new.aclose()
        if not self.shared:
            await self.legacy.aclose()


#: The control client of each service client that has one (by the service client's id).
_CONTROL: dict[int, Redis | RedisCluster] = {}


def control_client_of(redis: Redis | RedisCluster) -> Redis | RedisCluster:
    """The small client of its own that stage refresh and lease renewal use beside ``redis`` (the
    services' client), so that callers who hold every connection of its pool never starve them; ``redis``
    itself when it has none (a client made outside :func:`open_stores`, as tests do)."""
    return _CONTROL.get(id(redis), redis)


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


def single_client(
    url: str,
    limits: Limits | None = None,
    *,
    pool_size: int = 0,
    tls: RedisTLS | None = None,
    what: str = "REDIS_URL",
) -> Redis:
    """A client of one Redis with a waiting pool of ``limits.redis_pool_size`` connections (or
    ``pool_size``), repeating no command on its own (see :data:`NO_CLIENT_RETRY`); ``rediss://`` and ACL
    users as :mod:`relay.core.redis_client` reads them."""
    limits = limits or Limits()
    pool = WaitingPool.from_url(
        url,
        **redis_client.tls_options(url, tls, what=what),
        max_connections=pool_size or limits.redis_pool_size,
        timeout=limits.redis_pool_timeout_seconds,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
        retry=NO_CLIENT_RETRY,
    )
    return Redis(connection_pool=pool, retry=NO_CLIENT_RETRY)


async def cluster_client(
    url: str, limits: Limits | None = None, *, pool_size: int = 0, tls: RedisTLS | None = None
) -> RedisCluster:
    """A cluster client. redis-py's cluster nodes have no waiting pool: each node allows as many
    connections as the server runs calls (``max_concurrent_rpcs``) plus slack, so that the node's
    MaxConnectionsError (RESOURCE_EXHAUSTED) cannot happen below the server's own limit. Cluster
    redirections (MOVED, ASK) are followed as always; dropped connections are repeated only where
    :func:`repeatable` says so."""
    limits = limits or Limits()
    client = RedisCluster.from_url(
        url,
        **redis_client.tls_options(url, tls),
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        max_connections=pool_size or limits.max_concurrent_rpcs + 16,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 0),
        # A MOVED reply (a slot moved by a reshard, or taken over in a failover) updates that slot in the
        # client's map. redis-py would otherwise close every connection of the client each 5th MOVED,
        # failing the other calls in flight on them: a busy workspace's reshard cost callers errors.
        reinitialize_steps=0,
    )
    # TRYAGAIN (a multi-key script while its slot's keys are half moved by a reshard) is waited out for
    # about 1.6 s instead of redis-py's 0.4 s, so that moving a busy workspace fails no call; a write
    # told TRYAGAIN was not executed, so repeating it is safe.
    client.RedisClusterRequestTTL = 64
    await client.initialize()
    return client


async def _with_control(
    stores: Stores, urls: tuple[str, str], clustered: bool, limits: Limits, tls: RedisTLS | None
) -> Stores:
    """``stores`` with a control client of its own per store."""
    new_url, legacy_url = urls
    if clustered:
        control_new: Redis | RedisCluster = await cluster_client(
            new_url, limits, pool_size=CONTROL_POOL_SIZE, tls=tls
        )
    else:
        control_new = single_client(new_url, limits, pool_size=CONTROL_POOL_SIZE, tls=tls)
    stores.control.append(control_new)
    _CONTROL[id(stores.new)] = control_new
    if not stores.shared:
        control_legacy = single_client(
            legacy_url, limits, pool_size=CONTROL_POOL_SIZE, tls=tls, what="RELAY_LEGACY_REDIS_URL"
        )
        stores.control.append(control_legacy)
        _CONTROL[id(stores.legacy)] = control_legacy
    return stores


async def open_stores(
    redis_url: str, legacy_url: str = "", tls: RedisTLS | None = None, limits: Limits | None = None
) -> Stores:
    """Connect to the configured stores, detecting a cluster, and refuse what cannot work."""
    # Imported here: the pipelined connection is built on this module's pool settings and errors.
    from relay.core.pipelined_connection import pipelined_connection_for

    limits = limits or Limits.from_env()
    new_is_cluster = await is_cluster_node(redis_url, tls)
    if legacy_url and legacy_url != redis_url:
        if await is_cluster_node(legacy_url, tls):
            raise TopologyError(
                "RELAY_LEGACY_REDIS_URL names a Redis Cluster node: the legacy layout cannot live in a "
                "cluster (its keys carry no workspace, so its multi-key steps would cross slots). Point it "
                "at the single Redis that holds the ai:jobs:* keys"
            )
        if new_is_cluster:
            new: Redis | RedisCluster = await cluster_client(redis_url, limits, tls=tls)
        else:
            new = single_client(redis_url, limits, tls=tls)
        legacy = single_client(legacy_url, limits, tls=tls, what="RELAY_LEGACY_REDIS_URL")
        stores = Stores(new, legacy, pipelined=pipelined_connection_for(new, limits))
    elif new_is_cluster:
        raise TopologyError(
            "REDIS_URL names a Redis Cluster node but RELAY_LEGACY_REDIS_URL is not set: the legacy layout "
            "cannot live in a cluster. Set RELAY_LEGACY_REDIS_URL to the single Redis that holds the "
            "ai:jobs:* keys (the new layout and Relay's state go to the cluster)"
        )
    else:
        new = single_client(redis_url, limits, tls=tls)
        stores = Stores(new, new, pipelined=pipelined_connection_for(new, limits))
    await _with_control(stores, (redis_url, legacy_url or redis_url), new_is_cluster, limits, tls)
    log.info("redis topology", extra={"topology": stores.topology.value})
    return stores
