"""The loop that cleanup and reverse copy share: batches over the keyspace, checkpointed and resumable.

An execute run takes the operation lease, saves its state after every batch under its ``current`` key
(``resume`` continues from there, also after its controller died), and stores its result under its
``last`` key. A dry run takes no lease and writes nothing at all, so it cannot be resumed.
Between batches a run stops (``stopped``, resumable) when its lease is lost, when ``max_keys`` keys were
examined, or when the engine says so (a backfill started, the stage changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from enum import StrEnum

from redis.asyncio import Redis

from relay.controller.backfill.state import check_batch_size, check_rate_limit
from relay.controller.common.lease import Lease
from relay.controller.common.operation import new_operation_id, take_operation_lease
from relay.controller.common.redis_run import redis_run_id
from relay.controller.common.script_budget import ScriptBudget
from relay.controller.common.throttle import TokenBucket
from relay.controller.stages.facts import redis_now
from relay.core.errors import FailedPrecondition, InvalidArgument
from relay.core.keys import KEYS, KeyLayout

DEFAULT_BATCH = 1000
RESTARTED = (
    "Redis restarted (run_id changed) during the sweep: a SCAN cursor does not survive a restart, so its "
    "coverage is unknown; resume to sweep again from the start"
)

log = logging.getLogger("relay.migration")


class SweepState(StrEnum):
    """The lifecycle of a cleanup or reverse copy, as stored in Redis (the value)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"  # asked to stop (max_keys, a refusal, the caller went away): resume continues


@dataclass
class SweepRun:
    """The state of one cleanup or reverse copy; ``done`` counts keys deleted or records copied."""

    operation_id: str
    dry_run: bool = False
    workspace_id: str = ""
    rate_limit: float = 0.0
    batch_size: int = DEFAULT_BATCH
    max_keys: int = 0
    state: str = SweepState.RUNNING
    phase: str = "jobs"
    cursor: int = 0
    scanned: int = 0
    done: int = 0
    unchanged: int = 0
    kept_missing_new: int = 0
    kept_legacy_newer: int = 0
    kept_invalid: int = 0
    kept_differing: int = 0
    kept_pending: int = 0
    queue_entries_removed: int = 0
    idempotency_deleted: int = 0
    #: Cleanup's queue phase: where a dry run walks the legacy queue, and how often its head changed.
    queue_offset: int = 0
    queue_changes: int = 0
    errors: int = 0
    rate: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    total_estimate: int = 0
    reason: str = ""
    #: The Redis run (INFO server run_id) the cursor belongs to: a SCAN cursor does not survive a restart.
    run_id: str = ""

    @property
    def percent_done(self) -> float:
        if self.state == SweepState.COMPLETED:
            return 100.0
        if self.total_estimate <= 0:
            return 0.0
        return min(99.9, 100.0 * self.scanned / self.total_estimate)

    @property
    def kept_valid(self) -> int:
        """Valid records left behind that the operation exists to handle."""
        return (
            self.kept_missing_new
            + self.kept_legacy_newer
            + self.kept_differing
            + self.kept_pending
            + self.errors
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> SweepRun:
        return cls(**json.loads(text))


class Sweep:
    """One kind of sweep; subclasses name their keys and phases and handle one batch."""

    kind = "sweep"
    phases: tuple[str, ...] = ("jobs",)

    def __init__(self, redis: Redis, keys: KeyLayout = KEYS):
        self._redis = redis
        self._keys = keys
        #: Sizes each batch's script to the controller's script budget (set by the RPCs from settings).
        self.budget = ScriptBudget(0.0)

    # --- what a subclass provides -------------------------------------------------------------
    @property
    def current_key(self) -> str:
        raise NotImplementedError

    @property
    def last_key(self) -> str:
        raise NotImplementedError

    async def preconditions(self, run: SweepRun) -> None:
        """Raise FailedPrecondition when an execute may not start."""

    async def stop_reason(self, run: SweepRun) -> str:
        """Checked between the batches of an execute run: a reason to stop, or ''."""
        return ""

    async def step(self, run: SweepRun) -> int:
        """Handle one batch of the current phase; advance ``run.phase`` when it is over. Returns keys seen."""
        raise NotImplementedError

    async def finished(self, run: SweepRun) -> None:
        """Record what a completed execute run establishes."""

    async def _run_id(self) -> str:
        """The run of the Redis whose SCAN cursor the checkpoint holds."""
        return await redis_run_id(self._redis)

    async def _key_count(self) -> int:
        return await self._redis.dbsize()

    # --- the loop ----------------------------------------------------------------------------
    async def last(self) -> SweepRun | None:
        raw = await self._redis.get(self.last_key)
        return SweepRun.from_json(raw) if raw else None

    async def prepare(
        self,
        *,
        dry_run: bool,
        workspace_id: str,
        rate_limit: float,
        batch_size: int,
        max_keys: int,
        resume: bool,
    ) -> SweepRun:
        check_rate_limit(rate_limit)
        check_batch_size(batch_size)
        if max_keys < 0:
            raise InvalidArgument("max_keys", "must not be negative (0: no limit)")
        if not resume:
            return SweepRun(
                new_operation_id(self.kind),
                dry_run=dry_run,
                workspace_id=workspace_id,
                rate_limit=rate_limit,
                batch_size=batch_size or DEFAULT_BATCH,
                max_keys=max_keys,
                phase=self.phases[0],
                started_at=await redis_now(self._redis),
                total_estimate=await self._key_count(),
                run_id=await self._run_id(),
            )
        if dry_run:
            raise InvalidArgument("dry_run", "a dry run stores no checkpoint, so it cannot be resumed")
        raw = await self._redis.get(self.current_key)
        if not raw:
            raise FailedPrecondition(
                f"there is no unfinished {self.kind} to resume", reason="NOTHING_TO_RESUME"
            )
        run = SweepRun.from_json(raw)
        if workspace_id and workspace_id != run.workspace_id:
            raise InvalidArgument("workspace_id", f"must be empty or {run.workspace_id!r} to resume")
        run.rate_limit = rate_limit or run.rate_limit
        run.batch_size = batch_size or run.batch_size
        run.max_keys = run.scanned + max_keys if max_keys else 0
        return run

    async def run(self, run: SweepRun) -> AsyncIterator[tuple[str, SweepRun]]:
        """Yields ("started" | "progress" | "completed" | "stopped" | "failed", the run's state)."""
        lease: Lease | None = None
        if not run.dry_run:
            await self.preconditions(run)
            lease = await take_operation_lease(self._redis, run.operation_id)
        else:
            try:
                await self.preconditions(run)
            except FailedPrecondition as refusal:
                run.reason = f"dry run; an execute would be refused now: {refusal.message}"
        try:
            run.state = SweepState.RUNNING
            current = await self._run_id()
            if run.run_id and current != run.run_id:
                self._begin_again(run)  # resumed after a Redis restart: its cursor means nothing now
            run.run_id = current
            await self._save(run)
            log.info(f"{self.kind} {run.operation_id} started", extra={"reason": "dry run" * run.dry_run})
            yield "started", run
            bucket = TokenBucket(run.rate_limit)
            began, scanned_before = time.monotonic(), run.scanned
            while run.phase != "done":
                reason = await self._stop_reason(run, lease)
                if reason:
                    run.state, run.reason = SweepState.STOPPED, reason
                    await self._save(run)
                    log.info(f"{self.kind} {run.operation_id} stopped", extra={"reason": reason})
                    yield "stopped", run
                    return
                seen = await self.step(run)
                if await self._run_id() != run.run_id:
                    # Keys the old cursor had not reached are unknown: never report such a run complete.
                    self._begin_again(run)
                    run.state, run.reason = SweepState.FAILED, RESTARTED
                    await self._save(run)
                    log.warning(f"{self.kind} {run.operation_id} failed: Redis restarted")
                    yield "failed", run
                    return
                await bucket.take(seen)
                run.rate = (run.scanned - scanned_before) / max(time.monotonic() - began, 1e-6)
                await self._save(run)
                yield "progress", run
            run.state, run.ended_at = SweepState.COMPLETED, await redis_now(self._redis)
            if not run.dry_run:
                pipe = self._redis.pipeline(transaction=True)
                pipe.set(self.last_key, run.to_json())
                pipe.delete(self.current_key)
                await pipe.execute()
                await self.finished(run)
            log.info(f"{self.kind} {run.operation_id} completed: {run.done} done, {run.kept_valid} kept")
            yield "completed", run
        except (asyncio.CancelledError, GeneratorExit):
            run.state, run.reason = SweepState.STOPPED, "the caller went away; resume to continue"
            with contextlib.suppress(Exception):
                await self._save(run)
            raise
        except Exception as exc:
            run.state, run.reason = SweepState.FAILED, f"{type(exc).__name__}; resume to continue"
            with contextlib.suppress(Exception):
                await self._save(run)
            raise
        finally:
            if lease is not None:
                await lease.release()

    def _begin_again(self, run: SweepRun) -> None:
        """Put the checkpoint back at the start of the first phase, for a pass on the current Redis run."""
        run.phase, run.cursor, run.queue_offset = self.phases[0], 0, 0

    async def _stop_reason(self, run: SweepRun, lease: Lease | None) -> str:
        if run.max_keys and run.scanned >= run.max_keys:
            return f"examined {run.scanned} keys (max_keys); resume to continue"
        if lease is None:
            return ""
        if lease.lost.is_set():
            return "lost the operation lease; resume to continue"
        return await self.stop_reason(run)

    async def _save(self, run: SweepRun) -> None:
        if not run.dry_run:
            await self._redis.set(self.current_key, run.to_json())
