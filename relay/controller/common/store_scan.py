"""SCAN over every primary of the new store, one resumable position for the whole store.

A Redis Cluster's keys are spread over its primaries and SCAN sees one node's keys only, so a sweep of
the new layout visits the primaries one after the other (sorted by address, so a resume visits them in
the same order). The position packs the node's index above ``NODE_SHIFT`` bits and that node's SCAN
cursor below (a cursor indexes a hash table, far below 2**48 entries). On a single Redis it is the cursor.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis, RedisCluster

from relay.controller.common.redis_run import redis_run_id
from relay.core.redis_client import DEFAULT_OPTIONS
from relay.core.stores import Stores

NODE_SHIFT = 48
CURSOR_MASK = (1 << NODE_SHIFT) - 1


class StoreScan:
    def __init__(self, redis: Redis | RedisCluster):
        self._redis = redis
        self._nodes: dict[str, Redis] = {}

    async def nodes(self) -> list[Redis]:
        """A plain client per primary (the store itself when it is a single Redis)."""
        if not isinstance(self._redis, RedisCluster):
            return [self._redis]
        kwargs = self._redis.connection_kwargs
        out = []
        for node in sorted(self._redis.get_primaries(), key=lambda n: n.name):
            client = self._nodes.get(node.name)
            if client is None:
                # The cluster client's own credentials and TLS settings, for a plain client of one node.
                tls = {k: v for k, v in kwargs.items() if k.startswith("ssl_")}
                if "SSL" in getattr(kwargs.get("connection_class"), "__name__", ""):
                    tls["ssl"] = True
                client = self._nodes[node.name] = Redis(
                    host=node.host,
                    port=node.port,
                    username=kwargs.get("username"),
                    password=kwargs.get("password"),
                    socket_timeout=DEFAULT_OPTIONS["socket_timeout"],
                    socket_connect_timeout=DEFAULT_OPTIONS["socket_connect_timeout"],
                    **tls,
                )
            out.append(client)
        return out

    async def scan(self, position: int, match: str, count: int) -> tuple[int, list[bytes]]:
        """One SCAN step from ``position``: (the next position, 0 when every primary was scanned; keys)."""
        nodes = await self.nodes()
        index, cursor = position >> NODE_SHIFT, position & CURSOR_MASK
        if index >= len(nodes):
            return 0, []
        cursor, keys = await nodes[index].scan(cursor, match=match, count=count)
        if int(cursor) != 0:
            return (index << NODE_SHIFT) | int(cursor), keys
        index += 1
        return (0 if index >= len(nodes) else index << NODE_SHIFT), keys

    async def run_id(self) -> str:
        """The run_ids of every primary: a failover or restart of any changes it (its cursor is void)."""
        ids = [await redis_run_id(node) for node in await self.nodes()]
        return ",".join(ids)

    async def dbsize(self) -> int:
        return sum(await asyncio.gather(*(node.dbsize() for node in await self.nodes())))

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()


async def stores_run_id(stores: Stores, scan: StoreScan) -> str:
    """What a sweep over both stores records beside its cursor: the legacy Redis' run and the new store's."""
    return f"{await redis_run_id(stores.legacy)}|{await scan.run_id()}"
