"""Redis call latency: ``relay_redis_duration_seconds{command, result}`` for one client.

Every single command (Lua scripts arrive as EVALSHA) and every pipeline (``PIPELINE``, or ``MULTI`` for a
transaction) of the client is timed from the call to the reply. redis-py's own OpenTelemetry support is
bound to the process-global MeterProvider and is not in every version we accept, so the client's two
entry points are wrapped instead: a perf_counter pair and one histogram record with a cached attribute
dict per call. Only the command name becomes a label, never a key or an argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from relay.core.pipelined_connection import PipelinedConnection
from relay.core.telemetry import OTHER, Metrics

#: Distinct command labels at most; Relay issues a few dozen commands, anything beyond is "other".
MAX_COMMANDS = 64
_MARK = "_relay_observed"


class _Labels:
    def __init__(self) -> None:
        self._cache: dict[tuple[Any, bool], dict[str, str]] = {}

    def of(self, command: Any, ok: bool) -> dict[str, str]:
        attributes = self._cache.get((command, ok))
        if attributes is None:
            name = command.decode("ascii", "replace") if isinstance(command, bytes) else str(command)
            known = name.replace(" ", "").isalpha() and len(self._cache) < MAX_COMMANDS * 2
            attributes = {"command": name.upper() if known else OTHER, "result": "ok" if ok else "error"}
            if len(self._cache) < MAX_COMMANDS * 4:
                self._cache[(command, ok)] = attributes
        return attributes


def observe_redis(redis: Redis, metrics: Metrics) -> Redis:
    """Time ``redis``'s commands and pipelines into ``metrics``; calling it twice changes nothing."""
    if getattr(redis, _MARK, False):
        return redis
    record = metrics.redis_duration.record
    labels = _Labels()
    execute_command = redis.execute_command
    make_pipeline = redis.pipeline

    def pipeline(transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = make_pipeline(transaction, shard_hint)
        pipe.execute = _timed(pipe.execute, record, labels, "MULTI" if transaction else "PIPELINE")
        return pipe

    redis.execute_command = _timed(execute_command, record, labels)  # type: ignore[method-assign]
    redis.pipeline = pipeline  # type: ignore[method-assign]
    setattr(redis, _MARK, True)
    return redis


def observe_pipelined(connection: PipelinedConnection, metrics: Metrics) -> PipelinedConnection:
    """Time the commands of a pipelined connection into ``metrics``, under the same names as a client's;
    calling it twice changes nothing."""
    if getattr(connection, _MARK, False):
        return connection
    connection.execute = _timed(  # type: ignore[method-assign]
        connection.execute, metrics.redis_duration.record, _Labels()
    )
    setattr(connection, _MARK, True)
    return connection


def _timed(
    call: Callable[..., Any], record: Callable[..., None], labels: _Labels, name: str | None = None
) -> Callable[..., Any]:
    """``call``, timed into ``record`` under ``name``, or under the command it is given (its first
    argument) when it runs one command at a time."""

    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        ok = False
        try:
            reply = await call(*args, **kwargs)
            ok = True
            return reply
        finally:
            command = name if name is not None else (args[0] if args else OTHER)
            record(time.perf_counter() - start, labels.of(command, ok))

    return timed
