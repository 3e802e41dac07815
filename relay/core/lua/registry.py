"""The one place Lua scripts are registered on a Redis client and called.

``call`` is EVALSHA, loading the script again when Redis lost it (a restart), on the client's pool or, when
given one, on a pipelined connection to the same Redis (``relay.core.pipelined_connection``: the job
service's hot path); ``call_ro`` is EVALSHA_RO, so
Redis itself refuses any write, falling back to plain EVALSHA on an embedded store that lacks the
command (a script meant to run read-only writes nothing anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from relay.core.lua import backfill, claims, facts, jobs, lease, replicas, split_migration, sweep
from relay.core.pipelined_connection import PipelinedConnection

Arg = str | bytes | int | float

#: Every script Relay runs, by family.
ALL_SCRIPTS: tuple[str, ...] = (
    jobs.ENQUEUE,
    jobs.UPDATE_STATUS,
    jobs.CLAIM,
    jobs.LEGACY_KEYS_OF_WORKSPACE,
    jobs.READ_RECORDS,
    jobs.READ_SERVED,
    jobs.NOW,
    claims.ROTATE,
    claims.TAKE,
    claims.FORGET_CLAIM,
    claims.DROP_READY,
    claims.MARK_READY,
    replicas.ENQUEUE_LAYOUT,
    replicas.PUT_RECORD,
    replicas.CATCH_UP,
    replicas.SETTLE_OUTBOX,
    lease.RENEW_LEASE,
    lease.RELEASE_LEASE,
    facts.SET_FACTS,
    sweep.CLEANUP_LEGACY_JOBS,
    sweep.DRAIN_LEGACY_QUEUE_HEAD,
    sweep.REVERSE_COPY,
    backfill.READ_BATCH,
    backfill.COPY_BATCH,
    backfill.BACKFILL_CREATE,
    backfill.BACKFILL_WRITE,
    backfill.BACKFILL_CONTROL,
    backfill.BACKFILL_RESCAN,
    backfill.BACKFILL_TAKE_OVER,
    split_migration.READ_LEGACY_RECORDS,
    split_migration.BACKFILL_COPY_WORKSPACE,
    split_migration.BACKFILL_RECOPY,
    split_migration.BACKFILL_RECORD_BATCH,
    split_migration.DELETE_UNCHANGED_LEGACY,
    split_migration.REVERSE_COPY_RECORDS,
)


class LuaScripts:
    """Every script of :data:`ALL_SCRIPTS`, registered on one client; call them by their text constant."""

    def __init__(self, redis: Redis | RedisCluster, pipelined: PipelinedConnection | None = None):
        self._redis = redis
        self._pipelined = pipelined
        self._scripts: dict[str, AsyncScript] = {text: redis.register_script(text) for text in ALL_SCRIPTS}
        self._read_only_supported = True

    async def call(self, script: str, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        pipelined = self._pipelined
        if pipelined is None:
            return await self._scripts[script](keys=list(keys), args=list(args))
        sha = self._scripts[script].sha
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    def evalsha_command(self, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[Arg, ...]:
        """``call``'s EVALSHA as one command, for a caller that pipelines calls on a connection of its own
        and reads their replies in order (on NOSCRIPT it calls ``call``, which loads the script)."""
        return ("EVALSHA", self._scripts[script].sha, len(keys), *keys, *args)

    async def call_ro(self, script: str, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        sha, n = self._scripts[script].sha, len(keys)
        if self._read_only_supported:
            try:
                try:
                    return await self.execute("EVALSHA_RO", sha, n, *keys, *args)
                except NoScriptError:
                    return await self.execute("EVAL_RO", script, n, *keys, *args)
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._read_only_supported = False
        try:
            return await self.execute("EVALSHA", sha, n, *keys, *args)
        except NoScriptError:
            return await self.execute("EVAL", script, n, *keys, *args)

    async def execute(self, *command: Arg) -> Any:
        """One command whose raw reply is read as is, on the same way as the scripts: the pipelined
        connection when there is one, else the client."""
        if self._pipelined is not None:
            return await self._pipelined.execute(*command)
        return await self._redis.execute_command(*command)
