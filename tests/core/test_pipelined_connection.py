"""The pipelined connection (relay.core.pipelined_connection): many callers' commands on one connection,
each reply to its own caller, and redis-py's pool semantics where they matter (errors, drops, limits).

Blocking commands (BLPOP) stand in for a slow Redis: Redis answers one connection's commands in order, so a
BLPOP holds every command sent behind it until its own timeout.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.core.lua import LuaScripts
from relay.core.lua.jobs import NOW
from relay.core.pipelined_connection import PipelinedConnection
from relay.core.stores import PoolExhausted


@pytest.fixture
async def connection(redis: Redis):
    conn = PipelinedConnection(redis.connection_pool, limit=64, wait_seconds=2.0)
    yield conn
    await conn.aclose()


async def test_an_argument_redis_cannot_carry_is_refused_before_anything_is_sent(connection):
    with pytest.raises(TypeError):
        await connection.execute("SET", "k", None)
    assert connection.in_flight == 0
    assert await connection.execute("PING") == b"PONG"


async def test_each_caller_gets_the_reply_to_its_own_command(connection, redis):
    await redis.mset({f"k{n}": n for n in range(300)})
    replies = await asyncio.gather(*(connection.execute("GET", f"k{n}") for n in range(300)))
    assert replies == [str(n).encode() for n in range(300)]
    assert await connection.execute("RPUSH", "list", "a", "1") == 2
    assert await connection.execute("LRANGE", "list", 0, -1) == [b"a", b"1"], "raw replies"


async def test_an_error_reply_raises_redis_pys_exception_and_the_connection_goes_on(connection, redis):
    await redis.set("text", "x")
    with pytest.raises(NoScriptError):
        await connection.execute("EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await connection.execute("HGETALL", "text")
    assert await connection.execute("GET", "text") == b"x"


async def test_scripts_lost_by_redis_are_loaded_again(connection, redis):
    scripts = LuaScripts(redis, connection)
    await scripts.call(NOW, keys=["any"])
    await redis.script_flush()
    now = await scripts.call(NOW, keys=["any"])
    assert int(now) > 0


async def test_a_dropped_connection_fails_the_commands_in_flight_and_the_next_connects_again(
    connection, redis
):
    client_id = await connection.execute("CLIENT", "ID")
    held = asyncio.ensure_future(connection.execute("BLPOP", "nothing", 5))
    behind = asyncio.ensure_future(connection.execute("PING"))
    await asyncio.sleep(0.1)
    await redis.execute_command("CLIENT", "KILL", "ID", client_id)
    for waiting in (held, behind):
        with pytest.raises(RedisConnectionError):
            await waiting
    assert await connection.execute("PING") == b"PONG"
    assert await connection.execute("CLIENT", "ID") != client_id


async def test_a_reply_that_does_not_come_in_time_closes_the_connection(redis):
    conn = PipelinedConnection(redis.connection_pool, limit=8, wait_seconds=1.0, reply_timeout=0.4)
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await conn.execute("BLPOP", "nothing", 5)
        assert 0.4 <= time.monotonic() - started < 3
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()


async def test_beyond_the_limit_a_command_waits_then_fails_store_busy(redis):
    conn = PipelinedConnection(redis.connection_pool, limit=2, wait_seconds=0.3)
    try:
        held = [asyncio.ensure_future(conn.execute("BLPOP", "nothing", 2)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert conn.in_flight == 2
        started = time.monotonic()
        with pytest.raises(PoolExhausted):
            await conn.execute("PING")
        assert time.monotonic() - started >= 0.3
        assert await asyncio.gather(*held) == [None, None]
        assert conn.in_flight == 0
    finally:
        await conn.aclose()


async def test_a_waiting_command_takes_the_first_place_freed(redis):
    conn = PipelinedConnection(redis.connection_pool, limit=1, wait_seconds=5.0)
    try:
        held = asyncio.ensure_future(conn.execute("BLPOP", "nothing", 0.3))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(conn.execute("ECHO", str(n))) for n in range(3)]
        assert await asyncio.gather(held, *waiting) == [None, b"0", b"1", b"2"]
    finally:
        await conn.aclose()


async def test_a_cancelled_callers_reply_goes_to_nobody(connection, redis):
    await redis.mset({"x": "1", "y": "2"})
    held = asyncio.ensure_future(connection.execute("BLPOP", "nothing", 0.3))
    cancelled = asyncio.ensure_future(connection.execute("GET", "x"))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    after = asyncio.ensure_future(connection.execute("GET", "y"))
    assert await held is None
    assert await after == b"2"
    assert cancelled.cancelled()
    assert connection.in_flight == 0


async def test_a_cancelled_waiter_passes_its_place_on(redis):
    conn = PipelinedConnection(redis.connection_pool, limit=1, wait_seconds=5.0)
    try:
        held = asyncio.ensure_future(conn.execute("BLPOP", "nothing", 0.2))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(conn.execute("ECHO", "gone"))
        kept = asyncio.ensure_future(conn.execute("ECHO", "kept"))
        await asyncio.sleep(0.05)
        gone.cancel()
        assert await kept == b"kept"
        await held
        assert conn.in_flight == 0
    finally:
        await conn.aclose()


async def test_a_command_sent_on_a_connection_closed_meanwhile_fails_at_once(connection, redis):
    assert await connection.execute("PING") == b"PONG"
    replies = connection._replies  # the connection as the next caller finds it, closed in between
    replies.fail(RedisConnectionError("killed right after the connect"))
    with pytest.raises(RedisConnectionError, match="killed right after"):
        await asyncio.wait_for(replies.submit(b"*1\r\n$4\r\nPING\r\n"), 2)
    assert await connection.execute("PING") == b"PONG", "the next command connects again"
