"""Scripts pipelined on one connection of their own: the next call goes out before the previous reply is
read, so Redis need not wait for this process between two calls, and their order holds (Redis runs the
commands of one connection in the order they arrive). Replies are read in the order of the sends.

After an error reply the connection stays in step (the error was the reply); after a connection error it
is dropped, and with it every reply not yet read: whether those calls ran is for the caller to find out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from relay.core.lua import LuaScripts
from relay.core.lua.registry import Arg


class CopyStream:
    def __init__(self, redis: Redis, lua: LuaScripts):
        self._redis = redis
        self._lua = lua
        self._connection: AbstractConnection | None = None
        #: Calls sent whose replies are not read yet.
        self.pending = 0

    async def send(self, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> None:
        connection = await self._connect()
        # hiredis packs in C: redis-py's asyncio packer is Python, one encode per argument, and a batch
        # has several arguments per key.
        packed = hiredis.pack_command(self._lua.evalsha_command(script, keys, args))
        try:
            await connection.send_packed_command(packed, check_health=False)
        except BaseException:
            await self.drop()
            raise
        self.pending += 1

    async def reply(self) -> Any:
        """The reply of the oldest call not yet answered; its error reply is raised."""
        if self._connection is None or self.pending <= 0:
            raise RedisConnectionError("no call is waiting for its reply on this connection")
        self.pending -= 1
        try:
            return await self._connection.read_response()
        except ResponseError:
            raise  # an error reply: the connection is still in step
        except BaseException:
            await self.drop()
            raise

    async def drop(self) -> None:
        """Give the connection back, closed only when replies are still owed on it (they are lost with it):
        the pool takes a closed connection for a sign that its idle ones are dead too."""
        connection, self._connection = self._connection, None
        owed, self.pending = self.pending, 0
        if connection is not None:
            if owed:
                await connection.disconnect(nowait=True)
            await self._redis.connection_pool.release(connection)

    async def _connect(self) -> AbstractConnection:
        if self._connection is None:
            self._connection = await self._redis.connection_pool.get_connection()
        return self._connection
