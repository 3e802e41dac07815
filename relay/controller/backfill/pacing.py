"""How fast one backfill goes: the measured rate, the ETA estimate, the operator's limit and the brake.

The token bucket spaces batches at the effective rate: the operator's limit, or, while live commands wait
longer than the latency ceiling, a fraction of it (or of the rate measured before the brake engaged).
What a live command waits is the longer of a PING's round trip and the backfill's own scripts (Redis runs
one script at a time, and a command that arrives during one waits for it). The PINGs go at moments of
their own (a task, jittered): sent right after each batch, they kept the phase of the backfill's own calls
and could miss what live commands, which arrive at any moment, wait. The script budget sizes each
batch so that its script runs within the budget (``ScriptBudget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque

from redis.asyncio import Redis

from relay.controller.backfill.state import BackfillRecord, scan_fraction
from relay.controller.common.script_budget import ScriptBudget
from relay.controller.common.throttle import LatencyBrake, TokenBucket
from relay.core.rpc_errors import TRANSIENT_STORE_ERRORS

PROBE_EVERY_SECONDS = 0.1
RATE_WINDOW_SECONDS = 5.0
THROTTLED_EVENT_MIN_SECONDS = 2.0
#: Under a rate limit a batch holds at most this many seconds of keys, so the rate holds smoothly.
BATCH_SECONDS = 0.1


class Pacing:
    def __init__(
        self,
        record: BackfillRecord,
        redis: Redis,
        latency_ceiling_seconds: float,
        script_budget_seconds: float = 0.0,
    ):
        self._record = record
        self._redis = redis
        self.brake = LatencyBrake(latency_ceiling_seconds)
        self.budget = ScriptBudget(script_budget_seconds)
        self.bucket = TokenBucket(0)
        self._rates: deque[tuple[float, int]] = deque()
        self._last_probe = 0.0
        self._last_latency = 0.0
        self._pinger: asyncio.Task[None] | None = None
        self._ping: float | None = None  # the last PING's round trip, until a probe takes it
        self._ping_started: float | None = None  # while a PING is out
        self._last_throttled = 0.0
        self._unthrottled_base = 0.0
        # The estimate extrapolates from the share of the keyspace covered since this cursor.
        self._start_fraction = scan_fraction(record.start_cursor)

    async def _ping_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY_SECONDS * random.uniform(0.5, 1.0))
            self._ping_started = time.monotonic()
            try:
                await self._redis.ping()
                self._ping = time.monotonic() - self._ping_started
            except TRANSIENT_STORE_ERRORS:
                pass
            finally:
                self._ping_started = None

    async def close(self) -> None:
        """Stop the PINGs (the backfill is over)."""
        task, self._pinger = self._pinger, None
        while task is not None and not task.done():  # a Redis call may swallow one cancellation
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 0.1)

    def restart(self, from_start: bool = False) -> None:
        """Forget the measured rate (after a pause, or a new pass that scans from cursor "0")."""
        self._rates.clear()
        if from_start:
            self._start_fraction = 0.0

    def observe(self, scanned: int) -> None:
        """``scanned`` keys in all, now: one point of the rate window."""
        now = time.monotonic()
        self._rates.append((now, scanned))
        while len(self._rates) > 2 and now - self._rates[0][0] > RATE_WINDOW_SECONDS:
            self._rates.popleft()

    def rate_with(self, scanned: int) -> float:
        if not self._rates:
            return self._record.rate
        t0, s0 = self._rates[0]
        span = time.monotonic() - t0
        return (scanned - s0) / span if span >= 0.2 else self._record.rate

    def estimate(self, cursor: str, scanned: int) -> int:
        """Legacy keys to scan in all, extrapolated from the share of the keyspace covered so far."""
        covered = (1.0 if cursor == "0" else scan_fraction(cursor)) - self._start_fraction
        if covered >= 0.002:
            return int(scanned * (1.0 - self._start_fraction) / covered)
        return max(self._record.total_estimate, scanned)

    def effective_rate(self) -> float:
        rate = self._record.rate_limit_now
        if self.brake.factor < 1.0:
            rate = (rate or self._unthrottled_base or 1000.0) * self.brake.factor
        return rate

    def batch_size(self) -> int:
        size = self._record.batch_size_now
        rate = self.effective_rate()
        if rate > 0:
            size = min(size, max(1, int(rate * BATCH_SECONDS)))
        return self.budget.size(size)

    def observe_script(self, keys: int, seconds: float) -> None:
        """One COPY_BATCH call handled ``keys`` keys in ``seconds`` (Redis' clock when it said)."""
        self.budget.observe(keys, seconds)

    def apply_rate(self) -> None:
        rate = self.effective_rate()
        if rate != self.bucket.rate:
            self.bucket.set_rate(rate)

    async def probe(self) -> str | None:
        """What live commands wait, between batches: the longer of a PING and the backfill's longest script
        since the last probe; above the ceiling, slow down. Returns why, when it should be said."""
        now = time.monotonic()
        if self.brake.ceiling <= 0 or now - self._last_probe < PROBE_EVERY_SECONDS:
            return None
        self._last_probe = now
        if self._pinger is None:
            self._pinger = asyncio.create_task(self._ping_now_and_then())
        ping, self._ping = self._ping, None
        if self._ping_started is not None:  # a PING still out counts for as long as it has waited
            ping = max(ping or 0.0, now - self._ping_started)
        if ping is None:
            return None  # no answer since the last probe: the next batch retries, or fails, on its own
        latency = max(ping, self.budget.take_longest())
        # Two probes in a row must be slow: one slow answer is as often this process waiting for a CPU.
        sustained = min(latency, self._last_latency)
        self._last_latency = latency
        before = self.brake.factor
        tightened = self.brake.observe(sustained)
        if before == 1.0 and self.brake.factor < 1.0 and not self._record.rate_limit_now:
            self._unthrottled_base = max(self._record.rate, 100.0)
        if self.brake.factor != before:
            self.apply_rate()
        if not tightened:
            return None
        if before == self.brake.factor and now - self._last_throttled < THROTTLED_EVENT_MIN_SECONDS:
            return None
        self._last_throttled = now
        return (
            f"Redis made commands wait {sustained * 1000:.1f} ms, above the {self.brake.ceiling * 1000:g} ms "
            f"latency ceiling: slowing to {self.effective_rate():,.0f} keys/s"
        )
