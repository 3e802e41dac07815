"""ReverseCopy: bring the legacy layout up to date from the new one, so a rollback loses nothing.

Every new-layout record (``ai:job:*``, or one workspace's) whose legacy copy is missing or has a lower
``rev`` is copied back whole by ``REVERSE_COPY``, one atomic script per batch. It never overwrites a
newer legacy record, a legacy key of another workspace or one that is not a hash, nor a legacy record with
the same ``rev`` and other data; those are counted, and a run that met the last two is not *complete*, so
the stage rules do not accept it for a rollback.

It may run in any stage (the legacy copy only ever catches up to the revision JobService would serve),
but not beside a backfill, which copies the other way, nor beside another operation.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from relay.controller.common.script_budget import timed_script
from relay.controller.stages.facts import record_reverse_copy_completed
from relay.controller.sweep.loop import SHARED_OUTCOMES, Sweep, SweepRun
from relay.core.codec import DATA_FIELDS
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, NEW_JOB_PATTERN, KeyLayout
from relay.core.lua.sweep import REVERSE_COPY

OUTCOMES = {
    "foreign_new": "kept_invalid",  # another workspace's record under the new key: counted as foreign too
    "copied": "done",
    "unchanged": "unchanged",
    **SHARED_OUTCOMES,
}


class ReverseCopier(Sweep):
    kind = "reverse-copy"
    what = "a reverse copy"

    def __init__(self, redis: Redis, keys: KeyLayout = KEYS, metrics: Any = None):
        super().__init__(
            redis, keys, metrics, current_key=keys.reverse_copy_current, last_key=keys.reverse_copy_last
        )

    async def finished(self, run: SweepRun) -> None:
        complete = run.kept_differing == 0 and run.kept_invalid == 0 and run.errors == 0
        await record_reverse_copy_completed(
            self._redis, run.workspace_id, run.started_at, run.ended_at, run.operation_id, complete
        )

    async def step(self, run: SweepRun) -> int:
        position, keys = await self._scan(run)
        run.scanned += len(keys)
        entries = self._records_of(run, keys)
        if entries:
            await self._copy(run, entries)
        run.cursor = position
        if run.cursor == 0:
            run.phase = "done"
        return len(keys)

    async def _scan(self, run: SweepRun) -> tuple[int, list[bytes]]:
        count = self.budget.size(run.batch_size)
        cursor, keys = await self._redis.scan(run.cursor, match=self._pattern(run), count=count)
        return int(cursor), keys

    def _pattern(self, run: SweepRun) -> str:
        return self._keys.new_job(run.workspace_id, "*") if run.workspace_id else NEW_JOB_PATTERN

    def _records_of(self, run: SweepRun, keys: list[bytes]) -> list[tuple[str, str, str]]:
        """(key, workspace id, job id) of each key that is a job record of ours in the run's scope."""
        entries: list[tuple[str, str, str]] = []
        for key in keys:
            name = key.decode("utf-8", "replace")
            workspace_id, job_id = self._keys.parse_new_job(name)
            if not (is_workspace_id(workspace_id) and is_job_id(job_id)):
                continue  # not a job record of ours
            if run.workspace_id and workspace_id != run.workspace_id:
                continue
            entries.append((name, workspace_id, job_id))
        return entries

    async def _copy(self, run: SweepRun, entries: list[tuple[str, str, str]]) -> None:
        script_keys: list[str] = []
        args: list[str] = ["1" if run.dry_run else "0", str(len(DATA_FIELDS)), *DATA_FIELDS]
        for name, workspace_id, job_id in entries:
            script_keys += [name, self._keys.legacy_job(job_id)]
            args += [workspace_id, job_id]
        call = self._lua.call(REVERSE_COPY, keys=script_keys, args=args)
        self._tally(run, OUTCOMES, await timed_script(self.budget, len(script_keys) // 2, call))
