"""The job domain: enqueue, read, list, claim and update jobs in whichever layouts the stage says."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import zip_longest
from typing import Any

from redis.asyncio import Redis, RedisCluster

from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import FailedPrecondition, NotFound
from relay.core.foreign import note_foreign
from relay.core.ids import new_job_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, KeyLayout
from relay.core.limits import PAGE_BYTE_BUDGET
from relay.core.lua import LuaScripts
from relay.core.lua.jobs import (
    ENQUEUE,
    LEGACY_KEYS_OF_WORKSPACE,
    NOW,
    READ_RECORDS,
    UPDATE_STATUS,
    EnqueuedJob,
    enqueue_call,
)
from relay.core.page_token import PageTokenCodec
from relay.core.replication import ReplicaWait
from relay.core.stage_store import StageView
from relay.core.stages import Stage, StageSetting
from relay.core.stores import Stores, raise_store_failures, repeatable
from relay.core.telemetry import Metrics
from relay.services.job_claims import CLAIM_TIMEOUT_SECONDS, Claims
from relay.services.listing_cursor import INDEX, LEGACY, ListingCursor
from relay.services.split_writes import SplitWrites
from relay.v1 import job_service_pb2 as pb

log = logging.getLogger("relay.jobs")

#: Legacy-phase listing: keys per SCAN call, and SCAN calls per page at most.
LEGACY_SCAN_COUNT = 500
LEGACY_SCANS_PER_PAGE = 8
#: SCAN calls per page at most, counting the shorter re-scans that let a page end on a cursor. Above
#: log2(LEGACY_SCAN_COUNT) + 1, so that every page makes progress.
LEGACY_SCAN_CALLS_PER_PAGE = LEGACY_SCANS_PER_PAGE + 16
#: Index entries examined per page at most when a status filter skips most of them.
INDEX_ENTRIES_PER_PAGE = 2000


@dataclass(frozen=True, slots=True)
class NewAction:
    provider: str
    action: str
    params_json: str
    client_request_id: str
    #: The params' encoded form (``codec.encoded``), kept beside the text so reads need no JSON parse.
    params_pb: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Record]
    next_page_token: str
    #: The records as Jobs, in the same order (converted once, to weigh the page).
    jobs: list[pb.Job] = field(default_factory=list)


class _PageBytes:
    """The jobs of a page as they are taken, and whether the next one still fits the byte budget: a page
    holds at least one job, and never passes ``budget`` bytes of encoded jobs after its first."""

    def __init__(self, store: JobStore, budget: int):
        self._store = store
        self.left = budget
        self.jobs: list[pb.Job] = []
        # Jobs weighed but not taken yet, by record (kept alive with it, so that no id is reused).
        self._pending: dict[int, tuple[Record, pb.Job]] = {}

    def _job(self, record: Record) -> pb.Job:
        known = self._pending.get(id(record))
        if known is not None and known[0] is record:
            return known[1]
        job = self._store.to_proto(record)
        self._pending[id(record)] = (record, job)
        return job

    def fits(self, record: Record) -> bool:
        # Each job costs its bytes, its tag and its length prefix in ListJobsResponse.
        return not self.jobs or self._job(record).ByteSize() + 6 <= self.left

    def take(self, record: Record) -> None:
        job = self._job(record)
        self._pending.pop(id(record), None)
        self.left -= job.ByteSize() + 6
        self.jobs.append(job)

    def fitting(self, records: Sequence[Record]) -> int:
        """How many of ``records``, in order, the page still has room for (by bytes only)."""
        left, empty = self.left, not self.jobs
        for n, record in enumerate(records):
            size = self._job(record).ByteSize() + 6
            if not (empty and n == 0) and size > left:
                return n
            left -= size
        return len(records)

    @property
    def full(self) -> bool:
        return bool(self.jobs) and self.left <= 0


class JobStore:
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
        self._lua = LuaScripts(self._redis)
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
            job_id = new_job_id()
            record = codec.new_record(
                job_id=job_id,
                workspace_id=workspace_id,
                provider=action.provider,
                action=action.action,
                params_json=action.params_json,
                actor_id=actor_id,
                enqueued_at=enqueued_at,
                params_pb=action.params_pb,
            )
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
    def to_proto(self, record: Record) -> pb.Job:
        """The record as a Job; what protobuf cannot carry is served as text or left unset, and counted."""
        return codec.to_proto(record, self._count_undecodable)

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
        out: list[Record | None] = []
        paths: Counter[str] = Counter()
        for job_id in job_ids:
            new = _flat_record(next(news)) if stage.reads_new else None
            legacy = _flat_record(next(legacies)) if read_legacy else None
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
            out.append(record)
        for path, count in paths.items():  # one metric update per path, not per record
            self._metrics.read_path.add(count, {"path": path})
        return out

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

    # --- listing -----------------------------------------------------------------------------
    async def list(self, workspace_id: str, page_size: int, page_token: str, status: str) -> Page:
        """Newest first from the workspace index; then, while legacy records may be unindexed, the legacy
        keys in storage order, each page a bounded SCAN.

        The first page fixes, in the token, when the listing began (``t``, Redis time) and whether it has
        a legacy phase (``l``). A job that a backfill indexes after that moment is listed by the legacy
        phase only, never by the index phase, so a backfill running beside the listing neither hides
        nor repeats a job.
        """
        setting = self._stages.for_workspace(workspace_id)
        filters = f"status={status}"
        # Every Redis call of a page is a read, repeated alone when its connection dropped (the page keeps
        # its progress): relay.core.stores, "what is repeated".
        return await self._list_page(workspace_id, setting, filters, page_size, page_token, status)

    async def _list_page(
        self,
        workspace_id: str,
        setting: StageSetting,
        filters: str,
        page_size: int,
        page_token: str,
        status: str,
    ) -> Page:
        cursor: ListingCursor | None
        if page_token:
            cursor = ListingCursor.from_state(self._tokens.decode(page_token, workspace_id, filters))
        else:
            cursor = await self._first_cursor(workspace_id, setting)
        out: list[Record] = []
        weight = _PageBytes(self, PAGE_BYTE_BUDGET)
        if cursor.phase == INDEX:
            cursor = await self._list_index(workspace_id, setting, status, page_size, cursor, out, weight)
        if cursor and cursor.phase == LEGACY and len(out) < page_size and not weight.full:
            cursor = await self._list_legacy(workspace_id, setting, status, page_size, cursor, out, weight)
        token = self._tokens.encode(workspace_id, filters, cursor.to_state()) if cursor else ""
        return Page(out, token, weight.jobs)

    async def _first_cursor(self, workspace_id: str, setting: StageSetting) -> ListingCursor:
        if not setting.stage.reads_legacy:
            return ListingCursor.first(0, legacy_phase=False)
        # The listing's start on the clock of the node that scores the workspace's late index.
        began = int(
            await repeatable(lambda: self._lua.call(NOW, keys=[self._keys.job_index_late(workspace_id)]))
        )
        indexed = await repeatable(lambda: self._redis.exists(self._keys.legacy_indexed))
        return ListingCursor.first(began, legacy_phase=not indexed)

    async def _list_index(
        self,
        workspace_id: str,
        setting: StageSetting,
        status: str,
        page_size: int,
        cursor: ListingCursor,
        out: list[Record],
        weight: _PageBytes,
    ) -> ListingCursor | None:
        index = self._keys.job_index(workspace_id)
        after, began, legacy_phase = cursor.after_member, cursor.began, cursor.legacy_phase
        examined = 0
        while True:
            need = page_size - len(out)
            # One member beyond the page tells whether another page exists, so a listing that ends on a
            # page boundary ends there instead of with an empty page.
            fetch = need + 1 if not status else max(need * 2, 100)
            top = b"(" + after.encode() if after else b"+"
            members = await repeatable(
                partial(self._redis.zrevrangebylex, index, max=top, min=b"-", start=0, num=fetch)
            )
            names = [m.decode() for m in members]
            more = len(names) == fetch
            candidates = names if status else names[:need]
            late = (
                await self._indexed_late(workspace_id, candidates, began) if legacy_phase and names else set()
            )
            wanted = [m for m in candidates if m not in late]
            records = dict(
                zip(
                    wanted,
                    await self._read_many(workspace_id, [codec.job_id_of_member(m) for m in wanted], setting),
                    strict=True,
                )
            )
            for member in candidates:
                record = records.get(member)
                if record is not None and (not status or record.get("status") == status):
                    if not weight.fits(record):
                        # The page is full by bytes: it ends before this job, which the next one starts with.
                        return cursor.index_after(after)
                    after = member
                    out.append(record)
                    weight.take(record)
                    if len(out) == page_size:
                        if more or member != names[-1]:
                            return cursor.index_after(after)
                        break
                else:
                    after = member
            examined += len(candidates)
            if not more or len(out) == page_size:
                break  # the index is exhausted
            if examined >= INDEX_ENTRIES_PER_PAGE:
                return cursor.index_after(after)
        if legacy_phase and setting.stage.reads_legacy:
            return cursor.legacy_from(0)
        return None

    async def _indexed_late(self, workspace_id: str, members: Sequence[str], began: int) -> set[str]:
        """The members a backfill indexed after the listing began (the legacy phase lists them)."""
        scores = await repeatable(
            lambda: self._redis.zmscore(self._keys.job_index_late(workspace_id), list(members))
        )
        return {m for m, score in zip(members, scores, strict=True) if score is not None and score > began}

    async def _list_legacy(
        self,
        workspace_id: str,
        setting: StageSetting,
        status: str,
        page_size: int,
        position: ListingCursor,
        out: list[Record],
        weight: _PageBytes,
    ) -> ListingCursor | None:
        """Unindexed legacy records of the workspace, one SCAN stretch after another.

        A page ends on a SCAN cursor, never part-way through what one SCAN call returned: a cursor stays
        valid when Redis resizes its table, a position inside a call's reply does not (the same cursor
        then covers other keys). When a stretch holds more matches than the page has room for, a shorter
        stretch from the same cursor is scanned instead, down to one hash bucket (a SCAN of COUNT 1),
        which ends the page before it. Only when one bucket holds more matches than a whole page does the
        page end inside it, after the last key returned.
        """
        if not setting.stage.reads_legacy:
            return None
        cursor = position.scan_cursor
        count = LEGACY_SCAN_COUNT if position.scan_count is None else position.scan_count
        after = position.after_key.encode("latin-1")
        began = position.began
        steps = calls = 0
        while steps < LEGACY_SCANS_PER_PAGE and calls < LEGACY_SCAN_CALLS_PER_PAGE:
            next_cursor, keys = await repeatable(
                partial(self._legacy.scan, cursor, match=LEGACY_JOB_PATTERN, count=count)
            )
            calls += 1
            found = await self._unindexed_legacy(
                workspace_id, sorted(k for k in set(keys) if k > after), status, began
            )
            # Room by count and by bytes: a stretch that does not fit either way is scanned shorter.
            room = min(page_size - len(out), weight.fitting([record for _, record in found]))
            if len(found) > room:
                if count > 1:
                    count = max(1, min(count // 2, count * room // len(found)))
                    continue
                if out:
                    break
                for _, record in found[:room]:
                    out.append(record)
                    weight.take(record)
                return position.legacy_from(cursor, 1, found[room - 1][0].decode("latin-1"))
            for _, record in found:
                out.append(record)
                weight.take(record)
            steps += 1
            cursor, after = int(next_cursor), b""
            count = min(count * 2, LEGACY_SCAN_COUNT)
            if cursor == 0:
                return None
            if len(out) == page_size or weight.full:
                break
        return position.legacy_from(cursor, count, after.decode("latin-1"))

    async def _unindexed_legacy(
        self, workspace_id: str, keys: list[bytes], status: str, began: int
    ) -> list[tuple[bytes, Record]]:
        """(key, record) of the workspace's legacy records among ``keys`` (sorted) that its index lacked
        when the listing began.

        Other workspaces' records are passed over inside Redis; only the caller's are read whole.
        """
        index, late = self._keys.job_index(workspace_id), self._keys.job_index_late(workspace_id)
        if not keys:
            return []
        found = await repeatable(
            lambda: self._legacy_lua.call(LEGACY_KEYS_OF_WORKSPACE, keys=keys, args=[workspace_id, status])
        )
        if not found:
            return []
        mine, members = [], []
        for n in range(0, len(found), 3):
            key = keys[int(found[n]) - 1]
            job_id = found[n + 1].decode("utf-8", "replace") or KeyLayout.job_id_of_legacy(
                key.decode("utf-8", "replace")
            )
            mine.append((key, job_id))
            members.append(codec.index_member(job_id, found[n + 2].decode("utf-8", "replace")))

        async def read_scores() -> list[Any]:  # a pipeline is built again for each attempt
            scores = self._redis.pipeline(transaction=False)
            for member in members:
                scores.zscore(index, member)
                scores.zscore(late, member)
            return raise_store_failures(await scores.execute(raise_on_error=False))

        async def read_records() -> list[Any]:
            reads = self._legacy.pipeline(transaction=False)
            for key, _ in mine:
                reads.hgetall(key)
            return raise_store_failures(await reads.execute(raise_on_error=False))

        index_scores = await repeatable(read_scores)
        records = await repeatable(read_records)
        out = []
        for (key, job_id), score, late_score, raw in zip(
            mine, index_scores[::2], index_scores[1::2], records, strict=True
        ):
            record = _as_record(raw)
            listed_by_index = score is not None and (late_score is None or late_score <= began)
            if listed_by_index or record is None or record.get("workspace_id") != workspace_id:
                continue  # the index phase listed it, or it changed since the first look
            if status and record.get("status") != status:
                continue
            record.setdefault("job_id", job_id)
            out.append((key, record))
        return out


def _layout_flags(stage: Stage) -> list[str]:
    """ARGV of UPDATE_STATUS and CLAIM: the layouts the stage uses, and which one its reads prefer."""
    return ["1" if flag else "0" for flag in (stage.reads_legacy, stage.reads_new, stage.prefers_new)]


def _flat_record(reply: list[bytes]) -> Record | None:
    """A READ_RECORDS entry (flat field/value list) as a record; an empty one is no record."""
    if not reply:
        return None
    return codec.decode(dict(zip(reply[::2], reply[1::2], strict=True)))


def _as_record(reply: object) -> Record | None:
    """A hash reply as a record; an empty reply or an error (the key is not a hash) is no record."""
    if not isinstance(reply, dict) or not reply:
        return None
    return codec.decode(reply)
