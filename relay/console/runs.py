"""What the console remembers between pages (in memory, for this process only).

The controller streams a verification, cleanup or reverse copy to the caller that started it, so the
console follows each one it starts in a background task and keeps its latest state here for every page
and event stream. It also keeps the rate samples of the backfills it has watched (for the chart), the
last refusal of a stage change per scope (in the controller's own words), and the workspaces it has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relay.console.controller import RpcFailure
from relay.v1 import backfill_pb2

log = logging.getLogger("relay.console")

MAX_SAMPLES = 400


@dataclass
class Run:
    """A verification, cleanup or reverse copy started from the console, followed to its end."""

    kind: str  # "verification", "cleanup", "reverse-copy"
    who: str
    dry_run: bool
    started_at: float
    latest: object | None = None  # the last Verification or Cleanup message
    failure: str = ""
    finished: bool = False
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class Refusal:
    target: str
    text: str
    at: float
    who: str

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Runs:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self.current: dict[str, Run] = {}
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self._seen_updates: dict[str, str] = {}
        self.refusals: dict[str, Refusal] = {}
        self.workspaces: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, kind: str, who: str, dry_run: bool, events: AsyncIterator[object], field_name: str
    ) -> Run:
        """Follow ``events`` (VerificationEvent or CleanupEvent) in the background."""
        run = Run(kind, who, dry_run, self._clock())
        self.current[kind] = run
        task = asyncio.create_task(self._follow(run, events, field_name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _follow(self, run: Run, events: AsyncIterator[object], field_name: str) -> None:
        try:
            async for event in events:
                run.latest = getattr(event, field_name)
                run.update()
        except RpcFailure as failure:
            run.failure = str(failure)
            log.info("console: %s by %s refused or failed: %s", run.kind, run.who, failure)
        except asyncio.CancelledError:
            run.failure = "the console stopped following it"
            raise
        finally:
            run.finished = True
            run.update()

    async def wait_first(self, run: Run, limit: float = 10.0) -> None:
        """Until the run has its first event, or has failed (a refusal comes back at once)."""
        deadline = time.monotonic() + limit
        while run.latest is None and not run.finished and time.monotonic() < deadline:
            changed = run.changed
            try:
                await asyncio.wait_for(changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break

    def follow_backfill(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def sample(self, backfill: backfill_pb2.Backfill) -> None:
        """Keep one rate sample per distinct update of a backfill."""
        if not backfill.backfill_id:
            return
        stamp = f"{backfill.update_time.seconds}.{backfill.update_time.nanos}:{backfill.progress.scanned}"
        if self._seen_updates.get(backfill.backfill_id) == stamp:
            return
        self._seen_updates[backfill.backfill_id] = stamp
        start = backfill.create_time.ToNanoseconds() / 1e9 if backfill.HasField("create_time") else 0.0
        at = backfill.update_time.ToNanoseconds() / 1e9 if backfill.HasField("update_time") else self._clock()
        points = self.samples.setdefault(backfill.backfill_id, [])
        points.append((max(0.0, at - start), backfill.progress.rate))
        if len(points) > MAX_SAMPLES:
            del points[1::2]  # keep the shape, halve the points
        if len(self.samples) > 20:
            oldest = next(iter(self.samples))
            self.samples.pop(oldest)
            self._seen_updates.pop(oldest, None)

    def refuse(self, scope: str, target: str, text: str, who: str) -> None:
        self.refusals[scope] = Refusal(target, text, self._clock(), who)

    def clear_refusal(self, scope: str) -> None:
        self.refusals.pop(scope, None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
