"""The backfill engine of one controller process: starts, attaches to, controls and resumes backfills.

One execute backfill at a time per Redis, across every controller process: it runs under the lease
``KEYS.backfill_lease`` (value ``<controller>/<backfill id>``), renewed while it runs. A StartBackfill
while another backfill is unfinished (running, paused, or orphaned by a dead controller) is refused
with that backfill's id, unless it asks for the same options: then it attaches to it.

The backfill runs in a background task here, never in the caller's stream; streams watch it through an
in-process fan-out, or, in another controller process, by following its state in Redis. Operator
requests go through the state in Redis (``BACKFILL_CONTROL``), so any controller may pause, resume,
cancel or re-rate a backfill that another one runs; the owner obeys between batches.

When a controller dies (kill -9), its lease expires; every controller looks for such an orphan every
``backfill_orphan_check_seconds`` and one of them (the lease decides which) resumes it from its
checkpoint, or, with ``backfill_auto_resume`` off, marks it ORPHANED for ResumeBackfill.

Setting ``KEYS.legacy_indexed`` after a full execute backfill (no workspace filter, no max_keys stop, no
errors; a chain of max_keys runs from the start counts as one) tells JobService that every legacy
record is in a workspace index, so its listing stops scanning legacy keys. That holds only if nothing
but Relay writes legacy keys afterwards: Relay's own writes always add to the index, but the old
system's would not. It must be stopped before Relay takes over (the migration plan does so); a legacy
key written by it later would be readable (GetJob) but missing from listings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from relay.controller.backfill.events import (
    BackfillEvent,
    EventHub,
    Subscription,
    follow_redis,
    snapshot_event,
)
from relay.controller.backfill.runner import BackfillRunner
from relay.controller.backfill.state import (
    COMPLETED,
    FAILED,
    FINISHED,
    ORPHANED,
    PAUSED,
    RUNNING,
    UNFINISHED,
    BackfillOptions,
    BackfillRecord,
    new_backfill_id,
)
from relay.controller.backfill.store import BackfillStore, backfill_of_holder, lease_holder
from relay.controller.common.background import stop_task
from relay.controller.common.lease import Lease
from relay.controller.common.redis_run import redis_run_id
from relay.core.config import Settings
from relay.core.errors import FailedPrecondition, NotFound, Unavailable
from relay.core.keys import KEYS, KeyLayout
from relay.core.stores import Stores
from relay.core.telemetry import BackfillGauges, Metrics
from relay.v1 import backfill_pb2 as pb

log = logging.getLogger("relay.backfill")

#: Finished backfills whose runs this process remembers (dry runs exist nowhere else).
RUNS_KEPT = 20
#: How long a pause, resume or cancel request waits for the backfill to get there before answering.
SETTLE_SECONDS = 3.0
STOP_SECONDS = 5.0
#: A backfill and the state to show it in (ORPHANED for a RUNNING one nobody holds the lease of).
Shown = tuple[BackfillRecord, str]


@dataclass
class Run:
    runner: BackfillRunner
    hub: EventHub

    @property
    def active(self) -> bool:
        return not self.runner.done.is_set() and not self.runner.finished

    @property
    def record(self) -> BackfillRecord:
        return self.runner.record


class BackfillEngine:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        metrics: Metrics,
        keys: KeyLayout = KEYS,
        stores: Stores | None = None,
    ):
        self.controller_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}".replace("/", "_")
        self._redis = redis
        self._stores = stores
        # The scan's Redis: its run_id goes with the cursor, its size is the estimate.
        self._scanned = stores.legacy if stores is not None else redis
        self._settings = settings
        self._metrics = metrics
        self._keys = keys
        self.store = BackfillStore(redis, keys)
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = asyncio.Lock()
        self._orphan_task: asyncio.Task[None] | None = None
        self._unwatch_metrics = metrics.watch_backfill(self.gauges)

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._orphan_task = asyncio.create_task(self._watch_orphans(), name="backfill orphan check")

    async def stop(self) -> None:
        self._unwatch_metrics()
        await stop_task(self._orphan_task)
        await asyncio.gather(*(run.runner.stop(STOP_SECONDS) for run in self._runs.values() if run.active))

    # --- StartBackfill -----------------------------------------------------------------------
    async def start_backfill(self, options: BackfillOptions) -> AsyncIterator[BackfillEvent]:
        async with self._lock:
            existing = await self._unfinished()
            if existing is not None:
                return await self._attach_or_refuse(existing, options)
            if options.dry_run:
                return await self._start_dry(options)
            return await self._start_execute(options)

    async def _unfinished(self) -> BackfillRecord | None:
        """The backfill that blocks a new one: one running here, or an unfinished one in Redis."""
        for run in self._runs.values():
            if run.active:
                return run.record
        current = await self.store.current_id()
        if current is None:
            return None
        record = await self.store.load(current)
        return record if record is not None and record.state in UNFINISHED else None

    async def _attach_or_refuse(
        self, existing: BackfillRecord, options: BackfillOptions
    ) -> AsyncIterator[BackfillEvent]:
        if existing.options == options:
            return self._watch_known(existing.backfill_id)
        state = await self._shown_state(existing)
        raise FailedPrecondition(
            f"backfill {existing.backfill_id} is {state.lower()} with other options; watch it with "
            f"WatchBackfill, or cancel it before starting another",
            reason="BACKFILL_RUNNING",
            metadata={"backfill_id": existing.backfill_id, "state": state},
        )

    async def _start_dry(self, options: BackfillOptions) -> AsyncIterator[BackfillEvent]:
        record = BackfillRecord.new(new_backfill_id(), options, self.controller_id, token="")
        reason = await self._continue_previous(record)
        record.run_id = record.run_id or await redis_run_id(self._scanned)
        record.total_estimate = await self._scanned.dbsize()
        return self._spawn(
            record, None, pb.BACKFILL_EVENT_KIND_STARTED, reason or "dry run: nothing is written"
        )

    async def _start_execute(self, options: BackfillOptions) -> AsyncIterator[BackfillEvent]:
        backfill_id = new_backfill_id()
        holder = lease_holder(self.controller_id, backfill_id)
        lease = Lease(self._redis, self._keys.backfill_lease, holder, self._settings.backfill_lease_seconds)
        while not await lease.acquire():
            other = await self._record_of_lease_holder()
            if other is None:
                raise Unavailable("another controller is starting a backfill; retry in a moment")
            if other.state in UNFINISHED:
                return await self._attach_or_refuse(other, options)
            await asyncio.sleep(0.05)  # it just ended: its controller is letting the lease go
        try:
            existing = await self._unfinished()  # one whose controller died, paused or orphaned
            if existing is not None:
                await lease.release()
                return await self._attach_or_refuse(existing, options)
            record = BackfillRecord.new(backfill_id, options, self.controller_id, secrets.token_hex(8))
            reason = await self._continue_previous(record)
            # The cursor is this Redis run's (or, continuing, the run the previous backfill scanned).
            record.run_id = record.run_id or await redis_run_id(self._scanned)
            record.total_estimate = await self._scanned.dbsize()
            if not await self.store.create(record, holder):
                raise Unavailable("the backfill lease expired while starting; retry")
        except BaseException:
            await lease.release()
            raise
        log.info("backfill started", extra={"backfill_id": backfill_id})
        return self._spawn(record, lease, pb.BACKFILL_EVENT_KIND_STARTED, reason)

    async def _record_of_lease_holder(self) -> BackfillRecord | None:
        """The backfill the current lease holder runs (it may be a moment away from being recorded)."""
        for _ in range(20):
            holder = await self.store.lease_holder()
            if holder is None:
                return None
            record = await self.store.load(backfill_of_holder(holder))
            if record is not None:
                return record
            await asyncio.sleep(0.05)
        return None

    async def _continue_previous(self, record: BackfillRecord) -> str:
        """Continue where the last execute backfill with the same filter stopped at max_keys, if it did."""
        current = await self.store.current_id()
        previous = await self.store.load(current) if current else None
        options = record.options
        if (
            previous is None
            or previous.state != COMPLETED
            or not previous.max_keys_reached
            or previous.options.dry_run
            or previous.options.workspace_id != options.workspace_id
        ):
            return ""
        record.start_cursor = record.cursor = previous.resume_cursor or "0"
        record.skip_keys = list(previous.resume_skip)
        record.skip_until = previous.resume_skip_until
        record.covers_scope = previous.covers_scope and previous.counts.errors == 0
        record.continued_from = previous.backfill_id
        record.scan_started = previous.scan_started or previous.create_time
        record.run_id = previous.run_id
        return (
            f"continues backfill {previous.backfill_id}, which stopped at max_keys, "
            f"from SCAN cursor {record.start_cursor}"
        )

    def _spawn(
        self,
        record: BackfillRecord,
        lease: Lease | None,
        kind: pb.BackfillEventKind.ValueType,
        reason: str,
        subscribe: bool = True,
    ) -> AsyncIterator[BackfillEvent]:
        hub = EventHub()
        runner = BackfillRunner(
            record,
            redis=self._redis,
            store=self.store,
            settings=self._settings,
            metrics=self._metrics,
            hub=hub,
            lease=lease,
            first=(kind, reason),
            keys=self._keys,
            stores=self._stores,
        )
        self._runs[record.backfill_id] = Run(runner, hub)
        self._runs.move_to_end(record.backfill_id)
        self._forget_old_runs()
        subscription = hub.subscribe() if subscribe else None
        runner.start()
        return self._follow(record.backfill_id, subscription)

    def _forget_old_runs(self) -> None:
        finished = [bid for bid, run in self._runs.items() if not run.active]
        for bid in finished[: max(0, len(finished) - RUNS_KEPT)]:
            del self._runs[bid]

    # --- watching ----------------------------------------------------------------------------
    async def watch(self, backfill_id: str) -> AsyncIterator[BackfillEvent]:
        backfill_id = backfill_id or await self._latest_id()
        async for event in self._watch_known(backfill_id):
            yield event

    async def _watch_known(self, backfill_id: str) -> AsyncIterator[BackfillEvent]:
        run = self._runs.get(backfill_id)
        if run is not None and run.active and not run.hub.closed:
            async for event in self._follow(backfill_id, run.hub.subscribe(snapshot_event(run.record))):
                yield event
            return
        if run is not None and run.record.options.dry_run:
            yield snapshot_event(run.record)  # a finished dry run: it exists only here
            return
        if await self.store.load(backfill_id) is None:
            raise NotFound(f"no backfill {backfill_id}", reason="BACKFILL_NOT_FOUND")
        async for event in follow_redis(lambda: self._view(backfill_id)):
            yield event

    async def _follow(
        self, backfill_id: str, subscription: Subscription | None
    ) -> AsyncIterator[BackfillEvent]:
        """A subscription's events; when its run stops here unfinished, the state in Redis from then on."""
        if subscription is None:
            return
        async for event in subscription:
            yield event
        run = self._runs.get(backfill_id)
        if subscription.detached and run is not None and not run.record.options.dry_run:
            async for event in follow_redis(lambda: self._view(backfill_id), skip_first=True):
                yield event

    async def _view(self, backfill_id: str) -> Shown | None:
        run = self._runs.get(backfill_id)
        if run is not None and run.active:
            return run.record, run.record.state
        record = await self.store.load(backfill_id)
        if record is None:
            return None
        return record, await self._shown_state(record)

    async def _shown_state(self, record: BackfillRecord) -> str:
        """RUNNING in Redis with nobody holding its lease shows as ORPHANED."""
        if record.state != RUNNING:
            return record.state
        run = self._runs.get(record.backfill_id)
        if run is not None and run.active:
            return RUNNING
        holder = await self.store.lease_holder()
        if holder is None or backfill_of_holder(holder) != record.backfill_id:
            return ORPHANED
        return RUNNING

    async def _latest_id(self) -> str:
        for bid, run in reversed(self._runs.items()):
            if run.active:
                return bid
        current = await self.store.current_id()
        if current is not None:
            return current
        if self._runs:
            return next(reversed(self._runs))
        raise NotFound("no backfill has run yet", reason="BACKFILL_NOT_FOUND")

    def gauges(self) -> BackfillGauges | None:
        """The latest run of this process for /metrics; called on the scrape thread, so memory only."""
        run = next(reversed(self._runs.values()), None)
        if run is None:
            return None
        record = run.record
        return BackfillGauges(
            state=record.state.lower(),
            progress_ratio=record.percent_done() / 100,
            total_keys=record.target,
            rate=record.rate,
            eta_seconds=record.eta_seconds(),
            dry_run=record.options.dry_run,
        )

    # --- GetBackfill and the operator's requests ---------------------------------------------
    async def get(self, backfill_id: str) -> Shown:
        backfill_id = backfill_id or await self._latest_id()
        view = await self._view(backfill_id)
        if view is None:
            run = self._runs.get(backfill_id)
            if run is None:
                raise NotFound(f"no backfill {backfill_id}", reason="BACKFILL_NOT_FOUND")
            return run.record, run.record.state
        return view

    async def pause(self, backfill_id: str) -> Shown:
        return await self._request(backfill_id, "pause", "paused by an operator", {PAUSED} | FINISHED)

    async def cancel(self, backfill_id: str) -> Shown:
        return await self._request(backfill_id, "cancel", "cancelled by an operator", FINISHED)

    async def resume(self, backfill_id: str) -> Shown:
        return await self._request(backfill_id, "resume", "resumed on request", {RUNNING} | FINISHED)

    async def update(self, backfill_id: str, rate: float | None, batch: int | None) -> Shown:
        run = self._runs.get(backfill_id)
        if run is not None and run.record.options.dry_run:
            if not run.active:
                raise _finished(backfill_id, run.record.state)
        else:
            outcome, state = await self.store.control(backfill_id, "update", rate=rate, batch=batch)
            if outcome == "MISSING":
                raise NotFound(f"no backfill {backfill_id}", reason="BACKFILL_NOT_FOUND")
            if outcome == "FINISHED":
                raise _finished(backfill_id, state)
        if run is not None and run.active:
            run.runner.poke(rate=rate, batch=batch)
        return await self.get(backfill_id)

    async def _request(self, backfill_id: str, action: str, reason: str, settled: set[str]) -> Shown:
        run = self._runs.get(backfill_id)
        control = {"pause": "pause", "cancel": "cancel", "resume": ""}[action]
        if run is not None and run.record.options.dry_run:
            if not run.active:
                raise _finished(backfill_id, run.record.state)
            run.runner.poke(control)
        else:
            outcome, state = await self.store.control(backfill_id, action, reason)
            if outcome == "MISSING":
                raise NotFound(f"no backfill {backfill_id}", reason="BACKFILL_NOT_FOUND")
            if outcome == "FINISHED":
                raise _finished(backfill_id, state)
            if outcome == "TAKE_OVER":
                if not await self._take_over(backfill_id, (PAUSED, ORPHANED, RUNNING, FAILED), reason):
                    raise FailedPrecondition(
                        f"backfill {backfill_id} cannot be resumed: another backfill is current, or another "
                        "controller resumed it first",
                        reason="BACKFILL_NOT_RESUMABLE",
                        metadata={"backfill_id": backfill_id},
                    )
            elif outcome == "ASKED" and run is not None and run.active:
                run.runner.poke(control)
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            record, shown = await self.get(backfill_id)
            if shown in settled or time.monotonic() > deadline:
                return record, shown
            await asyncio.sleep(0.05)

    # --- resuming a backfill whose controller died --------------------------------------------
    async def _take_over(self, backfill_id: str, allowed: tuple[str, ...], reason: str) -> bool:
        async with self._lock:
            run = self._runs.get(backfill_id)
            if run is not None and run.active:
                return True
            holder = lease_holder(self.controller_id, backfill_id)
            lease = Lease(
                self._redis, self._keys.backfill_lease, holder, self._settings.backfill_lease_seconds
            )
            if not await lease.acquire():
                return False
            try:
                token = secrets.token_hex(8)
                outcome, previous = await self.store.take_over(
                    backfill_id, holder, token, self.controller_id, reason, allowed
                )
                record = await self.store.load(backfill_id) if outcome == "OK" else None
            except BaseException:
                await lease.release()
                raise
            if record is None:
                await lease.release()
                return False
            log.info("backfill resumed", extra={"backfill_id": backfill_id, "reason": previous})
            message = f"{reason}: continues from SCAN cursor {record.cursor} (it was {previous.lower()})"
            self._spawn(record, lease, pb.BACKFILL_EVENT_KIND_RESUMED, message, subscribe=False)
            return True

    async def _watch_orphans(self) -> None:
        interval = self._settings.backfill_orphan_check_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self._adopt_orphan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away for a moment: look again next time
                log.warning("orphan check failed: %s", type(exc).__name__)

    async def _adopt_orphan(self) -> None:
        """Read-only unless a backfill's controller stopped renewing its lease."""
        current = await self.store.current_id()
        if current is None or (current in self._runs and self._runs[current].active):
            return
        if await self.store.state_of(current) not in (RUNNING, ORPHANED):
            return
        if await self.store.lease_holder() is not None:
            return
        if self._settings.backfill_auto_resume:
            reason = "resumed after its controller stopped renewing the lease"
            await self._take_over(current, (RUNNING, ORPHANED), reason)
        else:
            await self.store.control(current, "orphan", "its controller stopped renewing the lease")


def _finished(backfill_id: str, state: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"backfill {backfill_id} is {state.lower()}; there is nothing to change",
        reason="BACKFILL_FINISHED",
        metadata={"backfill_id": backfill_id, "state": state},
    )
