"""One backfill batch across two stores (split topologies): the legacy records on the legacy Redis, the new
layout on a cluster or another Redis, where no script can span both.

The batch is copied in four steps, each safe to crash after:

1. the batch's legacy records are read whole, read-only (``READ_LEGACY_RECORDS``); a record whose
   workspace or enqueue time changed since the SCAN step's read answers STALE, as ``COPY_BATCH`` does;
2. per workspace, one single-slot script on the new store (``BACKFILL_COPY_WORKSPACE``) copies its share
   where the new key is missing or holds a lower rev, indexes it, and records the batch's outcomes in the
   workspace's applied hash, so a batch replayed after a crash reports what the first attempt did;
3. every record written is validated: the legacy copy is read again, and one that changed since step 1
   (the old system writes without bumping rev) is copied again over exactly what step 2 wrote
   (``BACKFILL_RECOPY``), never over a newer write;
4. counts and checkpoint are recorded in the global slot (``BACKFILL_RECORD_BATCH``), fenced as
   ``COPY_BATCH`` is: a crash before it makes the next owner replay the batch, counted once by step 2.

A dry run runs steps 1 and 2 read-only (EVALSHA_RO) and writes nothing in either store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from relay.controller.backfill.batch import COPY, Batch, BatchCopier, CopyReply, Item, _parse
from relay.controller.backfill.state import COUNT_OF_OUTCOME, INVALID_IDS_KEPT
from relay.core.keys import KEYS, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.split_migration import (
    BACKFILL_COPY_WORKSPACE,
    BACKFILL_RECOPY,
    BACKFILL_RECORD_BATCH,
    READ_LEGACY_RECORDS,
)
from relay.core.stores import Stores

#: Seconds a workspace's applied hash outlives the backfill's last batch there (a resume comes sooner).
APPLIED_TTL_SECONDS = 7 * 24 * 3600
#: Times a record that keeps changing under the validation is copied again before it is left to the
#: next backfill (each later copy is as safe as the first; only its freshness is at stake).
RECOPIES = 3
#: Workspaces of one batch written concurrently.
WORKSPACES_AT_ONCE = 16

RawRecord = dict[bytes, bytes]


@dataclass(slots=True)
class _Planned:
    """A copy candidate whose legacy record was read whole."""

    position: int
    item: Item
    record: RawRecord


class SplitBatchCopier:
    """``BatchCopier``'s interface for a split topology."""

    def __init__(self, stores: Stores, keys: KeyLayout = KEYS):
        self._legacy = LuaScripts(stores.legacy)
        self._new = LuaScripts(stores.new)
        self._new_redis: Redis | RedisCluster = stores.new
        self._keys = keys

    async def decide(self, batch: Batch, backfill_id: str) -> CopyReply:
        """What ``copy`` would do, read-only in both stores."""
        if not batch.items:
            return CopyReply("OK")
        letters = await self._read(batch)
        if letters is None:
            return CopyReply("STALE")
        planned, outcomes = letters
        await self._copy_workspaces(planned, outcomes, backfill_id, "0", dry=True)
        return CopyReply("OK", "".join(outcomes))

    def plan(self, batch: Batch) -> None:
        """Nothing to prepare ahead: a split batch reads its records whole when it is copied."""

    async def copy(
        self, batch: Batch, backfill_id: str, token: str, batches_before: int, checkpoint: dict[str, str]
    ) -> CopyReply:
        k = self._keys
        read = await self._read(batch)
        if read is None:
            return CopyReply("STALE")
        planned, outcomes = read
        # A run that lost the backfill writes nothing more (its writes would be safe, only uncounted).
        owner, batches = await self._new_redis.hmget(k.backfill(backfill_id), "token", "batches")
        if (owner or b"").decode() != token or int(batches or 0) != batches_before:
            return CopyReply("FENCED")
        written = await self._copy_workspaces(planned, outcomes, backfill_id, str(batches_before), dry=False)
        await self._validate(written)
        letters = "".join(outcomes)
        tally: dict[str, int] = {"scanned": len(batch.items), "filtered_out": batch.filtered}
        for letter in letters:
            tally[COUNT_OF_OUTCOME[letter]] = tally.get(COUNT_OF_OUTCOME[letter], 0) + 1
        invalid = [item.job_id for item, letter in zip(batch.items, letters, strict=True) if letter == "i"]
        args: list[str | bytes] = [
            token,
            str(batches_before),
            str(INVALID_IDS_KEPT),
            str(len(checkpoint)),
            str(len(tally)),
            letters,
        ]
        for name, value in checkpoint.items():
            args += [name, value]
        for name, n in tally.items():
            args += [name, str(n)]
        args += invalid
        reply = await self._new.call(
            BACKFILL_RECORD_BATCH, [k.backfill(backfill_id), k.backfill_invalid(backfill_id)], args
        )
        return _parse(reply, executing=True)

    # --- step 1: the legacy records ----------------------------------------------------------
    async def _read(self, batch: Batch) -> tuple[list[_Planned], list[str]] | None:
        """(copy candidates with their records, outcome letters so far: '' where step 2 decides), or
        None when an item changed since the SCAN step's read (STALE)."""
        replies = await self._legacy.call_ro(READ_LEGACY_RECORDS, [item.key for item in batch.items])
        planned: list[_Planned] = []
        outcomes: list[str] = []
        for n, (item, reply) in enumerate(zip(batch.items, replies, strict=True)):
            if isinstance(reply, int):  # not a hash
                if item.kind == COPY or item.ws_mark != b"T":
                    return None
                outcomes.append("i")
                continue
            if not reply:
                outcomes.append("v")  # deleted since the SCAN
                continue
            record = _as_dict(reply)
            if item.kind == COPY:
                if record.get(b"workspace_id", b"").decode("utf-8", "replace") != item.workspace_id:
                    return None
                if _mark(record.get(b"enqueued_at")) != item.enq_mark:
                    return None
                planned.append(_Planned(n, item, record))
                outcomes.append("")
            else:
                if _mark(record.get(b"workspace_id")) != item.ws_mark:
                    return None
                outcomes.append("i")
        return planned, outcomes

    # --- step 2: per workspace, one slot -------------------------------------------------------
    async def _copy_workspaces(
        self, planned: list[_Planned], outcomes: list[str], backfill_id: str, batch_no: str, *, dry: bool
    ) -> list[_Planned]:
        """Fill in the outcomes of the copy candidates; returns the ones whose record was written."""
        k = self._keys
        groups: dict[str, list[_Planned]] = {}
        for entry in planned:
            groups.setdefault(entry.item.workspace_id, []).append(entry)
        written: list[_Planned] = []

        async def one(workspace_id: str, entries: list[_Planned]) -> None:
            keys: list[str | bytes] = [
                k.backfill_applied(workspace_id, backfill_id),
                k.job_index(workspace_id),
                k.job_index_late(workspace_id),
            ]
            args: list[str | bytes] = ["1" if dry else "0", batch_no, str(APPLIED_TTL_SECONDS)]
            for entry in entries:
                keys.append(k.new_job(workspace_id, entry.item.job_id))
                args += [
                    entry.item.job_id,
                    entry.item.member,
                    entry.record.get(b"rev", b"0"),
                    str(len(entry.record)),
                    *_flat(entry.record),
                ]
            call = self._new.call_ro if dry else self._new.call
            letters, acts = await call(BACKFILL_COPY_WORKSPACE, keys, args)
            for entry, letter, act in zip(entries, letters.decode(), acts.decode(), strict=True):
                outcomes[entry.position] = letter
                if act == "c":
                    written.append(entry)

        # A batch of many small workspaces is many round trips: send a few at once (to other primaries,
        # or on other connections), so the batch waits for the slowest, not for their sum.
        pending = list(groups.items())
        for start in range(0, len(pending), WORKSPACES_AT_ONCE):
            await asyncio.gather(
                *(one(ws, entries) for ws, entries in pending[start : start + WORKSPACES_AT_ONCE])
            )
        return written

    # --- step 3: validate what was written -------------------------------------------------------
    async def _validate(self, written: Sequence[_Planned]) -> None:
        """Copy again every record that changed in the legacy store since it was read for the copy."""
        k = self._keys
        pending = list(written)
        for _ in range(RECOPIES):
            if not pending:
                return
            replies = await self._legacy.call_ro(READ_LEGACY_RECORDS, [e.item.key for e in pending])
            changed: list[_Planned] = []
            for entry, reply in zip(pending, replies, strict=True):
                if isinstance(reply, int) or not reply:
                    continue  # no longer a record to copy: what was copied stays (cleanup compares)
                now = _as_dict(reply)
                if now == entry.record:
                    continue
                item = entry.item
                if (
                    now.get(b"workspace_id", b"").decode("utf-8", "replace") != item.workspace_id
                    or _mark(now.get(b"enqueued_at")) != item.enq_mark
                ):
                    continue  # it moved to another workspace or key: the next backfill places it
                outcome = await self._new.call(
                    BACKFILL_RECOPY,
                    [k.new_job(item.workspace_id, item.job_id), k.job_index(item.workspace_id)],
                    [
                        now.get(b"rev", b"0"),
                        item.member,
                        str(len(entry.record)),
                        *_flat(entry.record),
                        *_flat(now),
                    ],
                )
                if outcome == b"OK":
                    changed.append(_Planned(entry.position, item, now))
            pending = changed


def batch_copier(
    redis: Redis, stores: Stores | None, keys: KeyLayout = KEYS
) -> BatchCopier | SplitBatchCopier:
    """The copier of the topology: one ``COPY_BATCH`` per batch when both layouts share one Redis."""
    if stores is None or stores.shared:
        return BatchCopier(redis, keys)
    return SplitBatchCopier(stores, keys)


def _as_dict(flat: list[bytes]) -> RawRecord:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _flat(record: RawRecord) -> list[bytes]:
    return [item for pair in record.items() for item in pair]


def _mark(value: bytes | None) -> bytes:
    """As ``batch._mark``: what a read saw, '=' + value or '-' when absent."""
    return b"-" if value is None else b"=" + value
