"""Job writes in a split topology: the legacy layout on one Redis, the new layout on another (or a cluster).

The protocol (``docs/two-stores.md`` says why each failure is safe):

1. The layout the stage's reads prefer is written first, in one single-slot script that also records the
   write still owed to the other layout in that store's outbox (``KeyLayout.outbox`` in the workspace's
   slot, or ``KeyLayout.legacy_outbox``).
2. The other layout is brought up to date: the whole record, only forwards by revision (``CATCH_UP``), so
   a late or replayed replica write never undoes a newer one.
3. The outbox entry is settled. The caller's acknowledgement follows step 1 and 2; a crash after step 1
   leaves the outbox entry, which ``repair_outboxes`` (run by every controller) replays.

Updates read both copies, pick the newest (the highest revision; a tie goes to the layout the stage
prefers), and write with compare-and-set on what they read, retrying when another writer came between.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import NotFound, Unavailable
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.claims import MARK_READY
from relay.core.lua.replicas import CATCH_UP, ENQUEUE_LAYOUT, PUT_RECORD, SETTLE_OUTBOX
from relay.core.stages import Stage
from relay.core.stores import Stores
from relay.services.bounds import OUTBOX_NAME_GRACE_SECONDS, REPAIRS_PER_PASS, WRITE_ATTEMPTS
from relay.services.new_action import NewAction

log = logging.getLogger("relay.jobs.split")


@dataclass(frozen=True, slots=True)
class Enqueued:
    job_ids: list[str]
    queue_depth: int


#: What an update does to the newest copy: the fields to change, or None when it does not apply (a claim
#: of a job that is no longer pending). It may raise a domain error (a finished job).
Change = Callable[[Record], dict[str, str] | None]


def _flat(record: Record) -> list[str]:
    return [item for pair in record.items() for item in pair]


class _Half:
    """One store and its scripts."""

    def __init__(self, redis: Redis | RedisCluster):
        self.redis = redis
        self.lua = LuaScripts(redis)

    async def enqueue(self, keys: list[str], args: list[Any]) -> Any:
        return await self.lua.call(ENQUEUE_LAYOUT, keys=keys, args=args)

    async def put(self, keys: list[str], args: list[Any]) -> Any:
        return await self.lua.call(PUT_RECORD, keys=keys, args=args)

    async def catch_up(self, keys: list[str], args: list[Any]) -> Any:
        return await self.lua.call(CATCH_UP, keys=keys, args=args)

    async def settle(self, keys: list[str], args: list[Any]) -> Any:
        return await self.lua.call(SETTLE_OUTBOX, keys=keys, args=args)


class SplitWrites:
    def __init__(self, stores: Stores, idempotency_ttl_seconds: int, keys: KeyLayout = KEYS):
        self._stores = stores
        self._new = _Half(stores.new)
        self._legacy = _Half(stores.legacy)
        self._lua = self._new.lua
        self._ttl = idempotency_ttl_seconds
        self._keys = keys

    # --- Execute -----------------------------------------------------------------------------
    async def execute(
        self, workspace_id: str, stage: Stage, actions: Sequence[NewAction], actor_id: str
    ) -> Enqueued:
        """Enqueue one job per action; a replayed client_request_id yields the original job id."""
        k = self._keys
        enqueued_at = codec.now_iso()
        both = stage.writes_legacy and stage.writes_new
        first_new = stage.prefers_new or not stage.writes_legacy
        planned = []
        for action in actions:
            planned.append((action.client_request_id, action.new_record(workspace_id, actor_id, enqueued_at)))
        # The other layout's idempotency key can be all there is of a replay's original: written in an
        # earlier stage, or its first step's store is the other one now. Look there too (a read), in every
        # stage that still has a legacy layout.
        replayed: dict[int, str] = {}
        if stage is not Stage.LEGACY_CLEANED:
            other = self._legacy if first_new else self._new
            for i, (crid, _) in enumerate(planned):
                if crid:
                    key = (
                        k.idempotency(workspace_id, crid)
                        if first_new
                        else k.new_idempotency(workspace_id, crid)
                    )
                    original = await other.redis.get(key)
                    if original:
                        replayed[i] = original.decode()
        fresh = [(i, crid, rec) for i, (crid, rec) in enumerate(planned) if i not in replayed]
        ids: dict[int, str] = dict(replayed)
        depth = 0
        if fresh:
            pushes_new = stage.writes_new
            if pushes_new:
                await self._lua.call(MARK_READY, keys=[k.ready, k.ready_seq], args=[workspace_id, "1", 0])
            seq = 0
            if both and first_new:
                await self._note_outbox(workspace_id)
            try:
                first = "new" if first_new else "legacy"
                reply = await self._enqueue_half(first, workspace_id, stage, fresh, first=True, owed=both)
                seq, depth = int(reply[0]), int(reply[1])
                created = []
                for (i, crid, rec), n in zip(fresh, range(2, len(reply), 2), strict=True):
                    ids[i] = reply[n].decode()
                    if reply[n + 1] == b"1":
                        created.append((i, crid, rec))
                if both and created:
                    second = "legacy" if first_new else "new"
                    reply2 = await self._enqueue_half(
                        second, workspace_id, stage, created, first=False, owed=False
                    )
                    if second == "new":
                        seq, depth = int(reply2[0]), int(reply2[1])
                    await self._settle_enqueued(first, workspace_id, stage, created)
            finally:
                if pushes_new:
                    await self._lua.call(
                        MARK_READY, keys=[k.ready, k.ready_seq], args=[workspace_id, "0", seq]
                    )
        return Enqueued([ids[i] for i in range(len(planned))], depth)

    def _half(self, layout: str) -> _Half:
        return self._new if layout == "new" else self._legacy

    async def _enqueue_half(
        self,
        layout: str,
        workspace_id: str,
        stage: Stage,
        actions: Sequence[tuple[int, str, Record]],
        *,
        first: bool,
        owed: bool,
    ) -> list[Any]:
        k = self._keys
        new = layout == "new"
        push = new or not stage.writes_new  # the legacy queue only while nothing reads the new one
        keys = (
            [
                k.queue(workspace_id),
                k.queue_seq(workspace_id),
                k.job_index(workspace_id),
                k.outbox(workspace_id),
            ]
            if new
            else [k.legacy_queue, k.legacy_queue_seq, k.legacy_queue, k.legacy_outbox]
        )
        args: list[Any] = [
            "1" if push else "0",
            "1" if new else "0",
            "1" if new else "0",
            "1" if first else "0",
            "1" if owed else "0",
            self._ttl,
            workspace_id,
            "" if new else f"{workspace_id}:",
        ]
        for _, crid, record in actions:
            job_id = record["job_id"]
            if new:
                keys += [k.new_idempotency(workspace_id, crid or "-"), k.new_job(workspace_id, job_id)]
            else:
                keys += [k.idempotency(workspace_id, crid or "-"), k.legacy_job(job_id)]
            args += [
                job_id,
                "1" if crid else "0",
                codec.index_member(job_id, record["enqueued_at"]),
                json.dumps(_flat(record)),
                _owed_entry("enqueue", record, crid, push_new=stage.writes_new),
            ]
        return await self._half(layout).enqueue(keys=keys, args=args)

    async def _settle_enqueued(
        self, layout: str, workspace_id: str, stage: Stage, actions: Sequence[tuple[int, str, Record]]
    ) -> None:
        half = self._half(layout)
        for _, crid, record in actions:
            field, key = self._outbox_field(layout, workspace_id, record["job_id"])
            entry = _owed_entry("enqueue", record, crid, push_new=stage.writes_new)
            await half.settle(keys=[key], args=[field, entry])

    def _outbox_field(self, layout: str, workspace_id: str, job_id: str) -> tuple[str, str]:
        """(field, outbox key) of a job's outbox entry in the store of ``layout``."""
        if layout == "new":
            return job_id, self._keys.outbox(workspace_id)
        return f"{workspace_id}:{job_id}", self._keys.legacy_outbox

    # --- UpdateJobStatus and ClaimJob ------------------------------------------------------------
    async def read_copies(self, workspace_id: str, job_id: str, stage: Stage) -> dict[str, Record]:
        """The job's copies in the layouts the stage uses, by layout; another workspace's is no copy."""
        out: dict[str, Record] = {}
        if stage.reads_new:
            raw = await _hgetall(self._stores.new, self._keys.new_job(workspace_id, job_id))
            if raw is not None and raw.get("workspace_id", workspace_id) == workspace_id:
                out["new"] = raw
        if stage.reads_legacy:
            raw = await _hgetall(self._stores.legacy, self._keys.legacy_job(job_id))
            if raw is not None and raw.get("workspace_id") == workspace_id:
                out["legacy"] = raw
        return out

    async def update(self, workspace_id: str, job_id: str, stage: Stage, change: Change) -> Record | None:
        """Apply ``change`` to the newest copy and write it to every layout the stage uses, first the one
        its reads prefer. None when ``change`` does not apply; NotFound when no copy exists."""
        k = self._keys
        for _ in range(WRITE_ATTEMPTS):
            copies = await self.read_copies(workspace_id, job_id, stage)
            if not copies:
                raise NotFound("job not found", reason="JOB_NOT_FOUND")
            truth = _newest(copies, stage.prefers_new)
            changes = change(truth)
            if changes is None:
                return None
            record = {**truth, **changes, "rev": str(codec.revision(truth) + 1)}
            record.setdefault("job_id", job_id)
            record.setdefault("workspace_id", workspace_id)
            # Every layout the stage uses is written, a missing copy created whole (with its index entry):
            # a backfill that copied the record just before this update, and validated its copy before
            # the update's first step landed, would otherwise leave the new copy behind.
            layouts = [name for name in ("new", "legacy") if _uses(stage, name)]
            if not stage.prefers_new:
                layouts.reverse()
            first, rest = layouts[0], layouts[1:]
            read = copies.get(first)
            if rest and first == "new":
                await self._note_outbox(workspace_id)
            field, outbox = self._outbox_field(first, workspace_id, job_id)
            owed = _owed_entry_of(record) if rest else ""
            member = codec.index_member(job_id, record.get("enqueued_at")) if first == "new" else ""
            key = k.new_job(workspace_id, job_id) if first == "new" else k.legacy_job(job_id)
            outcome = await self._half(first).put(
                keys=[key, k.job_index(workspace_id) if first == "new" else key, outbox],
                args=[
                    "" if read is None else read.get("rev", "0"),
                    "" if read is None else read.get("status", ""),
                    member,
                    field if rest else "",
                    owed,
                    *_flat(record),
                ],
            )
            if outcome == b"CHANGED":
                continue
            for layout in rest:
                await self.catch_up(layout, workspace_id, record)
            if rest:
                await self._half(first).settle(keys=[outbox], args=[field, owed])
            return record
        raise Unavailable("the job changed under too many concurrent writes; retry", reason="WRITE_CONTENDED")

    async def catch_up(self, layout: str, workspace_id: str, record: Record, crid: str = "") -> bytes:
        k = self._keys
        job_id = record["job_id"]
        if layout == "new":
            keys = [k.new_job(workspace_id, job_id), k.job_index(workspace_id)]
            keys.append(k.new_idempotency(workspace_id, crid) if crid else keys[0])
            member = codec.index_member(job_id, record.get("enqueued_at"))
        else:
            keys = [k.legacy_job(job_id), k.legacy_job(job_id)]
            keys.append(k.idempotency(workspace_id, crid) if crid else keys[0])
            member = ""
        return await self._half(layout).catch_up(
            keys=keys,
            args=[
                codec.revision(record),
                workspace_id,
                member,
                job_id,
                self._ttl if crid else "",
                *_flat(record),
            ],
        )

    async def _note_outbox(self, workspace_id: str) -> None:
        """Name the workspace among those whose outbox may hold entries, before an entry is written."""
        now = await _now_seconds(self._stores.new)
        await self._stores.new.zadd(self._keys.outbox_workspaces, {workspace_id: now}, gt=True)

    # --- repair --------------------------------------------------------------------------------
    async def repair_outboxes(self, min_age_seconds: float = 0.0) -> int:
        """Replay the replica writes that a crash left owed; returns how many were settled. Entries whose
        write began less than ``min_age_seconds`` ago are left: their writer is probably between steps."""
        settled = 0
        young = time.time() - min_age_seconds
        entries = await self._stores.legacy.hgetall(self._keys.legacy_outbox)
        for field, entry in list(entries.items())[:REPAIRS_PER_PASS]:
            if min_age_seconds and _written_at(entry) > young:
                continue
            workspace_id, _, job_id = field.decode().partition(":")
            settled += await self._repair_one("legacy", workspace_id, job_id, field.decode(), entry)
        now = await _now_seconds(self._stores.new)
        for raw_ws, noted in await self._stores.new.zrange(
            self._keys.outbox_workspaces, 0, -1, withscores=True
        ):
            workspace_id = raw_ws.decode()
            entries = await self._stores.new.hgetall(self._keys.outbox(workspace_id))
            if not entries:
                # Named long enough ago that no writer is still between naming it and writing its entry.
                if noted < now - OUTBOX_NAME_GRACE_SECONDS:
                    await self._stores.new.zrem(self._keys.outbox_workspaces, raw_ws)
                continue
            for field, entry in list(entries.items())[:REPAIRS_PER_PASS]:
                if min_age_seconds and _written_at(entry) > young:
                    continue
                settled += await self._repair_one("new", workspace_id, field.decode(), field.decode(), entry)
        return settled

    async def _repair_one(self, first: str, workspace_id: str, job_id: str, field: str, entry: bytes) -> int:
        k = self._keys
        outbox = k.legacy_outbox if first == "legacy" else k.outbox(workspace_id)
        if not is_workspace_id(workspace_id) or not is_job_id(job_id):
            await self._half(first).settle(keys=[outbox], args=[field, entry])
            return 1
        try:
            owed = json.loads(entry)
        except ValueError:
            owed = {}
        source = self._stores.legacy if first == "legacy" else self._stores.new
        key = k.legacy_job(job_id) if first == "legacy" else k.new_job(workspace_id, job_id)
        record = await _hgetall(source, key)
        second = "new" if first == "legacy" else "legacy"
        if record is not None and record.get("workspace_id", workspace_id) == workspace_id:
            crid = str(owed.get("crid", ""))
            if owed.get("op") == "enqueue" and second == "new" and owed.get("push_new"):
                # The first step of an Execute wrote only the legacy layout: write the new half, queue
                # entry included, exactly as that Execute would have.
                await self._lua.call(MARK_READY, keys=[k.ready, k.ready_seq], args=[workspace_id, "1", 0])
                seq = 0
                try:
                    reply = await self._enqueue_half(
                        "new", workspace_id, Stage.DUAL_WRITE, [(0, crid, record)], first=False, owed=False
                    )
                    seq = int(reply[0])
                finally:
                    await self._lua.call(
                        MARK_READY, keys=[k.ready, k.ready_seq], args=[workspace_id, "0", seq]
                    )
                if reply[3] == b"0":  # the record was there already: bring it forwards instead
                    await self.catch_up("new", workspace_id, record, crid)
            else:
                await self.catch_up(second, workspace_id, record, crid)
        settled = await self._half(first).settle(keys=[outbox], args=[field, entry])
        if settled:
            log.info("repaired a replica write", extra={"layout": second, "workspace_id": workspace_id})
        return int(settled)


def _uses(stage: Stage, layout: str) -> bool:
    return stage.reads_new if layout == "new" else stage.reads_legacy


def _newest(copies: dict[str, Record], prefer_new: bool) -> Record:
    """The copy with the highest revision is the latest acknowledged write; a tie goes to the layout the
    stage's reads prefer, so a change starts from what readers see."""
    new, legacy = copies.get("new"), copies.get("legacy")
    if new is None or legacy is None:
        return new or legacy  # type: ignore[return-value]
    rn, rl = codec.revision(new), codec.revision(legacy)
    return new if rn > rl or (rn == rl and prefer_new) else legacy


def _owed_entry(op: str, record: Record, crid: str, *, push_new: bool) -> str:
    # ``t`` (when the write began) lets the repairer leave a writer between its steps alone. It is the
    # record's enqueue time, so the entry settled is byte for byte the entry written.
    when = codec.parse_time(record.get("enqueued_at"))
    return json.dumps(
        {
            "op": op,
            "rev": codec.revision(record),
            "crid": crid,
            "push_new": push_new,
            "t": round(when.timestamp(), 3) if when else 0,
        },
        separators=(",", ":"),
    )


def _owed_entry_of(record: Record) -> str:
    return json.dumps(
        {"op": "put", "rev": codec.revision(record), "t": round(time.time(), 3)}, separators=(",", ":")
    )


def _written_at(entry: bytes) -> float:
    """When the write that left an outbox entry began (0: unknown, an entry from before ``t``)."""
    try:
        return float(json.loads(entry).get("t", 0) or 0)
    except (ValueError, AttributeError, TypeError):
        return 0.0


async def _hgetall(redis: Redis | RedisCluster, key: str) -> Record | None:
    """A hash as a record; None when missing or not a hash."""
    try:
        raw = await redis.hgetall(key)
    except Exception as exc:  # a legacy key that is not a hash (WRONGTYPE) is no record
        if "WRONGTYPE" in str(exc):
            return None
        raise
    return codec.decode(raw) if raw else None


async def _now_seconds(redis: Redis | RedisCluster) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1e6
