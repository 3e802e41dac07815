"""The stage table in Redis, and each replica's view of it.

Writers (the controller) change a field of the ``ai:relay:stage`` hash and publish a notice; every
replica re-reads the table on a notice and at least every ``refresh_seconds``, so a change is seen within
a second even when a notice is lost. Until the hash holds a global default, the default comes from the
old system's environment flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from relay.core.keys import KEYS
from relay.core.stages import Stage, StageSetting, StageTable
from relay.core.stores import control_client_of, repeatable

log = logging.getLogger("relay.stages")


class StageView:
    """A replica's cached stage table, refreshed in the background."""

    def __init__(self, redis: Redis, default_stage: Stage, refresh_seconds: float = 0.5):
        # Its own connections, beside the services' pool: a flood of callers never delays a stage change.
        self._redis = control_client_of(redis)
        self._fallback = StageSetting(default_stage, source="environment")
        self._refresh_seconds = refresh_seconds
        self.table = StageTable(self._fallback)
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    def for_workspace(self, workspace_id: str) -> StageSetting:
        return self.table.for_workspace(workspace_id)

    async def refresh(self) -> StageTable:
        raw = await repeatable(lambda: self._redis.hgetall(KEYS.stage))
        self.table = StageTable.from_hash(raw, self._fallback)
        return self.table

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        # Cancel until done: on Python 3.11, asyncio.wait_for (which redis-py uses around socket writes)
        # swallows a cancel that arrives as its inner future completes, and the task runs on.
        tasks, self._tasks = self._tasks, []
        while tasks:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=0.1)
            tasks = list(pending)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_seconds):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.refresh()
            except Exception as exc:  # the last table stays in force while Redis is away
                log.warning("stage refresh failed: %s", type(exc).__name__)
                await asyncio.sleep(self._refresh_seconds)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(KEYS.stage_channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._changed.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)  # the poll covers the gap
