"""What cleanup and reverse copy share on top of the operation loop (``common.scan_operation``).

Both walk the keyspace once, may run dry (no lease, nothing written, so not resumable) and stop between
batches (``stopped``, resumable) when ``max_keys`` keys were examined, when the operation lease is lost
or when the engine says so (a backfill started, the stage changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from relay.controller.common import scan_operation
from relay.controller.common.lease import Lease
from relay.controller.common.operation import backfill_running, refuse_while_backfill_runs
from relay.controller.common.scan_operation import ScanOperation, ScanRun, check_pace
from relay.controller.common.script_budget import ScriptBudget
from relay.core.errors import InvalidArgument
from relay.core.foreign import note_foreign
from relay.core.keys import KeyLayout
from relay.core.lua import LuaScripts

#: How the scripts of both sweeps count an outcome they share (each kind's table adds its own).
SHARED_OUTCOMES = {
    "invalid": "kept_invalid",
    "legacy_newer": "kept_legacy_newer",
    "differing": "kept_differing",
}
RESTARTED = (
    "Redis restarted (run_id changed) during the sweep: a SCAN cursor does not survive a restart, so its "
    "coverage is unknown; resume to sweep again from the start"
)


class SweepState(StrEnum):
    """The lifecycle of a cleanup or reverse copy, as stored in Redis (the value)."""

    RUNNING = scan_operation.RUNNING
    COMPLETED = scan_operation.COMPLETED
    FAILED = scan_operation.FAILED
    STOPPED = "stopped"  # asked to stop (max_keys, a refusal, the caller went away): resume continues


@dataclass
class SweepRun(ScanRun):
    """The state of one cleanup or reverse copy; ``done`` counts keys deleted or records copied."""

    id_field = "operation_id"
    examined_fields = ("scanned",)

    operation_id: str
    max_keys: int = 0
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

    def add_outcomes(self, counter_of: dict[str, str], outcomes: list[bytes]) -> None:
        """Count each script outcome on the counter the table names (outcomes it does not name count none)."""
        for outcome in outcomes:
            counter = counter_of.get(outcome.decode())
            if counter:
                setattr(self, counter, getattr(self, counter) + 1)

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


class Sweep(ScanOperation[SweepRun]):
    """One kind of sweep; subclasses name their keys and phases and handle one batch."""

    kind = "sweep"
    run_type = SweepRun
    phases: tuple[str, ...] = ("jobs",)
    stopped = (SweepState.STOPPED, "stopped")
    went_away = SweepState.STOPPED
    restarted = RESTARTED

    #: What the refusal to start beside a backfill calls a run of this kind.
    what = "a sweep"

    def __init__(self, redis: Redis, keys: KeyLayout, metrics: Any, *, current_key: str, last_key: str):
        super().__init__(redis, keys, current_key=current_key, last_key=last_key)
        self._metrics = metrics
        self._lua = LuaScripts(redis)
        #: Sizes each batch's script to the controller's script budget (set by the RPCs from settings).
        self.budget = ScriptBudget(0.0)

    async def last(self) -> SweepRun | None:
        return await self._load(self.last_key)

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
        check_pace(rate_limit, batch_size)
        if max_keys < 0:
            raise InvalidArgument("max_keys", "must not be negative (0: no limit)")
        if resume and dry_run:
            raise InvalidArgument("dry_run", "a dry run stores no checkpoint, so it cannot be resumed")
        fresh = {} if resume else {"dry_run": dry_run, "max_keys": max_keys}
        run = await self._prepare(
            workspace_id=workspace_id, rate_limit=rate_limit, batch_size=batch_size, resume=resume, **fresh
        )
        if resume:
            run.max_keys = run.scanned + max_keys if max_keys else 0
        return run

    async def preconditions(self, run: SweepRun) -> None:
        await refuse_while_backfill_runs(self._redis, self.what)

    async def stop_reason(self, run: SweepRun) -> str:
        holder = await backfill_running(self._redis)
        return f"a backfill started ({holder}); resume once it is over" if holder else ""

    async def begin_again(self, run: SweepRun) -> None:
        run.phase, run.cursor, run.queue_offset = self.phases[0], 0, 0

    def _tally(self, run: SweepRun, counter_of: dict[str, str], outcomes: list[bytes]) -> None:
        """Count a script's outcomes on ``run``; another workspace's record met is noted as foreign too."""
        for _ in range(outcomes.count(b"foreign_new")):
            note_foreign(self._metrics)
        run.add_outcomes(counter_of, outcomes)

    def summary(self, run: SweepRun) -> str:
        return f"{run.done} done, {run.kept_valid} kept"

    async def _stop_reason(self, run: SweepRun, lease: Lease | None) -> str:
        if run.max_keys and run.scanned >= run.max_keys:
            return f"examined {run.scanned} keys (max_keys); resume to continue"
        return await super()._stop_reason(run, lease)
