"""Retrying the backfill's Redis calls through a short outage, and stopping its helper tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.core.rpc_errors import TRANSIENT_STORE_ERRORS

log = logging.getLogger("relay.backfill")
T = TypeVar("T")

#: How long a batch keeps being retried while Redis is unreachable before the backfill fails.
TRANSIENT_RETRY_SECONDS = 30.0


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` until it ends: a Redis call may swallow one cancellation (redis-py)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again while Redis is unreachable, for up to TRANSIENT_RETRY_SECONDS (a batch and its
    checkpoint are one Lua step, so nothing is half done meanwhile)."""
    deadline = time.monotonic() + TRANSIENT_RETRY_SECONDS
    pause = 0.02
    while True:
        try:
            return await call()
        except TRANSIENT_STORE_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("backfill retries a Redis call: %s", type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
