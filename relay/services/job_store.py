"""The job domain: enqueue, read, list, claim and update jobs in whichever layouts the stage says."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from redis.asyncio import Redis, RedisCluster

from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import FailedPrecondition, NotFound
from relay.core.foreign import note_foreign
from relay.core.keys import KEYS, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.jobs import (
    ENQUEUE,
    READ_RECORDS,
    READ_SERVED,
    UPDATE_STATUS,
    EnqueuedJob,
    enqueue_call,
)
from relay.core.page_token import PageTokenCodec
from relay.core.replication import ReplicaWait
from relay.core.stage_store import StageView
from relay.core.stages import Stage, StageSetting
from relay.core.stores import Stores, repeatable
from relay.core.telemetry import Metrics
from relay.services.bounds import CLAIM_TIMEOUT_SECONDS
from relay.services.job_claims import Claims
from relay.services.job_listing import JobListing
from relay.services.new_action import NewAction
from relay.services.split_writes import SplitWrites
from relay.v1 import job_service_pb2 as pb

__all__ = ["JobStore", "NewAction"]

log = logging.getLogger("relay.jobs")


class JobStore(JobListing):
    def __init__(
        self,
        stores: Stores | Redis,
        stages: StageView,
        tokens: PageTokenCodec,
        metrics: Metrics,
        idempotency_ttl_seconds: int = 24 * 3600,
        keys: KeyLayout = KEYS,
        claim_timeout_seconds: float = CLAIM_TIMEOUT_SECONDS,
        replica_wait: ReplicaWait | None = None,
    ):
        self._replica_wait = replica_wait or ReplicaWait(0, 0)
        self._stores = stores if isinstance(stores, Stores) else Stores.single(stores)
        #: The new layout's store (and in the shared topology the legacy one's too).
        self._redis: Redis | RedisCluster = self._stores.new
        self._legacy: Redis = self._stores.legacy
        self._lua = LuaScripts(self._redis, self._stores.pipelined)
        self._legacy_lua = self._lua if self._stores.shared else LuaScripts(self._legacy)
        self._split = (
            None if self._stores.shared else SplitWrites(self._stores, idempotency_ttl_seconds, keys)
        )
        self._claims = Claims(self._stores, stages, self._split, keys, claim_timeout_seconds, metrics)
        self._stages = stages
        self._tokens = tokens
        self._metrics = metrics
        self._ttl = idempotency_ttl_seconds
        self._keys = keys

    @property
    def split(self) -> SplitWrites | None:
        """The two-store writer of a split topology (None in the shared one)."""
        return self._split

    # --- writes ------------------------------------------------------------------------------
    async def execute(
        self, workspace_id: str, actions: Sequence[NewAction], actor_id: str
    ) -> tuple[list[str], int]:
        """Enqueue one job per action; a replayed client_request_id yields the original job id."""
        stage = self._stages.for_workspace(workspace_id).stage
        layouts = (
            "both" if stage.writes_legacy and stage.writes_new else ("new" if stage.writes_new else "legacy")
        )
        if self._split is not None:
            done = await self._split.execute(workspace_id, stage, actions, actor_id)
            await self._confirm(workspace_id, stage)
            self._metrics.dual_write.add(len(actions), {"layouts": layouts, "result": "ok"})
            return done.job_ids, done.queue_depth
        enqueued_at = codec.now_iso()
        jobs = []
        for action in actions:
            record = action.new_record(workspace_id, actor_id, enqueued_at)
            job_id = record["job_id"]
            member = codec.index_member(job_id, enqueued_at)
            jobs.append(EnqueuedJob(job_id, action.client_request_id, member, record))
        keys, args = enqueue_call(self._keys, workspace_id, stage, self._ttl, jobs)
        reply = await self._lua.call(ENQUEUE, keys=keys, args=args)
        await self._confirm(workspace_id, stage)
        self._metrics.dual_write.add(len(actions), {"layouts": layouts, "result": "ok"})
        return [v.decode() for v in reply[1:]], int(reply[0])

    async def _confirm(self, workspace_id: str, stage: Stage) -> None:
        """With RELAY_REDIS_WAIT_REPLICAS, wait until replicas of each store written have the writes."""
        if not self._replica_wait.enabled:
            return
        if stage.writes_new or self._stores.shared:
            await self._replica_wait.confirm(self._redis, workspace_id)
        if stage.writes_legacy and not self._stores.shared:
            await self._replica_wait.confirm(self._legacy, workspace_id)

    async def update_status(
        self,
        workspace_id: str,
        job_id: str,
        status: str,
        result_json: str | None,
        error: str | None,
        result_pb: str = "",
    ) -> Record:
        stage = self._stages.for_workspace(workspace_id).stage
        if self._split is not None:
            now = codec.now_iso()

            def finish(truth: Record) -> dict[str, str]:
                current = truth.get("status")
                if current in ("completed", "failed"):
                    raise FailedPrecondition(
                        f"the job is already {current}; a finished job cannot change status",
                        reason="JOB_FINISHED",
                    )
                changes = {"status": status}
                if status != "running":
                    changes["finished_at"] = now
                if not truth.get("started_at"):
                    changes["started_at"] = now
                if result_json is not None:
                    changes["result"] = result_json
                    changes["result_pb"] = result_pb
                if error is not None:
                    changes["error"] = error
                return changes

            await self._split.update(workspace_id, job_id, stage, finish)
            await self._confirm(workspace_id, stage)
            return await self.get(workspace_id, job_id)
        reply = await self._lua.call(
            UPDATE_STATUS,
            keys=[self._keys.legacy_job(job_id), self._keys.new_job(workspace_id, job_id)],
            args=[
                workspace_id,
                status,
                codec.now_iso(),
                "1" if result_json is not None else "0",
                result_json or "",
                "1" if error is not None else "0",
                error or "",
                *_layout_flags(stage),
                result_pb,
            ],
        )
        outcome = reply[0].decode()
        if reply[-1] == b"1":
            note_foreign(self._metrics, job_id)  # left untouched by the update
        if outcome == "NOT_FOUND":
            raise NotFound("job not found", reason="JOB_NOT_FOUND")
        if outcome == "TERMINAL":
            raise FailedPrecondition(
                f"the job is already {reply[1].decode()}; a finished job cannot change status",
                reason="JOB_FINISHED",
            )
        await self._confirm(workspace_id, stage)
        return await self.get(workspace_id, job_id)

    async def claim(self) -> Record | None:
        """The head of the next workspace's queue (round robin, FIFO within each), now running; None when
        there is none. Each job goes to exactly one claimer (``relay.services.job_claims``)."""
        record = await self._claims.claim()
        if record is not None:
            workspace_id = record.get("workspace_id", "")
            await self._confirm(workspace_id, self._stages.for_workspace(workspace_id).stage)
        return record

    # --- reads -------------------------------------------------------------------------------
    def to_proto(self, record: Record, into: Any = None) -> pb.Job:
        """The record as a Job (made in ``into``, a repeated Job field, when given); what protobuf cannot
        carry is served as text or left unset, and counted."""
        return codec.to_proto(record, self._count_undecodable, into)

    def _count_undecodable(self, field: str) -> None:
        self._metrics.undecodable_fields.add(1, {"field": field})
        log.warning(
            "a stored field protobuf cannot carry: served as text or left out", extra={"fields": field}
        )

    async def get(self, workspace_id: str, job_id: str) -> Record:
        setting = self._stages.for_workspace(workspace_id)
        # Read-only: repeated when its connection dropped (relay.core.stores, "what is repeated").
        [record] = await self._read_many(workspace_id, [job_id], setting)
        if record is None:
            raise NotFound("job not found", reason="JOB_NOT_FOUND")
        return record

    async def _read_many(
        self, workspace_id: str, job_ids: Sequence[str], setting: StageSetting
    ) -> list[Record | None]:
        """Each job as the stage reads it, from one atomic read of every copy involved."""
        stage = setting.stage
        paths: Counter[str] = Counter()
        if self._stores.shared and stage.reads_new and stage.reads_legacy and not setting.shadow:
            out = await self._read_served(workspace_id, job_ids, setting, paths)
        else:
            out = await self._read_copies(workspace_id, job_ids, setting, paths)
        for path, count in paths.items():  # one metric update per path, not per record
            self._metrics.read_path.add(count, {"path": path})
        return out

    async def _read_served(
        self, workspace_id: str, job_ids: Sequence[str], setting: StageSetting, paths: Counter[str]
    ) -> list[Record | None]:
        """Both layouts read, only the copy served sent back (READ_SERVED); its choice is ``_served``'s."""
        keys = [
            key for j in job_ids for key in (self._keys.new_job(workspace_id, j), self._keys.legacy_job(j))
        ]
        args = [workspace_id, "1" if setting.stage.prefers_new else "0"]
        replies = await repeatable(lambda: self._lua.call(READ_SERVED, keys=keys, args=args))
        out: list[Record | None] = []
        for job_id, reply in zip(job_ids, replies, strict=True):
            kind = reply[0]
            if kind == b"b":  # a revision only Python reads: both copies, compared here
                record = self._served(
                    job_id, workspace_id, _flat_record(reply[2]), _flat_record(reply[3]), setting, paths
                )
            else:
                if reply[1] == b"1":
                    note_foreign(self._metrics, job_id)
                record = _flat_record(reply[2])
                if record is not None:
                    record.setdefault("job_id", job_id)
                    record.setdefault("workspace_id", workspace_id)
                paths[_SERVED_PATHS[kind]] += 1
            out.append(record)
        return out

    async def _read_copies(
        self, workspace_id: str, job_ids: Sequence[str], setting: StageSetting, paths: Counter[str]
    ) -> list[Record | None]:
        """Every copy the stage reads sent back, and the one served chosen here."""
        stage = setting.stage
        read_legacy = stage.reads_legacy or setting.shadow
        new_keys = [self._keys.new_job(workspace_id, j) for j in job_ids] if stage.reads_new else []
        legacy_keys = [self._keys.legacy_job(j) for j in job_ids] if read_legacy else []
        if self._stores.shared:
            # One atomic read of every copy involved.
            both = [key for pair in zip_longest(new_keys, legacy_keys) for key in pair if key is not None]
            replies = await repeatable(lambda: self._lua.call(READ_RECORDS, keys=both)) if both else []
            step = 2 if new_keys and legacy_keys else 1
            new_replies = replies[0::step] if new_keys else []
            legacy_replies = replies[step - 1 :: step] if legacy_keys else []
        else:
            new_replies = (
                await repeatable(lambda: self._lua.call(READ_RECORDS, keys=new_keys)) if new_keys else []
            )
            legacy_replies = (
                await repeatable(lambda: self._legacy_lua.call(READ_RECORDS, keys=legacy_keys))
                if legacy_keys
                else []
            )
        news, legacies = iter(new_replies), iter(legacy_replies)
        return [
            self._served(
                job_id,
                workspace_id,
                _flat_record(next(news)) if stage.reads_new else None,
                _flat_record(next(legacies)) if read_legacy else None,
                setting,
                paths,
            )
            for job_id in job_ids
        ]

    def _served(
        self,
        job_id: str,
        workspace_id: str,
        new: Record | None,
        legacy: Record | None,
        setting: StageSetting,
        paths: Counter[str],
    ) -> Record | None:
        """The copy of one job the stage serves, of those read; its read path counted in ``paths``."""
        if legacy is not None and legacy.get("workspace_id") != workspace_id:
            legacy = None  # another workspace's job looks exactly like a missing one
        if new is not None and new.get("workspace_id", workspace_id) != workspace_id:
            # Another workspace's record under this workspace's key (a bad restore, a buggy tool):
            # served to nobody here, counted, logged without its data.
            note_foreign(self._metrics, job_id)
            new = None
        for record in (new, legacy):
            if record is not None:
                record.setdefault("job_id", job_id)
                record.setdefault("workspace_id", workspace_id)
        if setting.shadow and new is not None and legacy is not None:
            self._shadow_compare(job_id, new, legacy)
        record, path = self._choose(new, legacy, setting)
        paths[path] += 1
        return record

    def _choose(
        self, new: Record | None, legacy: Record | None, setting: StageSetting
    ) -> tuple[Record | None, str]:
        """The copy a read returns, and the read path it counts as (new, old or miss)."""
        stage = setting.stage
        if not stage.reads_legacy:
            legacy = None
        if new is not None and legacy is not None:
            # Both copies exist: the higher revision is the latest acknowledged write; a tie goes to the
            # layout the stage prefers.
            rn, rl = codec.revision(new), codec.revision(legacy)
            pick_new = rn > rl or (rn == rl and stage.prefers_new)
            return (new, "new") if pick_new else (legacy, "old")
        if new is not None:
            return new, "new"
        if legacy is not None:
            return legacy, "old"
        return None, "miss"

    def _shadow_compare(self, job_id: str, new: Record, legacy: Record) -> None:
        fields = codec.differing_fields(new, legacy)
        self._metrics.shadow_reads.add(1, {"result": "mismatch" if fields else "match"})
        if fields:
            log.warning("shadow read mismatch", extra={"job_id": job_id, "fields": fields})


def _layout_flags(stage: Stage) -> list[str]:
    """ARGV of UPDATE_STATUS and CLAIM: the layouts the stage uses, and which one its reads prefer."""
    return ["1" if flag else "0" for flag in (stage.reads_legacy, stage.reads_new, stage.prefers_new)]


#: READ_SERVED's kinds of entry, as read paths.
_SERVED_PATHS = {b"n": "new", b"o": "old", b"m": "miss"}


def _flat_record(reply: list[bytes]) -> Record | None:
    """A READ_RECORDS entry (flat field/value list) as a record; an empty one is no record."""
    if not reply:
        return None
    return codec.decode_flat(reply)
