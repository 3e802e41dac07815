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

It runs on the operation loop (``common.scan_operation``): checkpointed in Redis after every batch
(``resume`` continues it), rate-limited by a token bucket, guarded by the operation lease; its result is
stored (``KEYS.verification_last``) and recorded as a migration fact for the stage rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from relay.controller.common import scan_operation
from relay.controller.common.scan_operation import ScanOperation, ScanRun, check_pace
from relay.controller.stages.facts import record_verification, redis_now
from relay.core import codec
from relay.core.codec import Record
from relay.core.foreign import note_foreign
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, NEW_JOB_PATTERN, KeyLayout

SAMPLE_IDS = 20

RESTARTED = (
    "Redis restarted (run_id changed) during the verification: a SCAN cursor does not survive a restart, "
    "so its coverage is unknown; resume to verify again from the start"
)


class VerificationState(StrEnum):
    """The lifecycle of a verification, as stored in Redis (the value)."""

    RUNNING = scan_operation.RUNNING
    COMPLETED = scan_operation.COMPLETED
    FAILED = scan_operation.FAILED  # also when it lost the operation lease: resume continues
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
class VerificationRun(ScanRun):
    """The state of one verification; its phases are ``legacy``, ``new`` and ``done``."""

    id_field = "verification_id"
    examined_fields = ("scanned_legacy", "scanned_new")

    verification_id: str
    #: The result, per workspace; then the keys of each pass and the legacy keys that are no job record.
    workspaces: dict[str, WorkspaceCounts] = field(default_factory=dict)
    scanned_legacy: int = 0
    scanned_new: int = 0
    invalid_legacy: int = 0
    #: Writes still owed to one of two stores when it finished (split topologies; outbox entries).
    outbox_pending: int = 0

    def counts(self, workspace_id: str) -> WorkspaceCounts:
        return self.workspaces.setdefault(workspace_id, WorkspaceCounts())

    @classmethod
    def fields_of(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["workspaces"] = {ws: WorkspaceCounts(**c) for ws, c in data.get("workspaces", {}).items()}
        return data

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


class Verifier(ScanOperation[VerificationRun]):
    kind = "verify"
    noun = "verification"
    run_type = VerificationRun
    phases = ("legacy", "new")
    #: A verification that lost its lease is reported failed (resume continues it): it has no stopped event.
    stopped = (VerificationState.FAILED, "failed")
    went_away = VerificationState.INTERRUPTED
    restarted = RESTARTED

    def __init__(self, redis: Redis, keys: KeyLayout = KEYS, metrics: Any = None):
        super().__init__(redis, keys, current_key=keys.verification_current, last_key=keys.verification_last)
        #: Where the legacy records are read (their own Redis in a split topology: ``split_verifier``).
        self._legacy = redis
        self._metrics = metrics

    def _new_copy(self, reply: object, job_id: str, workspace_id: str) -> Record | None:
        """The new-layout copy as JobService serves it; another workspace's record under the key is none."""
        new = _as_record(reply)
        if new is not None and new.get("workspace_id", workspace_id) != workspace_id:
            note_foreign(self._metrics, job_id)
            return None
        return _own(new, job_id, workspace_id)

    async def last(self) -> VerificationRun | None:
        """The last finished verification, else an unfinished one, else None."""
        return await self._load(self.last_key) or await self._load(self.current_key)

    async def run(
        self, workspace_id: str, rate_limit: float, batch_size: int, resume: bool
    ) -> AsyncIterator[tuple[str, VerificationRun]]:
        """Yields ("started" | "progress" | "completed" | "failed", the run's state)."""
        check_pace(rate_limit, batch_size)
        run = await self._prepare(
            workspace_id=workspace_id, rate_limit=rate_limit, batch_size=batch_size, resume=resume
        )
        async for event in self.loop(run):
            yield event

    async def begin_again(self, run: VerificationRun) -> None:
        """Forget the pass so far: the next one starts from the first key, on the current Redis run."""
        run.phase, run.cursor = "legacy", 0
        run.scanned_legacy = run.scanned_new = run.invalid_legacy = 0
        run.workspaces = {}
        run.started_at = await redis_now(self._redis)

    async def finished(self, run: VerificationRun) -> None:
        await record_verification(
            self._redis,
            run.workspace_id,
            run.started_at,
            run.ended_at,
            run.verification_id,
            {ws: (c.clean, c.legacy_covered) for ws, c in run.workspaces.items()},
        )

    def summary(self, run: VerificationRun) -> str:
        return f"clean={run.clean}"

    async def step(self, run: VerificationRun) -> int:
        if run.phase == "legacy":
            cursor, keys = await self._legacy.scan(run.cursor, match=LEGACY_JOB_PATTERN, count=run.batch_size)
            await self._legacy_keys(run, keys)
            run.cursor = int(cursor)
        else:
            run.cursor, keys = await self._scan_new(run)
            await self._new_keys(run, keys)
        if run.cursor == 0:
            run.phase = "new" if run.phase == "legacy" else "done"
        return len(keys)

    async def _scan_new(self, run: VerificationRun) -> tuple[int, list[bytes]]:
        pattern = self._keys.new_job(run.workspace_id, "*") if run.workspace_id else NEW_JOB_PATTERN
        cursor, keys = await self._redis.scan(run.cursor, match=pattern, count=run.batch_size)
        return int(cursor), keys

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
        """Both copies of each suspect read again; records whose legacy copy went away are dropped."""
        if not suspects:
            return []
        out: list[tuple[str, str, Record | None, Record]] = []
        for (job_id, workspace_id), (raw_legacy, new) in zip(
            suspects, await self._both_copies(suspects), strict=True
        ):
            legacy = _own(_as_record(raw_legacy), job_id, workspace_id)
            if legacy is not None and legacy.get("workspace_id") == workspace_id:
                out.append((job_id, workspace_id, new, legacy))
        return out

    async def _both_copies(self, suspects: list[tuple[str, str]]) -> list[tuple[object, Record | None]]:
        """Each suspect's legacy reply and new copy, in one MULTI: no write falls between the two reads."""
        pipe = self._redis.pipeline(transaction=True)
        for job_id, workspace_id in suspects:
            pipe.hgetall(self._keys.legacy_job(job_id))
            pipe.hgetall(self._keys.new_job(workspace_id, job_id))
        replies = await pipe.execute(raise_on_error=False)
        return [
            (replies[2 * n], self._new_copy(replies[2 * n + 1], job_id, workspace_id))
            for n, (job_id, workspace_id) in enumerate(suspects)
        ]

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
        alone: list[tuple[str, str, Record]] = []
        facts = await self._new_key_facts(entries)
        for (workspace_id, job_id), (legacy_workspace, exists, fields) in zip(entries, facts, strict=True):
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

    async def _new_key_facts(self, entries: list[tuple[str, str]]) -> list[tuple[Any, Any, Any]]:
        """Per (workspace, job) of the new pass: the legacy copy's workspace_id, whether the new key
        exists, and its [enqueued_at, workspace_id] (or the error of a key that is not a hash)."""
        pipe = self._redis.pipeline(transaction=False)
        for workspace_id, job_id in entries:
            pipe.hget(self._keys.legacy_job(job_id), "workspace_id")
            pipe.exists(self._keys.new_job(workspace_id, job_id))
            pipe.hmget(self._keys.new_job(workspace_id, job_id), ["enqueued_at", "workspace_id"])
        replies = await pipe.execute(raise_on_error=False)
        return [(replies[n], replies[n + 1], replies[n + 2]) for n in range(0, len(replies), 3)]
