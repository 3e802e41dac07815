"""A lease in Redis: at most one holder across all controller processes, renewed while work runs.

The holder renews every ``ttl/3``; a holder that dies (kill -9) loses the lease after ``ttl`` and
another controller may take over. Work guarded by a lease must check :attr:`Lease.lost` between
batches and stop when it is set, since another holder may have taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from relay.controller.common.background import stop_task
from relay.core.lua import LuaScripts
from relay.core.lua.lease import RELEASE_LEASE, RENEW_LEASE
from relay.core.stores import control_client_of

log = logging.getLogger("relay.lease")


class Lease:
    def __init__(self, redis: Redis, key: str, holder: str, ttl_seconds: float = 10.0):
        # Its own connections, beside the services' pool: a flood of callers never costs the lease.
        self._redis = control_client_of(redis)
        self.key = key
        self.holder = holder
        self._ttl_ms = int(ttl_seconds * 1000)
        self._lua = LuaScripts(self._redis)
        self._task: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (or this holder already does); start renewing it."""
        taken = await self._redis.set(self.key, self.holder, nx=True, px=self._ttl_ms)
        if not taken and not await self._lua.call(
            RENEW_LEASE, keys=[self.key], args=[self.holder, self._ttl_ms]
        ):
            return False
        self.lost.clear()
        self._task = asyncio.create_task(self._keep())
        return True

    async def current_holder(self) -> str | None:
        value = await self._redis.get(self.key)
        return value.decode() if value else None

    async def _keep(self) -> None:
        interval = self._ttl_ms / 3000
        failures = 0
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self._lua.call(RENEW_LEASE, keys=[self.key], args=[self.holder, self._ttl_ms])
                failures = 0
            except Exception as exc:  # Redis away for a moment: keep trying until the ttl runs out
                failures += 1
                log.warning("lease renewal failed: %s", type(exc).__name__)
                if failures * interval * 1000 < self._ttl_ms:
                    continue
                renewed = 0
            if not renewed:
                log.error("lease lost", extra={"reason": self.key})
                self.lost.set()
                return

    async def release(self) -> None:
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self._lua.call(RELEASE_LEASE, keys=[self.key], args=[self.holder])
