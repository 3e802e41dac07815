"""ListJobs: newest first from the workspace index, then the legacy records no index lists yet.

A page is read in two phases (``relay.services.listing_cursor``): the workspace's index (O(page size)),
then, while legacy records may be unindexed, bounded SCAN stretches of the legacy keys. A page stops at
its size or at a byte budget of encoded jobs, whichever comes first; every Redis call of a page is a read,
repeated alone when its connection dropped, so the page keeps its progress.

:class:`JobListing` is the listing half of :class:`relay.services.job_store.JobStore`: it reads the stores,
scripts, stages and page tokens the store holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from redis.asyncio import Redis, RedisCluster

from relay.core import codec
from relay.core.codec import Record
from relay.core.keys import LEGACY_JOB_PATTERN, KeyLayout
from relay.core.limits import PAGE_BYTE_BUDGET
from relay.core.lua import LuaScripts
from relay.core.lua.jobs import LEGACY_KEYS_OF_WORKSPACE, NOW
from relay.core.page_token import PageTokenCodec
from relay.core.stage_store import StageView
from relay.core.stages import StageSetting
from relay.core.stores import raise_store_failures, repeatable
from relay.services.listing_cursor import INDEX, LEGACY, ListingCursor
from relay.v1 import job_service_pb2 as pb

#: Legacy-phase listing: keys per SCAN call, and SCAN calls per page at most.
LEGACY_SCAN_COUNT = 500
LEGACY_SCANS_PER_PAGE = 8
#: SCAN calls per page at most, counting the shorter re-scans that let a page end on a cursor. Above
#: log2(LEGACY_SCAN_COUNT) + 1, so that every page makes progress.
LEGACY_SCAN_CALLS_PER_PAGE = LEGACY_SCANS_PER_PAGE + 16
#: Index entries examined per page at most when a status filter skips most of them.
INDEX_ENTRIES_PER_PAGE = 2000


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Record]
    next_page_token: str
    #: The records as Jobs, in the same order (converted once, to weigh the page), with the token.
    response: pb.ListJobsResponse = field(default_factory=pb.ListJobsResponse)


class _PageBytes:
    """The jobs of a page as they are taken, and whether the next one still fits the byte budget: a page
    holds at least one job, and never passes ``budget`` bytes of encoded jobs after its first."""

    def __init__(self, store: JobListing, budget: int):
        self._store = store
        self.left = budget
        self.response = pb.ListJobsResponse()
        self.jobs = self.response.jobs
        # Jobs weighed but not taken yet, with their cost, by record (kept alive with it, so that no id
        # is reused).
        self._pending: dict[int, tuple[Record, pb.Job, int]] = {}

    def _weighed(self, record: Record) -> tuple[pb.Job, int]:
        known = self._pending.get(id(record))
        if known is not None and known[0] is record:
            return known[1], known[2]
        job = self._store.to_proto(record)
        # Each job costs its bytes, its tag and its length prefix in ListJobsResponse.
        cost = job.ByteSize() + 6
        self._pending[id(record)] = (record, job, cost)
        return job, cost

    def offer(self, record: Record) -> bool:
        """Take the record's job when the page has room for it; False, taking nothing, when it has not.
        The job is made in the page itself (no copy), and removed again when it does not fit."""
        job = self._store.to_proto(record, self.jobs)
        cost = job.ByteSize() + 6
        if len(self.jobs) > 1 and cost > self.left:
            del self.jobs[-1]
            return False
        self.left -= cost
        return True

    def take(self, record: Record) -> None:
        job, cost = self._weighed(record)
        self._pending.pop(id(record), None)
        self.left -= cost
        self.jobs.append(job)

    def fitting(self, records: Sequence[Record]) -> int:
        """How many of ``records``, in order, the page still has room for (by bytes only)."""
        left, empty = self.left, not self.jobs
        for n, record in enumerate(records):
            cost = self._weighed(record)[1]
            if not (empty and n == 0) and cost > left:
                return n
            left -= cost
        return len(records)

    @property
    def full(self) -> bool:
        return bool(self.jobs) and self.left <= 0


class JobListing:
    """The listing of :class:`~relay.services.job_store.JobStore` (which sets these attributes)."""

    _redis: Redis | RedisCluster
    _legacy: Redis
    _lua: LuaScripts
    _legacy_lua: LuaScripts
    _keys: KeyLayout
    _tokens: PageTokenCodec
    _stages: StageView

    def to_proto(self, record: Record, into: Any = None) -> pb.Job:
        raise NotImplementedError

    async def _read_many(
        self, workspace_id: str, job_ids: Sequence[str], setting: StageSetting
    ) -> list[Record | None]:
        raise NotImplementedError

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
        weight.response.next_page_token = token
        return Page(out, token, weight.response)

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
                partial(self._lua.execute, "ZREVRANGEBYLEX", index, top, b"-", "LIMIT", 0, fetch)
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
                    if not weight.offer(record):
                        # The page is full by bytes: it ends before this job, which the next one starts with.
                        return cursor.index_after(after)
                    after = member
                    out.append(record)
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


def _as_record(reply: object) -> Record | None:
    """A hash reply as a record; an empty reply or an error (the key is not a hash) is no record."""
    if not isinstance(reply, dict) or not reply:
        return None
    return codec.decode(reply)
