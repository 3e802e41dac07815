"""Backfill state in Redis: create, load, and the guarded writes every controller process may make.

Writes that could race go through Lua scripts (``relay.core.lua.backfill``): creation only under the backfill
lease, a runner's writes only while the state still carries its fencing token, an operator's request
(pause, resume, cancel, rate or batch change) asked of the owner through the ``control`` field when the
lease says someone runs it, and applied directly when nobody does.
"""

from __future__ import annotations

from redis.asyncio import Redis

from relay.controller.backfill.state import BackfillRecord
from relay.core import codec
from relay.core.keys import KEYS, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.backfill import (
    BACKFILL_CONTROL,
    BACKFILL_CREATE,
    BACKFILL_RESCAN,
    BACKFILL_TAKE_OVER,
    BACKFILL_WRITE,
)

#: Backfill ids kept in the history list.
HISTORY_LENGTH = 50


class Fenced(Exception):
    """Another run owns the backfill now (its lease expired here): stop without writing."""


def lease_holder(controller_id: str, backfill_id: str) -> str:
    """The backfill lease's value: who runs which backfill."""
    return f"{controller_id}/{backfill_id}"


def backfill_of_holder(holder: str) -> str:
    return holder.rpartition("/")[2]


class BackfillStore:
    def __init__(self, redis: Redis, keys: KeyLayout = KEYS):
        self.redis = redis
        self.keys = keys
        self._lua = LuaScripts(redis)

    # --- reads -------------------------------------------------------------------------------
    async def load(self, backfill_id: str) -> BackfillRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.backfill(backfill_id))
        pipe.lrange(self.keys.backfill_invalid(backfill_id), 0, -1)
        raw, invalid = await pipe.execute()
        if not raw:
            return None
        return BackfillRecord.from_hash(raw, invalid)

    async def current_id(self) -> str | None:
        value = await self.redis.get(self.keys.backfill_current)
        return value.decode() if value else None

    async def lease_holder(self) -> str | None:
        value = await self.redis.get(self.keys.backfill_lease)
        return value.decode() if value else None

    async def state_of(self, backfill_id: str) -> str | None:
        value = await self.redis.hget(self.keys.backfill(backfill_id), "state")
        return value.decode() if value else None

    async def controls(self, backfill_id: str) -> tuple[str, float | None, int | None]:
        """The operator's pending request and the live rate and batch size (for a paused owner)."""
        control, rate, batch = await self.redis.hmget(
            self.keys.backfill(backfill_id), "control", "rate_limit_now", "batch_size_now"
        )
        return (
            control.decode() if control else "",
            float(rate) if rate else None,
            int(batch) if batch else None,
        )

    # --- guarded writes ----------------------------------------------------------------------
    async def create(self, record: BackfillRecord, holder: str) -> bool:
        k = self.keys
        flat = [item for pair in record.to_hash().items() for item in pair]
        done = await self._lua.call(
            BACKFILL_CREATE,
            keys=[k.backfill_lease, k.backfill_current, k.backfill(record.backfill_id), k.backfill_history],
            args=[holder, record.backfill_id, HISTORY_LENGTH, *flat],
        )
        return bool(done)

    async def write(self, backfill_id: str, token: str, values: dict[str, str], indexed_by: str = "") -> bool:
        """Set fields while ``token`` still owns the backfill (and, with ``indexed_by``, mark every legacy
        record indexed); False when another run owns it now."""
        flat = [item for pair in values.items() for item in pair]
        done = await self._lua.call(
            BACKFILL_WRITE,
            keys=[self.keys.backfill(backfill_id), self.keys.legacy_indexed],
            args=[token, indexed_by, *flat],
        )
        return bool(done)

    async def rescan(
        self, backfill_id: str, token: str, batches_before: int, run_id: str, values: dict[str, str]
    ) -> bool:
        """Begin the scan again on Redis run ``run_id`` (fields reset to ``values``, invalid ids dropped,
        rescans + 1) while ``token`` owns it and ``batches_before`` batches are recorded; True when done
        (also when already done for that run)."""
        flat = [item for pair in values.items() for item in pair]
        k = self.keys
        done = await self._lua.call(
            BACKFILL_RESCAN,
            keys=[k.backfill(backfill_id), k.backfill_invalid(backfill_id)],
            args=[token, str(batches_before), run_id, *flat],
        )
        return bool(done)

    async def control(
        self,
        backfill_id: str,
        action: str,
        reason: str = "",
        rate: float | None = None,
        batch: int | None = None,
    ) -> tuple[str, str]:
        """(outcome, state): MISSING, FINISHED, ASKED (the owner will obey), DONE, OWNED or TAKE_OVER."""
        reply = await self._lua.call(
            BACKFILL_CONTROL,
            keys=[self.keys.backfill(backfill_id), self.keys.backfill_lease],
            args=[
                backfill_id,
                action,
                codec.now_iso(),
                reason,
                "" if rate is None else repr(rate),
                "" if batch is None else str(batch),
            ],
        )
        return reply[0].decode(), reply[1].decode()

    async def take_over(
        self, backfill_id: str, holder: str, token: str, owner: str, reason: str, allowed: tuple[str, ...]
    ) -> tuple[str, str]:
        """('OK', previous state) when this controller now runs it; else the refusal."""
        k = self.keys
        reply = await self._lua.call(
            BACKFILL_TAKE_OVER,
            keys=[k.backfill(backfill_id), k.backfill_lease, k.backfill_current],
            args=[holder, backfill_id, token, owner, codec.now_iso(), reason, *allowed],
        )
        return reply[0].decode(), (reply[1].decode() if len(reply) > 1 else "")
