"""The outbox repairer: every controller of a split topology replays, once a second, the replica writes a
crash or a lost connection left owed (``docs/two-stores.md``).

Entries younger than ``MIN_AGE_SECONDS`` are left alone: their writer is most likely between its steps
and settles them itself a moment later (a replay beside it would be harmless, only wasted). Several
controllers may repair at once: the replica write only moves forwards and settling compares the entry,
so a second replay of an entry changes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from relay.controller.common.background import stop_task
from relay.core.stores import Stores
from relay.core.telemetry import Metrics
from relay.services.split_writes import SplitWrites

log = logging.getLogger("relay.repairer")

INTERVAL_SECONDS = 1.0
MIN_AGE_SECONDS = 2.0


class OutboxRepairer:
    def __init__(self, stores: Stores, idempotency_ttl_seconds: int, metrics: Metrics):
        self._writes = SplitWrites(stores, idempotency_ttl_seconds)
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox repairer")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def repair_once(self) -> int:
        settled = await self._writes.repair_outboxes(MIN_AGE_SECONDS)
        if settled:
            self._metrics.replica_repairs.add(settled)
        return settled

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_SECONDS)
            try:
                await self.repair_once()
            except Exception as exc:  # a store away for a moment: the next pass tries again
                log.warning("outbox repair pass failed: %s", type(exc).__name__)
