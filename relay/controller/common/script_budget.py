"""A time budget per Redis script: batches sized so that one script of a scan keeps Redis at most about
``budget`` seconds.

Redis runs one script at a time, and every live command that arrives meanwhile waits for it: the length
of a batch's script is what JobService's p99 pays during a backfill. Each script reports how long it ran
(its own ``TIME`` delta); the budget keeps the cost of one key (the lower quartile of the last few
scripts: it follows a real change within a few batches, and neither one fast script nor the scripts that
Redis' process spent partly descheduled on a busy machine size the batches that follow) and proposes the
batch that fills a share of the budget. A script's wall time holds the time Redis waited for a CPU,
which does not grow with the batch and which live commands wait for as well without a backfill: on a
shared machine half the scripts took more than twice as long per key as the least disturbed ones, and a
median sized the batches by that wait (the latency brake still takes every script's whole wall time).
With a fixed cost ``a`` per script and ``b`` per key, sizing by the measured cost per key converges on
``a + b * n = TARGET_SHARE * budget``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

#: The share of the budget a batch is sized to fill (the rest absorbs the noise of one key's cost).
TARGET_SHARE = 0.8
#: Keys in the first batch, before any script was measured.
FIRST_BATCH = 64
#: A batch grows at most by this factor per measured script (a shrink is immediate).
GROWTH = 2.0
#: Scripts whose lower-quartile cost per key sizes the next batch.
WINDOW = 5


class ScriptBudget:
    """Batch sizes for scripts that should each run within ``budget_seconds`` (0 or less: no budget)."""

    def __init__(self, budget_seconds: float, first: int = FIRST_BATCH):
        self.budget = budget_seconds
        self._first = first
        self._costs: deque[float] = deque(maxlen=WINDOW)
        self._per_key: float | None = None
        self._last_keys = 0
        #: The longest script measured since ``take_longest`` was last called (for the latency brake).
        self._longest = 0.0
        self.scripts = 0
        self.over_budget = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def per_key_seconds(self) -> float | None:
        return self._per_key

    def observe(self, keys: int, seconds: float) -> None:
        """One script handled ``keys`` keys in ``seconds``."""
        if seconds < 0:
            return
        self._longest = max(self._longest, seconds)
        if keys <= 0:
            return
        self.scripts += 1
        if self.enabled and seconds > self.budget:
            self.over_budget += 1
        self._costs.append(seconds / keys)
        self._per_key = sorted(self._costs)[len(self._costs) // 4]
        self._last_keys = keys

    def size(self, cap: int) -> int:
        """Keys for the next batch: at most ``cap`` (the operator's batch size), at least 1."""
        cap = max(1, cap)
        if not self.enabled:
            return cap
        if self._per_key is None:
            return min(cap, self._first)
        target = int(self.budget * TARGET_SHARE / max(self._per_key, 1e-9))
        if self._last_keys:
            target = min(target, int(self._last_keys * GROWTH) + 1)
        return max(1, min(cap, target))

    def take_longest(self) -> float:
        """The longest script since the last call (0.0 when none ran), and start a new window."""
        longest, self._longest = self._longest, 0.0
        return longest


async def timed_script(budget: ScriptBudget, keys: int, call: Awaitable[list[T]]) -> list[T]:
    """Await ``call``, one script over ``keys`` keys whose last reply element is its own run time in
    micros by Redis' clock; let ``budget`` observe it and return the rest of the reply.

    Not the client's wall time: that holds the round trip and every lag of a busy client's event loop,
    and under load it priced a key at tens of milliseconds, so batches shrank to one key and a sweep of a
    growing store never ended."""
    *reply, micros = await call
    budget.observe(keys, int(micros) / 1_000_000)
    return reply
