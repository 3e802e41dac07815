"""One connection to a single Redis that carries every caller's commands at once, replies in order.

The job service's hot path (ENQUEUE, READ_SERVED, UPDATE_STATUS, CLAIM and the index reads of ListJobs)
spends most of a Redis call in redis-py's pool and connection layers, not in Redis: measured on the
benchmark machine, 107 µs of CPU per EVALSHA through the pool against 11.5 µs on this connection
(``python -m bench.bench_redis_call``). Redis answers the commands of one connection in the order it
received them, so callers can share one connection without waiting for each other (auto-pipelining, as
ioredis and Lettuce do): each command is written at once, and the reply that arrives next belongs to the
oldest command still waiting.

What stays as with redis-py's pool:

- The connection is made by the client's own pool (``ConnectionPool.make_connection``), so the URL's
  host, database, ACL user, password and TLS settings apply unchanged; once its handshake is done, the
  socket's replies come to this class instead of redis-py's reader.
- At most ``limit`` commands are in flight (``RELAY_REDIS_POOL_SIZE``). One more waits for a free place at
  most ``wait_seconds`` (``RELAY_REDIS_POOL_TIMEOUT_SECONDS``) and then fails :class:`PoolExhausted`:
  RESOURCE_EXHAUSTED (STORE_BUSY), never UNAVAILABLE (DESIGN.md, invariant 10).
- A dropped connection fails every command in flight with redis-py's ``ConnectionError`` (so that
  ``relay.core.stores.repeatable`` repeats the reads, and writes fail UNAVAILABLE as before), and the
  next command connects again. A reply that does not come within ``reply_timeout`` seconds closes the
  connection the same way, with ``TimeoutError``.
- Error replies raise the same exception classes as redis-py (``NoScriptError``, ``ResponseError``, ...).

Replies are raw, as the pool's protocol gives them (RESP3 by default: a map is a dict), with none of
redis-py's response callbacks applied: callers use it for scripts and commands whose raw reply is what they
read. It never carries a blocking command (BLPOP and the like): one would hold every command behind it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.core.limits import Limits
from relay.core.stores import SOCKET_TIMEOUT_SECONDS, PoolExhausted

Arg = str | bytes | int | float

_CLOSED = "Connection closed by server."


class _Replies(asyncio.Protocol):
    """The socket's side: replies parsed as they arrive, each handed to the oldest waiting command."""

    def __init__(self, transport: asyncio.BaseTransport):
        self.transport: Any = transport
        #: Each command sent and not answered yet: its caller's future and when it was sent.
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.closed: BaseException | None = None
        self._outbox: list[bytes] = []
        #: The asyncio stream writer redis-py opened the socket with, kept so that it is not collected.
        self.writer: Any = None
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """The future of ``command``'s reply. The command is queued for this turn of the event loop: the
        commands of every caller that runs in one turn go out in one write, one system call instead of
        one each. On a connection already closed the future fails at once with the reason."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.closed is not None:
            # Closed between its making and this caller's turn (a kill right after the connect): nobody
            # would ever answer or fail a command queued here.
            future.set_exception(self.closed)
            return future
        self.waiting.append((future, time.monotonic()))
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append(command)
        return future

    def _flush(self) -> None:
        commands, self._outbox = self._outbox, []
        if self.closed is None:
            self.transport.write(b"".join(commands) if len(commands) > 1 else commands[0])

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except Exception as exc:  # a protocol error: nothing after it can be trusted
                self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: out of step with Redis
                self.fail(RedisConnectionError("a Redis reply arrived that no command awaits"))
                return
            future, _ = self.waiting.popleft()
            if not future.done():  # its caller may have been cancelled meanwhile
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(_CLOSED if exc is None else f"{_CLOSED} ({exc})"))

    def fail(self, error: BaseException) -> None:
        """Close the connection and fail every command still waiting with ``error``."""
        if self.closed is None:
            self.closed = error
            self.transport.close()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class PipelinedConnection:
    """Commands of many callers on one connection of ``pool``'s Redis (see the module doc)."""

    def __init__(self, pool: ConnectionPool, limit: int, wait_seconds: float, reply_timeout: float = 10.0):
        self._pool = pool
        self._limit = limit
        self._wait_seconds = wait_seconds
        self._reply_timeout = reply_timeout
        self._free = limit
        #: Callers waiting for a place, each handed one directly by the caller who frees it.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._replies: _Replies | None = None
        self._connecting: asyncio.Task[_Replies] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return self._limit - self._free

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its raw reply; an error reply is raised as redis-py raises it."""
        command = hiredis.pack_command(args)  # in C; refuses what is not str, bytes, int or float
        await self._take_place()
        try:
            replies = self._replies
            if replies is None or replies.closed is not None:
                replies = await self._connect()
            future = replies.submit(command)
            if self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().call_later(
                    self._reply_timeout / 4, self._check_replies
                )
            reply = await future
        finally:
            self._give_place()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _take_place(self) -> None:
        """One of the ``limit`` places for a command in flight; first come, first served."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self._wait_seconds)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self._give_place()  # handed a place just as the wait ran out: pass it on
            raise PoolExhausted(
                f"all {self._limit} places for Redis commands stayed busy for {self._wait_seconds} s"
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_place()  # handed a place as the caller was cancelled: pass it on
            raise

    def _give_place(self) -> None:
        """The place back: handed straight to the first caller still waiting, else freed."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def _connect(self) -> _Replies:
        """The connection, made again when it was lost; callers arriving meanwhile share one attempt."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Replies:
        connection = self._pool.make_connection()
        try:
            await connection.connect()  # redis-py's handshake: TLS, AUTH, SELECT, client name
            # Its writer is the one way to the socket redis-py opened; replies now come here, not to it.
            transport = connection._writer.transport
        except Exception as exc:
            await connection.disconnect()
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                raise
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        replies = _Replies(transport)
        transport.set_protocol(replies)
        # redis-py's connection lets go of the socket: it counts itself disconnected, and neither reads
        # from nor closes (when collected) what is now this class's. Its stream writer stays alive with
        # the replies (a writer collected closes its transport).
        replies.writer, connection._writer, connection._reader = connection._writer, None, None
        self._replies = replies
        return replies

    def _check_replies(self) -> None:
        """Every quarter of the reply timeout while commands wait: close a connection whose oldest command
        has waited longer than the timeout (Redis hung, or the network dropped without a reset)."""
        self._watchdog = None
        replies = self._replies
        if replies is None or replies.closed is not None or not replies.waiting:
            return
        _, sent = replies.waiting[0]
        if time.monotonic() - sent > self._reply_timeout:
            replies.fail(RedisTimeoutError(f"no reply from Redis within {self._reply_timeout} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self._reply_timeout / 4, self._check_replies)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._replies is not None:
            self._replies.fail(RedisConnectionError("the connection was closed by Relay"))
            self._replies = None


def pipelined_connection_for(redis: Redis | RedisCluster, limits: Limits) -> PipelinedConnection | None:
    """A pipelined connection to ``redis``'s server, with its pool's settings; None for a cluster (commands
    go to the node of their slot) and for the embedded store (no socket)."""
    if isinstance(redis, RedisCluster):
        return None
    pool = redis.connection_pool
    if not pool.connection_class.__module__.startswith("redis."):
        return None
    return PipelinedConnection(
        pool, limits.redis_pool_size, limits.redis_pool_timeout_seconds, SOCKET_TIMEOUT_SECONDS
    )
