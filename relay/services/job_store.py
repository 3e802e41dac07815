"""The job domain: enqueue, read, list, claim and update jobs in whichever layouts the stage says."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import FailedPrecondition, NotFound
from relay.core.ids import is_job_id, is_workspace_id, new_job_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.jobs import (
    CLAIM,
    ENQUEUE,
    LEGACY_KEYS_OF_WORKSPACE,
    PEEK_PENDING,
    READ_RECORDS,
    TAKE_PENDING,
    UPDATE_STATUS,
    EnqueuedJob,
    enqueue_call,
)
from relay.core.page_token import PageTokenCodec
from relay.core.stage_store import StageView
from relay.core.stages import Stage, StageSetting
from relay.core.telemetry import Metrics
from relay.services.listing_cursor import INDEX, LEGACY, ListingCursor

log = logging.getLogger("relay.jobs")

#: Legacy-phase listing: keys per SCAN call, and SCAN calls per page at most.
LEGACY_SCAN_COUNT = 500
LEGACY_SCANS_PER_PAGE = 8
#: SCAN calls per page at most, counting the shorter re-scans that let a page end on a cursor. Above
#: log2(LEGACY_SCAN_COUNT) + 1, so that every page makes progress.
LEGACY_SCAN_CALLS_PER_PAGE = LEGACY_SCANS_PER_PAGE + 16
#: Queue entries a ClaimJob call may take (dropping those of gone or finished jobs) before it gives up.
CLAIM_ATTEMPTS = 64
#: Seconds after which an entry taken from a queue but never marked running goes back to its queue.
CLAIM_TIMEOUT_SECONDS = 30.0
#: Such entries put back per ClaimJob call at most.
CLAIMS_RECOVERED_PER_CALL = 10
#: Index entries examined per page at most when a status filter skips most of them.
INDEX_ENTRIES_PER_PAGE = 2000


@dataclass(frozen=True, slots=True)
class NewAction:
    provider: str
    action: str
    params_json: str
    client_request_id: str


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Record]
    next_page_token: str


class JobStore:
    def __init__(
        self,
        redis: Redis,
        stages: StageView,
        tokens: PageTokenCodec,
        metrics: Metrics,
        idempotency_ttl_seconds: int = 24 * 3600,
        keys: KeyLayout = KEYS,
        claim_timeout_seconds: float = CLAIM_TIMEOUT_SECONDS,
    ):
        self._redis = redis
        self._lua = LuaScripts(redis)
        self._stages = stages
        self._tokens = tokens
        self._metrics = metrics
        self._ttl = idempotency_ttl_seconds
        self._keys = keys
        self._claim_timeout = claim_timeout_seconds

    # --- writes ------------------------------------------------------------------------------
    async def execute(
        self, workspace_id: str, actions: Sequence[NewAction], actor_id: str
    ) -> tuple[list[str], int]:
        """Enqueue one job per action; a replayed client_request_id yields the original job id."""
        stage = self._stages.for_workspace(workspace_id).stage
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
            )
            member = codec.index_member(job_id, enqueued_at)
            jobs.append(EnqueuedJob(job_id, action.client_request_id, member, record))
        keys, args = enqueue_call(self._keys, workspace_id, stage, self._ttl, jobs)
        reply = await self._lua.call(ENQUEUE, keys=keys, args=args)
        layouts = (
            "both" if stage.writes_legacy and stage.writes_new else ("new" if stage.writes_new else "legacy")
        )
        self._metrics.dual_write.add(len(actions), {"layouts": layouts, "result": "ok"})
        return [v.decode() for v in reply[1:]], int(reply[0])

    async def update_status(
        self, workspace_id: str, job_id: str, status: str, result_json: str | None, error: str | None
    ) -> Record:
        stage = self._stages.for_workspace(workspace_id).stage
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
            ],
        )
        outcome = reply[0].decode()
        if outcome == "NOT_FOUND":
            raise NotFound("job not found", reason="JOB_NOT_FOUND")
        if outcome == "TERMINAL":
            raise FailedPrecondition(
                f"the job is already {reply[1].decode()}; a finished job cannot change status",
                reason="JOB_FINISHED",
            )
        return await self.get(workspace_id, job_id)

    async def claim(self) -> Record | None:
        """The oldest pending job of either queue, now running; None when there is none.

        Each step is atomic, and a job goes to exactly one claimer: the queue entry moves to a claiming
        list (with the time it was taken), then CLAIM marks the job running if it is still pending. An
        entry whose claimer died in between goes back to its queue after the claim timeout.
        """
        k = self._keys
        for _ in range(CLAIM_ATTEMPTS):  # entries of jobs that are gone or already taken are dropped
            legacy_head, new_head = await self._lua.call(
                PEEK_PENDING,
                keys=[k.legacy_queue, k.queue, k.claiming, k.claim_times],
                args=[self._claim_timeout, CLAIMS_RECOVERED_PER_CALL],
            )
            if not legacy_head and not new_head:
                return None
            from_legacy = await self._legacy_head_is_older(legacy_head, new_head)
            entry = await self._lua.call(
                TAKE_PENDING, keys=[k.legacy_queue if from_legacy else k.queue, k.claiming, k.claim_times]
            )
            if entry is None:
                continue  # other claimers emptied that queue meanwhile
            record = await self._claim_entry(entry, from_legacy)
            if record is not None:
                return record
        return None

    async def _legacy_head_is_older(self, legacy_head: bytes, new_head: bytes) -> bool:
        """Whether the legacy queue's head job was enqueued no later than the new queue's (both may be
        empty). An unreadable time counts as the oldest, so such an entry is dealt with soon."""
        if not legacy_head or not new_head:
            return bool(legacy_head)
        workspace_id, _, job_id = new_head.decode("utf-8", "replace").partition(":")
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(self._keys.legacy_job(legacy_head.decode("utf-8", "replace")), "enqueued_at")
        pipe.hget(self._keys.new_job(workspace_id, job_id), "enqueued_at")
        legacy_time, new_time = (
            codec.parse_time(r.decode("utf-8", "replace")) if isinstance(r, bytes) else None
            for r in await pipe.execute(raise_on_error=False)
        )
        if legacy_time is None or new_time is None:
            return legacy_time is None
        return legacy_time <= new_time

    async def _claim_entry(self, entry: bytes, from_legacy: bool) -> Record | None:
        k = self._keys
        text = entry.decode("utf-8", "replace")
        if from_legacy:
            job_id = text
            try:
                workspace_id = (await self._redis.hget(k.legacy_job(job_id), "workspace_id") or b"").decode(
                    "utf-8", "replace"
                )
            except ResponseError:  # the legacy key is not a hash
                workspace_id = ""
        else:
            workspace_id, _, job_id = text.partition(":")
        if not is_workspace_id(workspace_id) or not is_job_id(job_id):
            pipe = self._redis.pipeline(transaction=True)
            pipe.lrem(k.claiming, 1, entry)
            pipe.hdel(k.claim_times, entry)
            await pipe.execute()
            log.warning("dropped a queue entry with no valid job behind it")
            return None
        stage = self._stages.for_workspace(workspace_id).stage
        raw = await self._lua.call(
            CLAIM,
            keys=[k.claiming, k.claim_times, k.legacy_job(job_id), k.new_job(workspace_id, job_id)],
            args=[entry, workspace_id, codec.now_iso(), *_layout_flags(stage)],
        )
        return codec.decode(dict(zip(raw[::2], raw[1::2], strict=True))) if raw else None

    # --- reads -------------------------------------------------------------------------------
    async def get(self, workspace_id: str, job_id: str) -> Record:
        setting = self._stages.for_workspace(workspace_id)
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
        keys = []
        for job_id in job_ids:
            if stage.reads_new:
                keys.append(self._keys.new_job(workspace_id, job_id))
            if read_legacy:
                keys.append(self._keys.legacy_job(job_id))
        replies = iter(await self._lua.call(READ_RECORDS, keys=keys) if keys else ())
        out: list[Record | None] = []
        paths: Counter[str] = Counter()
        for job_id in job_ids:
            new = _flat_record(next(replies)) if stage.reads_new else None
            legacy = _flat_record(next(replies)) if read_legacy else None
            if legacy is not None and legacy.get("workspace_id") != workspace_id:
                legacy = None  # another workspace's job looks exactly like a missing one
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
        cursor: ListingCursor | None
        if page_token:
            cursor = ListingCursor.from_state(self._tokens.decode(page_token, workspace_id, filters))
        else:
            cursor = await self._first_cursor(setting)
        out: list[Record] = []
        if cursor.phase == INDEX:
            cursor = await self._list_index(workspace_id, setting, status, page_size, cursor, out)
        if cursor and cursor.phase == LEGACY and len(out) < page_size:
            cursor = await self._list_legacy(workspace_id, setting, status, page_size, cursor, out)
        token = self._tokens.encode(workspace_id, filters, cursor.to_state()) if cursor else ""
        return Page(out, token)

    async def _first_cursor(self, setting: StageSetting) -> ListingCursor:
        if not setting.stage.reads_legacy:
            return ListingCursor.first(0, legacy_phase=False)
        pipe = self._redis.pipeline(transaction=True)
        pipe.time()
        pipe.exists(self._keys.legacy_indexed)
        (seconds, micros), indexed = await pipe.execute()
        return ListingCursor.first(seconds * 1_000_000 + micros, legacy_phase=not indexed)

    async def _list_index(
        self,
        workspace_id: str,
        setting: StageSetting,
        status: str,
        page_size: int,
        cursor: ListingCursor,
        out: list[Record],
    ) -> ListingCursor | None:
        index = self._keys.job_index(workspace_id)
        after, began, legacy_phase = cursor.after_member, cursor.began, cursor.legacy_phase
        examined = 0
        while True:
            need = page_size - len(out)
            # One member beyond the page tells whether another page exists, so a listing that ends on a
            # page boundary ends there instead of with an empty page.
            fetch = need + 1 if not status else max(need * 2, 100)
            members = await self._redis.zrevrangebylex(
                index, max=b"(" + after.encode() if after else b"+", min=b"-", start=0, num=fetch
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
                after = member
                record = records.get(member)
                if record is not None and (not status or record.get("status") == status):
                    out.append(record)
                    if len(out) == page_size:
                        if more or member != names[-1]:
                            return cursor.index_after(after)
                        break
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
        scores = await self._redis.zmscore(self._keys.job_index_late(workspace_id), list(members))
        return {m for m, score in zip(members, scores, strict=True) if score is not None and score > began}

    async def _list_legacy(
        self,
        workspace_id: str,
        setting: StageSetting,
        status: str,
        page_size: int,
        position: ListingCursor,
        out: list[Record],
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
            next_cursor, keys = await self._redis.scan(cursor, match=LEGACY_JOB_PATTERN, count=count)
            calls += 1
            found = await self._unindexed_legacy(
                workspace_id, sorted(k for k in set(keys) if k > after), status, began
            )
            room = page_size - len(out)
            if len(found) > room:
                if count > 1:
                    count = max(1, min(count // 2, count * room // len(found)))
                    continue
                if out:
                    break
                out.extend(record for _, record in found[:room])
                return position.legacy_from(cursor, 1, found[room - 1][0].decode("latin-1"))
            out.extend(record for _, record in found)
            steps += 1
            cursor, after = int(next_cursor), b""
            count = min(count * 2, LEGACY_SCAN_COUNT)
            if cursor == 0:
                return None
            if len(out) == page_size:
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
        found = await self._lua.call(LEGACY_KEYS_OF_WORKSPACE, keys=keys, args=[workspace_id, status])
        if not found:
            return []
        mine = []
        pipe = self._redis.pipeline(transaction=False)
        for n in range(0, len(found), 3):
            key = keys[int(found[n]) - 1]
            job_id = found[n + 1].decode("utf-8", "replace") or KeyLayout.job_id_of_legacy(
                key.decode("utf-8", "replace")
            )
            mine.append((key, job_id))
            member = codec.index_member(job_id, found[n + 2].decode("utf-8", "replace"))
            pipe.zscore(index, member)
            pipe.zscore(late, member)
            pipe.hgetall(key)
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for (key, job_id), score, late_score, raw in zip(
            mine, replies[::3], replies[1::3], replies[2::3], strict=True
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
