"""Verification: a diff of the legacy layout against the new one, like Vitess' VDiff.

Two passes over the keyspace, each a SCAN with pipelined reads, one batch in memory at a time:

1. every legacy key (``ai:jobs:*``): not a hash or no valid workspace id counts as *invalid*; else its
   new copy is *missing*, *differing* (other data, and not a higher ``rev``), *legacy behind* (other
   data and a higher ``rev``: updated while only the new layout was written, which JobService serves
   anyway; only a rollback needs it copied back) or *matching*, and a copy absent from its workspace's
   listing index is also *unlisted*;
2. every new key (``ai:job:*``): one without a legacy copy of the same workspace is *only in new*.

A record that looks missing or differing is read again, both copies in one MULTI, so a live write between
the two reads of a batch is not reported as a difference. Counts are per workspace (memory grows with the
number of workspaces, not keys). SCAN may return a key twice when Redis resizes its table mid-scan, so a
count can include a record twice; whether the result is clean does not depend on it.

The run is checkpointed in Redis after every batch (``resume`` continues it), rate-limited by a token
bucket, guarded by the operation lease, and its result is stored (``KEYS.verification_last``) and
recorded as a migration fact for the stage rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from relay.controller.backfill.state import check_batch_size, check_rate_limit
from relay.controller.common.operation import new_operation_id, take_operation_lease
from relay.controller.common.redis_run import redis_run_id
from relay.controller.common.throttle import TokenBucket
from relay.controller.stages.facts import record_verification, redis_now
from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import FailedPrecondition, InvalidArgument
from relay.core.foreign import note_foreign
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, NEW_JOB_PATTERN, KeyLayout
from relay.core.rpc_errors import TRANSIENT_STORE_ERRORS

DEFAULT_BATCH = 1000

log = logging.getLogger("relay.migration")
SAMPLE_IDS = 20

RESTARTED = (
    "Redis restarted (run_id changed) during the verification: a SCAN cursor does not survive a restart, "
    "so its coverage is unknown; resume to verify again from the start"
)


class VerificationState(StrEnum):
    """The lifecycle of a verification, as stored in Redis (the value)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the caller went away: resume continues


@dataclass
class WorkspaceCounts:
    matching: int = 0
    missing_in_new: int = 0
    differing: int = 0
    only_in_new: int = 0
    unlisted: int = 0
    legacy_behind: int = 0
    fields: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    @property
    def legacy_covered(self) -> bool:
        return self.missing_in_new == 0 and self.differing == 0 and self.unlisted == 0

    @property
    def clean(self) -> bool:
        return self.legacy_covered and self.only_in_new == 0

    def sample(self, job_id: str) -> None:
        if len(self.samples) < SAMPLE_IDS and job_id not in self.samples:
            self.samples.append(job_id)


@dataclass
class VerificationRun:
    verification_id: str
    workspace_id: str = ""
    rate_limit: float = 0.0
    batch_size: int = DEFAULT_BATCH
    state: str = VerificationState.RUNNING
    phase: str = "legacy"  # legacy | new | done
    cursor: int = 0
    scanned_legacy: int = 0
    scanned_new: int = 0
    invalid_legacy: int = 0
    workspaces: dict[str, WorkspaceCounts] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0
    total_estimate: int = 0
    reason: str = ""
    #: The Redis run (INFO server run_id) the cursor belongs to: a SCAN cursor does not survive a restart.
    run_id: str = ""
    #: Writes still owed to one of two stores when it finished (split topologies; outbox entries).
    outbox_pending: int = 0

    @property
    def clean(self) -> bool:
        return (
            self.state == VerificationState.COMPLETED
            and self.outbox_pending == 0
            and all(c.clean for c in self.workspaces.values())
        )

    @property
    def legacy_covered(self) -> bool:
        return self.state == VerificationState.COMPLETED and all(
            c.legacy_covered for c in self.workspaces.values()
        )

    @property
    def percent_done(self) -> float:
        if self.state == VerificationState.COMPLETED:
            return 100.0
        if self.total_estimate <= 0:
            return 0.0
        return min(99.9, 100.0 * (self.scanned_legacy + self.scanned_new) / self.total_estimate)

    def counts(self, workspace_id: str) -> WorkspaceCounts:
        return self.workspaces.setdefault(workspace_id, WorkspaceCounts())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> VerificationRun:
        data = json.loads(text)
        data["workspaces"] = {ws: WorkspaceCounts(**c) for ws, c in data.get("workspaces", {}).items()}
        return cls(**data)


def _as_record(reply: object) -> Record | None:
    if not isinstance(reply, dict) or not reply:
        return None
    return codec.decode(reply)


def _own(record: Record | None, job_id: str, workspace_id: str) -> Record | None:
    """A record as JobService serves it: the key names the job and workspace a field may leave out."""
    if record is not None:
        record.setdefault("job_id", job_id)
        record.setdefault("workspace_id", workspace_id)
    return record


class Verifier:
    def __init__(self, redis: Redis, keys: KeyLayout = KEYS, metrics: Any = None):
        self._redis = redis
        #: Where the legacy records are read (their own Redis in a split topology: ``split_verifier``).
        self._legacy = redis
        self._keys = keys
        self._metrics = metrics

    def _new_copy(self, reply: object, job_id: str, workspace_id: str) -> Record | None:
        """The new-layout copy as JobService serves it; another workspace's record under the key is none."""
        new = _as_record(reply)
        if new is not None and new.get("workspace_id", workspace_id) != workspace_id:
            note_foreign(self._metrics, job_id)
            return None
        return _own(new, job_id, workspace_id)

    async def _run_id(self) -> str:
        return await redis_run_id(self._redis)

    async def _key_count(self) -> int:
        return await self._redis.dbsize()

    async def last(self) -> VerificationRun | None:
        """The last finished verification, else an unfinished one, else None."""
        for key in (self._keys.verification_last, self._keys.verification_current):
            raw = await self._redis.get(key)
            if raw:
                return VerificationRun.from_json(raw)
        return None

    async def run(
        self, workspace_id: str, rate_limit: float, batch_size: int, resume: bool
    ) -> AsyncIterator[tuple[str, VerificationRun]]:
        """Yields ("started" | "progress" | "completed" | "failed", the run's state)."""
        run = await self._prepare(workspace_id, rate_limit, batch_size, resume)
        lease = await take_operation_lease(self._redis, run.verification_id)
        try:
            run.state, run.reason = VerificationState.RUNNING, ""
            current = await self._run_id()
            if run.run_id and current != run.run_id:
                await self._begin_again(run)  # resumed after a Redis restart: its cursor means nothing now
            run.run_id = current
            await self._save(run)
            yield "started", run
            bucket = TokenBucket(run.rate_limit)
            while run.phase != "done":
                if lease.lost.is_set():
                    run.state, run.reason = (
                        VerificationState.FAILED,
                        "lost the operation lease; resume to continue",
                    )
                    await self._save(run)
                    yield "failed", run
                    return
                try:
                    await self._batch(run, bucket)
                except TRANSIENT_STORE_ERRORS:
                    # A restart closes every connection: the step's own failure says nothing until the
                    # run id tells whether Redis restarted (then the run fails as RESTARTED, below).
                    if await self._run_id_after_failure() == run.run_id:
                        raise
                if await self._run_id() != run.run_id:
                    # Keys the old cursor had not reached are unknown: never report such a run clean.
                    await self._begin_again(run)
                    run.state, run.reason = VerificationState.FAILED, RESTARTED
                    await self._save(run)
                    yield "failed", run
                    return
                await self._save(run)
                yield "progress", run
            await self._finish(run)
            log.info(f"verification {run.verification_id} completed", extra={"reason": f"clean={run.clean}"})
            yield "completed", run
        except (asyncio.CancelledError, GeneratorExit):
            run.state, run.reason = VerificationState.INTERRUPTED, "the caller went away; resume to continue"
            with contextlib.suppress(Exception):
                await self._save(run)
            raise
        finally:
            await lease.release()

    async def _begin_again(self, run: VerificationRun) -> None:
        """Forget the pass so far: the next one starts from the first key, on the current Redis run."""
        run.phase, run.cursor = "legacy", 0
        run.scanned_legacy = run.scanned_new = run.invalid_legacy = 0
        run.workspaces = {}
        run.started_at = await redis_now(self._redis)

    async def _prepare(
        self, workspace_id: str, rate_limit: float, batch_size: int, resume: bool
    ) -> VerificationRun:
        check_rate_limit(rate_limit)
        check_batch_size(batch_size)
        if not resume:
            return VerificationRun(
                new_operation_id("verify"),
                workspace_id,
                rate_limit,
                batch_size or DEFAULT_BATCH,
                started_at=await redis_now(self._redis),
                total_estimate=await self._key_count(),
                run_id=await self._run_id(),
            )
        raw = await self._redis.get(self._keys.verification_current)
        if not raw:
            raise FailedPrecondition(
                "there is no unfinished verification to resume", reason="NOTHING_TO_RESUME"
            )
        run = VerificationRun.from_json(raw)
        if workspace_id and workspace_id != run.workspace_id:
            raise InvalidArgument("workspace_id", f"must be empty or {run.workspace_id!r} to resume")
        run.rate_limit = rate_limit or run.rate_limit
        run.batch_size = batch_size or run.batch_size
        return run

    async def _save(self, run: VerificationRun) -> None:
        await self._redis.set(self._keys.verification_current, run.to_json())

    async def _finish(self, run: VerificationRun) -> None:
        run.state, run.ended_at = VerificationState.COMPLETED, await redis_now(self._redis)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._keys.verification_last, run.to_json())
        pipe.delete(self._keys.verification_current)
        await pipe.execute()
        await record_verification(
            self._redis,
            run.workspace_id,
            run.started_at,
            run.ended_at,
            run.verification_id,
            {ws: (c.clean, c.legacy_covered) for ws, c in run.workspaces.items()},
        )

    async def _run_id_after_failure(self) -> str:
        """The store's run id, asked again on fresh connections for a few seconds ("" if it stays away)."""
        for _ in range(20):
            try:
                return await self._run_id()
            except TRANSIENT_STORE_ERRORS:
                await asyncio.sleep(0.25)
        return ""

    async def _batch(self, run: VerificationRun, bucket: TokenBucket) -> None:
        if run.phase == "legacy":
            pattern = LEGACY_JOB_PATTERN
        else:
            pattern = self._keys.new_job(run.workspace_id, "*") if run.workspace_id else NEW_JOB_PATTERN
        cursor, keys = await self._redis.scan(run.cursor, match=pattern, count=run.batch_size)
        await bucket.take(len(keys))
        if run.phase == "legacy":
            await self._legacy_keys(run, keys)
        else:
            await self._new_keys(run, keys)
        run.cursor = int(cursor)
        if run.cursor == 0:
            run.phase = "new" if run.phase == "legacy" else "done"

    async def _legacy_keys(self, run: VerificationRun, keys: list[bytes]) -> None:
        pipe = self._legacy.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        replies = await pipe.execute(raise_on_error=False)
        found: list[tuple[str, str, Record]] = []
        for key, reply in zip(keys, replies, strict=True):
            run.scanned_legacy += 1
            job_id = KeyLayout.job_id_of_legacy(key.decode("utf-8", "replace"))
            if isinstance(reply, Exception):
                run.invalid_legacy += 1  # not a hash
                continue
            record = _as_record(reply)
            if record is None:
                continue  # deleted since the SCAN
            workspace_id = record.get("workspace_id", "")
            if not is_workspace_id(workspace_id) or not is_job_id(job_id):
                run.invalid_legacy += 1
                continue
            if run.workspace_id and workspace_id != run.workspace_id:
                continue
            found.append((job_id, workspace_id, _own(record, job_id, workspace_id) or {}))
        if not found:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id, workspace_id, _ in found:
            pipe.hgetall(self._keys.new_job(workspace_id, job_id))
        news = await pipe.execute(raise_on_error=False)
        settled: list[tuple[str, str, Record | None, Record]] = []
        suspects: list[tuple[str, str]] = []
        for (job_id, workspace_id, legacy), reply in zip(found, news, strict=True):
            new = self._new_copy(reply, job_id, workspace_id)
            if new is not None and not codec.differing_fields(new, legacy):
                settled.append((job_id, workspace_id, new, legacy))
            else:
                suspects.append((job_id, workspace_id))
        settled += await self._reread(suspects)
        listed: list[tuple[str, str, Record]] = []
        for job_id, workspace_id, new, legacy in settled:
            counts = run.counts(workspace_id)
            if new is None:
                counts.missing_in_new += 1
                counts.sample(job_id)
                continue
            differing = codec.differing_fields(new, legacy)
            if differing and codec.revision(new) > codec.revision(legacy):
                counts.legacy_behind += 1  # updated since legacy writes stopped: the new copy is the truth
            elif differing:
                counts.differing += 1
                counts.sample(job_id)
                for name in differing:
                    counts.fields[name] = counts.fields.get(name, 0) + 1
            else:
                counts.matching += 1
            listed.append((job_id, workspace_id, new))
        await self._check_listed(run, listed)

    async def _reread(self, suspects: list[tuple[str, str]]) -> list[tuple[str, str, Record | None, Record]]:
        """Both copies of each suspect in one atomic read; records whose legacy copy went away are dropped."""
        if not suspects:
            return []
        pipe = self._redis.pipeline(transaction=True)
        for job_id, workspace_id in suspects:
            pipe.hgetall(self._keys.legacy_job(job_id))
            pipe.hgetall(self._keys.new_job(workspace_id, job_id))
        replies = iter(await pipe.execute(raise_on_error=False))
        out: list[tuple[str, str, Record | None, Record]] = []
        for job_id, workspace_id in suspects:
            legacy = _own(_as_record(next(replies)), job_id, workspace_id)
            new = self._new_copy(next(replies), job_id, workspace_id)
            if legacy is not None and legacy.get("workspace_id") == workspace_id:
                out.append((job_id, workspace_id, new, legacy))
        return out

    async def _check_listed(self, run: VerificationRun, records: list[tuple[str, str, Record]]) -> None:
        if not records:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id, workspace_id, new in records:
            pipe.zscore(
                self._keys.job_index(workspace_id), codec.index_member(job_id, new.get("enqueued_at"))
            )
        for (job_id, workspace_id, _), score in zip(records, await pipe.execute(), strict=True):
            if score is None:
                counts = run.counts(workspace_id)
                counts.unlisted += 1
                counts.sample(job_id)

    async def _new_keys(self, run: VerificationRun, keys: list[bytes]) -> None:
        entries: list[tuple[str, str]] = []
        for key in keys:
            run.scanned_new += 1
            workspace_id, job_id = self._keys.parse_new_job(key.decode("utf-8", "replace"))
            mine = not run.workspace_id or workspace_id == run.workspace_id
            if mine and is_workspace_id(workspace_id) and is_job_id(job_id):
                entries.append((workspace_id, job_id))
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for workspace_id, job_id in entries:
            pipe.hget(self._keys.legacy_job(job_id), "workspace_id")
            pipe.exists(self._keys.new_job(workspace_id, job_id))
            pipe.hmget(self._keys.new_job(workspace_id, job_id), ["enqueued_at", "workspace_id"])
        replies = iter(await pipe.execute(raise_on_error=False))
        alone: list[tuple[str, str, Record]] = []
        for workspace_id, job_id in entries:
            legacy_workspace, exists, fields = next(replies), next(replies), next(replies)
            if not exists or isinstance(fields, Exception):
                continue  # deleted since the SCAN, or not a hash: not a job record of ours
            enqueued_at, owner = fields
            if owner is not None and owner.decode("utf-8", "replace") != workspace_id:
                note_foreign(self._metrics, job_id)  # another workspace's record: not this one's job
                continue
            if (
                isinstance(legacy_workspace, bytes)
                and legacy_workspace.decode("utf-8", "replace") == workspace_id
            ):
                continue  # compared in the legacy pass
            counts = run.counts(workspace_id)
            counts.only_in_new += 1
            counts.sample(job_id)
            when = enqueued_at.decode("utf-8", "replace") if enqueued_at else ""
            alone.append((job_id, workspace_id, {"enqueued_at": when}))
        await self._check_listed(run, alone)
