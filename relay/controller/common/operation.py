"""What the long migration operations (verification, cleanup, reverse copy) share.

They take one lease, ``KEYS.operation_lease``, so at most one of them runs across all controllers: a
cleanup deleting legacy keys under a running verification would make it report records as only in the new
layout, and a reverse copy beside a cleanup would undo it. Cleanup and reverse copy also refuse to start
while a backfill holds ``KEYS.backfill_lease`` and stop at the next batch when one starts, since each
would otherwise chase the other's writes.
"""

from __future__ import annotations

import os
import socket
import uuid

from redis.asyncio import Redis

from relay.controller.common.lease import Lease
from relay.core.errors import FailedPrecondition
from relay.core.keys import KEYS

LEASE_TTL_SECONDS = 10.0


def new_operation_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


async def take_operation_lease(redis: Redis, operation_id: str) -> Lease:
    """The operation lease, or FailedPrecondition naming who holds it."""
    holder = f"{operation_id}@{socket.gethostname()}:{os.getpid()}"
    lease = Lease(redis, KEYS.operation_lease, holder, LEASE_TTL_SECONDS)
    if not await lease.acquire():
        current = await lease.current_holder() or "another controller"
        raise FailedPrecondition(
            f"another migration operation is running ({current}); wait for it to finish, or for its lease "
            f"to expire within {LEASE_TTL_SECONDS:.0f} s if its controller died, then resume it",
            reason="OPERATION_RUNNING",
            metadata={"holder": current},
        )
    return lease


async def backfill_running(redis: Redis) -> str | None:
    """The holder of the backfill lease, or None when no backfill runs."""
    holder = await redis.get(KEYS.backfill_lease)
    return holder.decode("utf-8", "replace") if holder else None


async def refuse_while_backfill_runs(redis: Redis, what: str) -> None:
    holder = await backfill_running(redis)
    if holder is not None:
        raise FailedPrecondition(
            f"a backfill is running ({holder}); {what} would race its copies. Wait for it to finish "
            "(relayctl backfill watch) or cancel it, then retry",
            reason="BACKFILL_RUNNING",
            metadata={"holder": holder},
        )
