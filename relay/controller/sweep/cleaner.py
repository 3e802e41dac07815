"""CleanupLegacy: delete the legacy layout once nothing reads or writes it.

It may start (with ``--execute``) only when the global default and every workspace override are in
NEW_ONLY or later, the last verification of all workspaces found every valid legacy record in the new
layout and is recent, no backfill runs and no other operation holds the operation lease. It stops
between batches as soon as a stage moves back before NEW_ONLY or a backfill starts.

Three phases, each resumable from its checkpoint:

- ``jobs``: every legacy job key, deleted by ``CLEANUP_LEGACY_JOBS`` only when its new copy exists and is
  newer, or has the same ``rev`` and the same data (equal revisions with different data are kept: the old
  system did not bump ``rev``, so neither copy is known to be the newer). Keys of pending jobs are kept: a
  legacy queue entry may name them, and claimers find the workspace through the legacy record; once the
  workers took them, another run deletes them.
- ``queue``: entries at the head of the legacy pending queue whose job is done or gone, removed where
  claimers take them, up to the first job that is still pending.
- ``idempotency``: ``ai:idempotency:<workspace>:<request id>`` keys are *not* legacy-only: Relay's own
  Execute reads and writes them in every stage, and they expire after their 24 h TTL. Only keys that Relay
  can never read (a workspace or request id that fails its validation) are deleted.

A complete cleanup (it kept no valid record) that started after legacy writes stopped lets the stage move
to LEGACY_CLEANED. Keys that are not job records at all are counted (``kept_invalid``) and left for a human.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from relay.controller.common.script_budget import timed_script
from relay.controller.stages.control import StageControl
from relay.controller.stages.facts import read_evidence, record_cleanup_completed, redis_now
from relay.controller.stages.rules import Refusal, check_cleanup_allowed
from relay.controller.sweep.loop import SHARED_OUTCOMES, Sweep, SweepRun
from relay.core.codec import DATA_FIELDS
from relay.core.errors import FailedPrecondition
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import IDEMPOTENCY_PATTERN, IDEMPOTENCY_PREFIX, KEYS, LEGACY_JOB_PATTERN, KeyLayout
from relay.core.lua.sweep import CLEANUP_LEGACY_JOBS, DRAIN_LEGACY_QUEUE_HEAD
from relay.core.stages import Stage

#: Outcome of CLEANUP_LEGACY_JOBS -> the counter it adds to ("gone": deleted by someone else meanwhile).
JOB_OUTCOMES = {
    "foreign_new": "kept_missing_new",  # another workspace's record under the new key: counted as foreign too
    "deleted": "done",
    "missing_new": "kept_missing_new",
    "pending": "kept_pending",
    **SHARED_OUTCOMES,
}
#: Consecutive times the queue head may change under a batch before the queue phase moves on.
QUEUE_RETRIES = 5


class Cleaner(Sweep):
    kind = "cleanup"
    what = "a cleanup"
    phases = ("jobs", "queue", "idempotency")

    def __init__(
        self, redis: Redis, stage_control: StageControl, keys: KeyLayout = KEYS, metrics: Any = None
    ):
        super().__init__(redis, keys, metrics, current_key=keys.cleanup_current, last_key=keys.cleanup_last)
        self._stages = stage_control
        #: Where the legacy keys are (their own Redis in a split topology: ``split_cleaner``).
        self._legacy = redis
        self._legacy_lua = self._lua

    async def preconditions(self, run: SweepRun) -> None:
        await super().preconditions(run)
        refusal = await self._refusal()
        if refusal:
            raise FailedPrecondition(refusal.message, reason=refusal.reason)

    async def _refusal(self) -> Refusal | None:
        default, overrides = await self._stages.stages_in_force()
        evidence = await read_evidence(self._redis, "")
        return check_cleanup_allowed(
            default, overrides, evidence.verification, await redis_now(self._redis), self._stages.limits
        )

    async def stop_reason(self, run: SweepRun) -> str:
        reason = await super().stop_reason(run)
        if reason:
            return reason
        default, overrides = await self._stages.stages_in_force()
        behind = [ws for ws, stage in overrides.items() if stage < Stage.NEW_ONLY]
        if default < Stage.NEW_ONLY or behind:
            return "a stage moved back before NEW_ONLY; legacy keys are read again, so the cleanup stopped"
        return ""

    async def step(self, run: SweepRun) -> int:
        if run.phase == "jobs":
            return await self._jobs(run)
        if run.phase == "queue":
            return await self._queue(run)
        return await self._idempotency(run)

    async def finished(self, run: SweepRun) -> None:
        await record_cleanup_completed(
            self._redis, run.started_at, run.ended_at, run.operation_id, complete=run.kept_valid == 0
        )

    # --- phases ------------------------------------------------------------------------------
    def _jobs_batch(self, run: SweepRun) -> int:
        return self.budget.size(run.batch_size)

    async def _jobs(self, run: SweepRun) -> int:
        count = self._jobs_batch(run)
        cursor, keys = await self._legacy.scan(run.cursor, match=LEGACY_JOB_PATTERN, count=count)
        run.scanned += len(keys)
        if keys:
            await self._jobs_of(run, keys)
        run.cursor = int(cursor)
        if run.cursor == 0:
            run.phase = "queue"
        return len(keys)

    async def _jobs_of(self, run: SweepRun, keys: list[bytes]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "workspace_id")
        workspaces = await pipe.execute(raise_on_error=False)
        script_keys: list[str] = []
        args: list[str] = ["1" if run.dry_run else "0", str(len(DATA_FIELDS)), *DATA_FIELDS]
        for key, workspace in zip(keys, workspaces, strict=True):
            name = key.decode("utf-8", "replace")
            job_id = KeyLayout.job_id_of_legacy(name)
            workspace_id = workspace.decode("utf-8", "replace") if isinstance(workspace, bytes) else ""
            if isinstance(workspace, Exception) or not is_job_id(job_id):
                run.kept_invalid += 1  # not a hash, or a key no job id could make
                continue
            if workspace is None:
                # No workspace_id field, or the key went away since the SCAN: the script tells which.
                script_keys += [name, name]
            elif is_workspace_id(workspace_id):
                script_keys += [name, self._keys.new_job(workspace_id, job_id)]
            else:
                run.kept_invalid += 1
                continue
            args += [workspace_id, job_id]
        if script_keys:
            call = self._lua.call(CLEANUP_LEGACY_JOBS, keys=script_keys, args=args)
            self._tally(run, JOB_OUTCOMES, await timed_script(self.budget, len(script_keys) // 2, call))

    def _queue_new_key(self, workspace_id: str, job_id: str) -> str:
        """The key DRAIN_LEGACY_QUEUE_HEAD reads a valid entry's status from."""
        return self._keys.new_job(workspace_id, job_id)

    async def _queue(self, run: SweepRun) -> int:
        queue = self._keys.legacy_queue
        start = run.queue_offset if run.dry_run else 0
        entries = await self._legacy.lrange(queue, start, start + run.batch_size - 1)
        if not entries:
            run.phase = "idempotency"
            return 0
        pipe = self._legacy.pipeline(transaction=False)
        for entry in entries:
            pipe.hget(self._keys.legacy_job(entry.decode("utf-8", "replace")), "workspace_id")
        workspaces = await pipe.execute(raise_on_error=False)
        keys: list[str] = [queue]
        args: list[str] = ["1" if run.dry_run else "0", str(start)]
        for entry, workspace in zip(entries, workspaces, strict=True):
            job_id = entry.decode("utf-8", "replace")
            legacy = self._keys.legacy_job(job_id)
            workspace_id = workspace.decode("utf-8", "replace") if isinstance(workspace, bytes) else ""
            valid = is_workspace_id(workspace_id) and is_job_id(job_id)
            keys += [legacy, self._queue_new_key(workspace_id, job_id) if valid else legacy]
            args += [job_id, workspace_id, "1" if valid else "0"]
        removed, why = await self._legacy_lua.call(DRAIN_LEGACY_QUEUE_HEAD, keys=keys, args=args)
        run.queue_entries_removed += int(removed)
        run.queue_offset = start + int(removed)
        why = why.decode()
        run.queue_changes = run.queue_changes + 1 if why == "changed" else 0
        if why == "pending" or run.queue_changes > QUEUE_RETRIES:
            run.phase = "idempotency"
        return len(entries)

    async def _idempotency(self, run: SweepRun) -> int:
        cursor, keys = await self._legacy.scan(run.cursor, match=IDEMPOTENCY_PATTERN, count=run.batch_size)
        run.scanned += len(keys)
        unreadable = [key for key in keys if not _readable_idempotency_key(key.decode("utf-8", "replace"))]
        if unreadable and not run.dry_run:
            await self._legacy.unlink(*unreadable)
        run.idempotency_deleted += len(unreadable)
        run.cursor = int(cursor)
        if run.cursor == 0:
            run.phase = "done"
        return len(keys)


def _readable_idempotency_key(key: str) -> bool:
    """True for a key that Relay's Execute could build: a valid workspace id and client request id."""
    workspace_id, _, request_id = key[len(IDEMPOTENCY_PREFIX) :].partition(":")
    return is_workspace_id(workspace_id) and is_job_id(request_id)
