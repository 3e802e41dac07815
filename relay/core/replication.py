"""Waiting for replicas: ``RELAY_REDIS_WAIT_REPLICAS=N`` makes each mutating RPC wait until N replicas of
the primary it wrote have its writes (Redis WAIT), so that a failover cannot lose an acknowledged write.

WAIT counts the replication offset of the connection it runs on, and a pooled client may have written on
another connection. So the wait writes a marker key in the same slot and runs WAIT right after it, on one
connection: the primary streams its writes to replicas in order, so a replica that has the marker has
every write made before it, the RPC's included. It costs one round trip to a replica per mutating RPC;
without it, Redis replication is asynchronous and a primary that dies can take its last writes along.
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from relay.core.errors import Unavailable
from relay.core.keys import KEYS, KeyLayout


class ReplicaWait:
    def __init__(self, replicas: int, timeout_ms: int, keys: KeyLayout = KEYS):
        self._replicas = replicas
        self._timeout_ms = timeout_ms
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return self._replicas > 0

    async def confirm(self, redis: Redis | RedisCluster, workspace_id: str) -> None:
        """Return once enough replicas of the primary serving ``workspace_id``'s slot have its writes;
        UNAVAILABLE (the write may or may not survive a failover) when they do not confirm in time."""
        if not self.enabled:
            return
        marker = self._keys.replication_marker(workspace_id)
        if isinstance(redis, RedisCluster):
            acked = await self._wait_on_cluster_node(redis, marker)
        else:
            pipe = redis.pipeline(transaction=False)
            pipe.set(marker, "1")
            pipe.execute_command("WAIT", self._replicas, self._timeout_ms)
            _, acked = await pipe.execute()
        if int(acked) < self._replicas:
            raise Unavailable(
                f"{acked} of {self._replicas} replicas confirmed the write within {self._timeout_ms} ms; "
                "it is stored on the primary but may not survive a failover",
                reason="REPLICAS_NOT_CONFIRMED",
            )

    async def _wait_on_cluster_node(self, cluster: RedisCluster, marker: str) -> int:
        node = cluster.get_node_from_key(marker)
        if node is None:
            raise Unavailable("no node serves the workspace's slot", reason="SLOT_NOT_COVERED")
        conn = node.acquire_connection()
        try:
            await conn.connect()
            await conn.send_packed_command(
                conn.pack_commands([("SET", marker, "1"), ("WAIT", self._replicas, self._timeout_ms)])
            )
            await conn.read_response()
            acked = await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        return int(acked)
