"""Rate limiting for scans: a token bucket whose rate can change while it runs, plus a latency brake."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """``await take(n)`` returns once ``n`` keys may go at ``rate`` keys per second (0: unthrottled).

    The bucket holds at most a quarter second of tokens, so a burst after a pause stays small and the
    rate holds over any window of a second or more.
    """

    def __init__(self, rate: float):
        self._rate = rate
        self._tokens = 0.0
        self._last = time.monotonic()

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        self._refill()
        self._rate = rate
        self._tokens = min(self._tokens, self._burst)

    @property
    def _burst(self) -> float:
        return max(self._rate * 0.25, 1.0)

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate > 0:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now

    async def take(self, n: int) -> float:
        """Wait until ``n`` tokens may go (a batch above the burst goes into debt); returns seconds waited."""
        if self._rate <= 0 or n <= 0:
            return 0.0
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self._rate
        await asyncio.sleep(wait)
        self._refill()
        return wait


class LatencyBrake:
    """Backs off when Redis slows: above ``ceiling`` seconds per call the allowed rate halves, and it
    recovers by a quarter per call below half the ceiling. ``factor`` multiplies the configured rate."""

    def __init__(self, ceiling_seconds: float):
        self.ceiling = ceiling_seconds
        self.factor = 1.0

    def observe(self, seconds: float) -> bool:
        """Record one call's latency; True when the brake just tightened."""
        if self.ceiling <= 0:
            return False
        if seconds > self.ceiling:
            self.factor = max(self.factor / 2, 1 / 64)
            return True
        if seconds < self.ceiling / 2 and self.factor < 1.0:
            self.factor = min(1.0, self.factor * 1.25)
        return False
