"""The job domain: enqueue, read, list, claim and update jobs in whichever layouts the stage says."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import FailedPrecondition, NotFound
from relay.core.ids import is_workspace_id, new_job_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, KeyLayout
from relay.core.page_token import PageTokenCodec
from relay.core.scripts import Scripts
from relay.core.stage_store import StageView
from relay.core.stages import StageSetting
from relay.core.telemetry import Metrics

log = logging.getLogger("relay.jobs")

#: Legacy-phase listing: keys per SCAN call, and SCAN calls per page at most.
LEGACY_SCAN_COUNT = 500
LEGACY_SCANS_PER_PAGE = 8
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
    ):
        self._redis = redis
        self._scripts = Scripts.register(redis)
        self._stages = stages
        self._tokens = tokens
        self._metrics = metrics
        self._ttl = idempotency_ttl_seconds
        self._keys = keys

    # --- writes ------------------------------------------------------------------------------
    async def execute(
        self, workspace_id: str, actions: Sequence[NewAction], actor_id: str
    ) -> tuple[list[str], int]:
        """Enqueue one job per action; a replayed client_request_id yields the original job id."""
        stage = self._stages.for_workspace(workspace_id).stage
        k = self._keys
        keys = [k.job_index(workspace_id), k.legacy_queue, k.queue]
        args: list[Any] = [
            "1" if stage.writes_legacy else "0",
            "1" if stage.writes_new else "0",
            self._ttl,
            workspace_id,
        ]
        enqueued_at = codec.now_iso()
        for action in actions:
            job_id = new_job_id()
            keys += [
                k.idempotency(workspace_id, action.client_request_id),
                k.legacy_job(job_id),
                k.new_job(workspace_id, job_id),
            ]
            record = codec.new_record(
                job_id=job_id,
                workspace_id=workspace_id,
                provider=action.provider,
                action=action.action,
                params_json=action.params_json,
                actor_id=actor_id,
                enqueued_at=enqueued_at,
            )
            flat = [item for pair in record.items() for item in pair]
            args += [
                job_id,
                "1" if action.client_request_id else "0",
                codec.index_member(job_id, enqueued_at),
            ]
            args.append(json.dumps(flat))
        reply = await self._scripts.enqueue(keys=keys, args=args)
        layouts = (
            "both" if stage.writes_legacy and stage.writes_new else ("new" if stage.writes_new else "legacy")
        )
        self._metrics.dual_write.add(len(actions), {"layouts": layouts, "result": "ok"})
        return [v.decode() for v in reply[1:]], int(reply[0])

    async def update_status(
        self, workspace_id: str, job_id: str, status: str, result_json: str | None, error: str | None
    ) -> Record:
        reply = await self._scripts.update_status(
            keys=[self._keys.legacy_job(job_id), self._keys.new_job(workspace_id, job_id)],
            args=[
                workspace_id,
                status,
                codec.now_iso(),
                "1" if result_json is not None else "0",
                result_json or "",
                "1" if error is not None else "0",
                error or "",
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
        """The oldest pending job (legacy queue first: its entries are older), now running; None when idle."""
        k = self._keys
        for _ in range(64):  # entries of jobs that are gone or already taken are dropped; bound the walk
            from_legacy = True
            entry = await self._redis.lmove(k.legacy_queue, k.claiming, "LEFT", "RIGHT")
            if entry is None:
                from_legacy = False
                entry = await self._redis.lmove(k.queue, k.claiming, "LEFT", "RIGHT")
            if entry is None:
                return None
            text = entry.decode("utf-8", "replace")
            if from_legacy:
                job_id = text
                try:
                    workspace_id = (
                        await self._redis.hget(k.legacy_job(job_id), "workspace_id") or b""
                    ).decode()
                except ResponseError:  # the legacy key is not a hash
                    workspace_id = ""
            else:
                workspace_id, _, job_id = text.partition(":")
            if not is_workspace_id(workspace_id) or not job_id:
                await self._redis.lrem(k.claiming, 1, entry)
                log.warning("dropped a queue entry with no valid job behind it")
                continue
            raw = await self._scripts.claim(
                keys=[k.claiming, k.legacy_job(job_id), k.new_job(workspace_id, job_id)],
                args=[entry, workspace_id, codec.now_iso()],
            )
            if raw:
                return codec.decode(dict(zip(raw[::2], raw[1::2], strict=True)))
        return None

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
        replies = iter(await self._scripts.read_records(keys=keys) if keys else ())
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
        keys in storage order, each page a bounded SCAN."""
        setting = self._stages.for_workspace(workspace_id)
        filters = f"status={status}"
        state = (
            self._tokens.decode(page_token, workspace_id, filters) if page_token else {"p": "index", "m": ""}
        )
        out: list[Record] = []
        if state.get("p") == "index":
            state = await self._list_index(
                workspace_id, setting, status, page_size, str(state.get("m", "")), out
            )
        if state and state.get("p") == "legacy" and len(out) < page_size:
            state = await self._list_legacy(workspace_id, setting, status, page_size, state, out)
        token = self._tokens.encode(workspace_id, filters, state) if state else ""
        return Page(out, token)

    async def _list_index(
        self,
        workspace_id: str,
        setting: StageSetting,
        status: str,
        page_size: int,
        after: str,
        out: list[Record],
    ) -> dict[str, Any] | None:
        index = self._keys.job_index(workspace_id)
        examined = 0
        fetch = page_size if not status else max(page_size * 2, 100)
        while True:
            members = await self._redis.zrevrangebylex(
                index, max=b"(" + after.encode() if after else b"+", min=b"-", start=0, num=fetch
            )
            names = [m.decode() for m in members]
            records = await self._read_many(workspace_id, [codec.job_id_of_member(m) for m in names], setting)
            for member, record in zip(names, records, strict=True):
                after = member
                if record is not None and (not status or record.get("status") == status):
                    out.append(record)
                    if len(out) == page_size:
                        return {"p": "index", "m": after}
            examined += len(names)
            if len(names) < fetch:
                break  # the index is exhausted
            if examined >= INDEX_ENTRIES_PER_PAGE:
                return {"p": "index", "m": after}
        if setting.stage.reads_legacy and not await self._redis.exists(self._keys.legacy_indexed):
            return {"p": "legacy", "c": 0, "o": 0}
        return None

    async def _list_legacy(
        self,
        workspace_id: str,
        setting: StageSetting,
        status: str,
        page_size: int,
        state: dict[str, Any],
        out: list[Record],
    ) -> dict[str, Any] | None:
        if not setting.stage.reads_legacy:
            return None
        cursor, offset = int(state.get("c", 0)), int(state.get("o", 0))
        index = self._keys.job_index(workspace_id)
        for _ in range(LEGACY_SCANS_PER_PAGE):
            next_cursor, keys = await self._redis.scan(
                cursor, match=LEGACY_JOB_PATTERN, count=LEGACY_SCAN_COUNT
            )
            found = await self._unindexed_legacy(workspace_id, index, sorted(keys), status)
            room = page_size - len(out)
            if len(found) - offset > room:
                out.extend(found[offset : offset + room])
                return {"p": "legacy", "c": cursor, "o": offset + room}
            out.extend(found[offset:])
            cursor, offset = int(next_cursor), 0
            if cursor == 0:
                return None
            if len(out) == page_size:
                break
        return {"p": "legacy", "c": cursor, "o": 0}

    async def _unindexed_legacy(
        self, workspace_id: str, index: str, keys: list[bytes], status: str
    ) -> list[Record]:
        """Legacy records of the workspace among ``keys`` that its index does not list yet, in key order."""
        if not keys:
            return []
        # A pipeline, not READ_RECORDS: hundreds of keys in one script would hold Redis for milliseconds,
        # at three times the Redis CPU of plain commands.
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        records = [_as_record(r) for r in await pipe.execute(raise_on_error=False)]
        mine = [
            (key, r)
            for key, r in zip(keys, records, strict=True)
            if r is not None and r.get("workspace_id") == workspace_id
        ]
        if not mine:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for key, r in mine:
            job_id = r.setdefault("job_id", KeyLayout.job_id_of_legacy(key.decode("utf-8", "replace")))
            pipe.zscore(index, codec.index_member(job_id, r.get("enqueued_at")))
        indexed = await pipe.execute()
        return [
            r
            for (_, r), score in zip(mine, indexed, strict=True)
            if score is None and (not status or r.get("status") == status)
        ]


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
