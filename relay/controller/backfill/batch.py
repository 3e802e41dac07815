"""One backfill batch: a SCAN step over ``ai:jobs:*``, one read of each key's workspace_id and
enqueued_at to build its new key and index entry (``READ_BATCH``, one read-only call for the whole step),
and one ``COPY_BATCH`` call that decides and copies every key of the batch (and records it in the
checkpoint) inside Redis.

The read happens outside the atomic step, so the copy re-checks what the read saw and answers STALE when
anything changed; the batch is then read again. Reads and dry runs go through EVALSHA_RO: Redis itself
refuses any write from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from relay.controller.backfill.copy_stream import CopyStream
from relay.controller.backfill.state import COUNT_FIELDS, INVALID_IDS_KEPT
from relay.controller.common.redis_run import ask_run_id, run_id_of
from relay.core import codec
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, LEGACY_JOB_PREFIX, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.backfill import COPY_BATCH, READ_BATCH
from relay.core.pipelined_connection import PipelinedConnection

COPY = "c"  # a legacy record that can be placed: its new key and index entry are known
INVALID = "i"  # not a hash, no valid workspace_id, or a job id that cannot be part of a key
NOT_A_HASH = b"T"
LEGACY_JOB_PREFIX_BYTES = LEGACY_JOB_PREFIX.encode()


@dataclass(slots=True)
class Item:
    kind: str
    key: bytes
    job_id: str
    workspace_id: str  # '' unless valid
    ws_mark: bytes  # what the read saw: '=' + value, '-' absent, 'T' not a hash
    enq_mark: bytes
    member: str


@dataclass(slots=True)
class Batch:
    cursor_from: str
    cursor_to: str
    items: list[Item]
    #: Legacy keys of other workspaces (and, with a filter, unplaceable ones) passed over.
    filtered: int
    #: Keys SCAN returned that this batch handles or passes over (after de-duplication and the skip set).
    examined: int
    #: Keys SCAN returned at all, for sizing the next step.
    returned: int
    #: max_keys was reached inside this SCAN step (True) or exactly at its end.
    cut: bool = False
    limit_reached: bool = False
    #: The keys of this SCAN step handled so far (for a continuation after a cut).
    done_keys: list[bytes] = field(default_factory=list)
    #: Keys of this SCAN step skipped because the backfill this one continues handled them.
    skipped_keys: list[bytes] = field(default_factory=list)
    #: The Redis run (INFO server run_id) that answered the SCAN step: the cursors are its cursors.
    run_id: str = ""
    #: COPY_BATCH's keys and arguments for the items (``BatchCopier.plan``), built while the previous
    #: batch is copied so that the next call leaves at once.
    plan: _Plan | None = None

    @property
    def last(self) -> bool:
        return self.cursor_to == "0" or self.limit_reached


@dataclass(slots=True)
class CopyReply:
    status: str  # OK | STALE | FENCED
    outcomes: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    control: str = ""
    rate_limit_now: float | None = None
    batch_size_now: int | None = None
    #: How long the script ran, by Redis' clock (None when it did not say).
    script_seconds: float | None = None


class BatchReader:
    def __init__(
        self,
        redis: Redis,
        workspace_filter: str = "",
        keys: KeyLayout = KEYS,
        pipelined: PipelinedConnection | None = None,
    ):
        self._redis = redis
        # READ_BATCH carries a SCAN step's keys: packed in C on the pipelined connection when there is one.
        self._lua = LuaScripts(redis, pipelined)
        self._filter = workspace_filter
        self._keys = keys
        self._workspaces: dict[bytes, str | None] = {}

    async def read(
        self, cursor: str, count: int, skip: frozenset[bytes], limit: int | None, run_id: str | None = None
    ) -> Batch:
        """One SCAN step from ``cursor``; at most ``limit`` keys are handled (the rest is cut off). The step
        is taken to be answered by Redis run ``run_id`` when given, else Redis is asked."""
        if run_id is None:
            # One pipeline on one connection: a restart between the two answers breaks the call (retried).
            pipe = self._redis.pipeline(transaction=False)
            ask_run_id(pipe)
            pipe.scan(int(cursor), match=LEGACY_JOB_PATTERN, count=count)
            info, step = await pipe.execute(raise_on_error=False)
            if isinstance(step, Exception):
                raise step
            run_id = run_id_of(info)
        else:
            step = await self._redis.scan(int(cursor), match=LEGACY_JOB_PATTERN, count=count)
        next_cursor, raw_keys = step
        seen: set[bytes] = set()
        keys: list[bytes] = []
        skipped: list[bytes] = []
        for key in raw_keys:
            if key in seen:
                continue  # SCAN may return a key twice: count it once per step
            seen.add(key)
            (skipped if key in skip else keys).append(key)
        batch = Batch(
            str(cursor),
            str(int(next_cursor)),
            [],
            0,
            len(keys),
            len(raw_keys),
            skipped_keys=skipped,
            run_id=run_id,
        )
        await self._classify(batch, keys, limit)
        return batch

    async def run_id(self) -> str:
        """The Redis run answering now."""
        pipe = self._redis.pipeline(transaction=False)
        ask_run_id(pipe)
        (info,) = await pipe.execute(raise_on_error=False)
        return run_id_of(info)

    async def reread(self, batch: Batch) -> Batch:
        """The same keys read again (the copy found one changed since the read)."""
        keys = batch.done_keys
        again = Batch(
            batch.cursor_from,
            batch.cursor_to,
            [],
            0,
            batch.examined,
            batch.returned,
            skipped_keys=batch.skipped_keys,
            run_id=batch.run_id,
        )
        await self._classify(again, keys, None)
        again.cut, again.limit_reached = batch.cut, batch.limit_reached
        return again

    async def _classify(self, batch: Batch, keys: Sequence[bytes], limit: int | None) -> None:
        if not keys:
            batch.limit_reached = limit is not None and limit <= 0
            return
        reply = await self._lua.call_ro(READ_BATCH, list(keys))
        for n, key in enumerate(keys):
            if limit is not None and len(batch.items) >= limit:
                batch.cut = True
                break
            batch.done_keys.append(key)
            item = self._item(key, reply[2 * n], reply[2 * n + 1])
            if item is None:
                batch.filtered += 1
            else:
                batch.items.append(item)
        if limit is not None and len(batch.items) >= limit:
            batch.limit_reached = True
        batch.examined = len(batch.done_keys)
        batch.items = _grouped(batch.items)

    def _item(self, key: bytes, ws_raw: bytes | int | None, enq_raw: bytes | int | None) -> Item | None:
        """The key as a batch item, or None when a workspace filter passes over it."""
        job_id = KeyLayout.job_id_of_legacy(key.decode("utf-8", "replace"))
        if isinstance(ws_raw, int) or isinstance(enq_raw, int):  # READ_BATCH's mark of a key not a hash
            return None if self._filter else Item(INVALID, key, job_id, "", NOT_A_HASH, NOT_A_HASH, "")
        ws = self._workspace(ws_raw)
        if self._filter and ws != self._filter:
            return None
        enq_mark = _mark(enq_raw)
        if ws is None or not is_job_id(job_id):
            return Item(INVALID, key, job_id, "", _mark(ws_raw), enq_mark, "")
        enq = enq_raw.decode("utf-8", "replace") if enq_raw is not None else None
        return Item(COPY, key, job_id, ws, _mark(ws_raw), enq_mark, codec.index_member(job_id, enq))

    def _workspace(self, raw: bytes | None) -> str | None:
        """The workspace id a record names, when valid; a batch holds few distinct ones, so remember them."""
        if raw is None:
            return None
        if raw not in self._workspaces:
            text = raw.decode("utf-8", "replace")
            if len(self._workspaces) >= 10_000:
                self._workspaces.clear()
            self._workspaces[raw] = text if is_workspace_id(text) else None
        return self._workspaces[raw]


@dataclass(slots=True)
class _Plan:
    """The part of COPY_BATCH's keys and arguments that depends on the batch's items alone."""

    workspace_keys: list[str | bytes]
    workspace_args: list[str | bytes]
    item_keys: list[str | bytes]
    item_args: list[str | bytes]
    workspaces: int
    invalid: int


class BatchCopier:
    """Calls ``COPY_BATCH`` for one batch: executing (with the checkpoint) or as a read-only dry run."""

    def __init__(self, redis: Redis, keys: KeyLayout = KEYS):
        self._redis = redis
        self._lua = LuaScripts(redis)
        self._keys = keys

    def plan(self, batch: Batch) -> _Plan:
        """The keys and arguments of ``batch``'s items (kept on the batch), for a batch whose items are
        grouped (see ``_grouped``)."""
        if batch.plan is not None:
            return batch.plan
        k = self._keys
        workspaces: dict[str, int] = {}
        invalid = 0
        item_keys: list[str | bytes] = []
        item_args: list[str | bytes] = []
        for item in batch.items:
            if item.kind == COPY:
                workspaces[item.workspace_id] = workspaces.get(item.workspace_id, 0) + 1
                item_keys += [item.key, k.new_job(item.workspace_id, item.job_id)]
                item_args += [item.member, item.enq_mark]
            else:
                invalid += 1
                item_keys.append(item.key)
                item_args += [item.key[len(LEGACY_JOB_PREFIX_BYTES) :], item.ws_mark]
        workspace_keys: list[str | bytes] = [k.job_index(ws) for ws in workspaces]
        workspace_keys += [k.job_index_late(ws) for ws in workspaces]
        workspace_args: list[str | bytes] = []
        for ws, count in workspaces.items():
            workspace_args += [ws, str(count)]
        batch.plan = _Plan(workspace_keys, workspace_args, item_keys, item_args, len(workspaces), invalid)
        return batch.plan

    def _arguments(
        self,
        batch: Batch,
        backfill_id: str,
        dry: bool,
        token: str,
        batches_before: int,
        checkpoint: dict[str, str],
    ) -> tuple[list[str | bytes], list[str | bytes]]:
        """COPY_BATCH's keys and arguments, for a batch whose items are grouped (see ``_grouped``)."""
        k = self._keys
        plan = self.plan(batch)
        keys: list[str | bytes] = [k.backfill(backfill_id), k.backfill_invalid(backfill_id)]
        keys += plan.workspace_keys
        keys += plan.item_keys
        args: list[str | bytes] = [
            "1" if dry else "0",
            token,
            str(batches_before),
            str(INVALID_IDS_KEPT),
            str(batch.filtered),
            str(len(checkpoint)),
            str(plan.workspaces),
            str(plan.invalid),
        ]
        for name, value in checkpoint.items():
            args += [name, value]
        args += plan.workspace_args
        args += plan.item_args
        return keys, args

    async def copy(
        self, batch: Batch, backfill_id: str, token: str, batches_before: int, checkpoint: dict[str, str]
    ) -> CopyReply:
        keys, args = self._arguments(batch, backfill_id, False, token, batches_before, checkpoint)
        return _parse(await self._lua.call(COPY_BATCH, keys, args), executing=True)

    def stream(self) -> CopyStream:
        """A connection of its own to pipeline ``send`` on."""
        return CopyStream(self._redis, self._lua)

    async def send(
        self,
        stream: CopyStream,
        batch: Batch,
        backfill_id: str,
        token: str,
        batches_before: int,
        checkpoint: dict[str, str],
    ) -> None:
        """``copy`` without waiting for its reply: ``answer`` reads it (replies come in send order)."""
        keys, args = self._arguments(batch, backfill_id, False, token, batches_before, checkpoint)
        await stream.send(COPY_BATCH, keys, args)

    async def answer(self, stream: CopyStream, batch: Batch) -> CopyReply:
        """The reply of ``batch``'s ``send``, the oldest one ``stream`` has not answered yet."""
        return _parse(await stream.reply(), executing=True)

    async def decide(self, batch: Batch, backfill_id: str) -> CopyReply:
        """What ``copy`` would do, read-only."""
        if not batch.items:
            return CopyReply("OK")
        keys, args = self._arguments(batch, backfill_id, True, "", 0, {})
        return _parse(await self._lua.call_ro(COPY_BATCH, keys, args), executing=False)


def _grouped(items: list[Item]) -> list[Item]:
    """Copy candidates grouped by workspace (the first seen first), then the items that cannot be placed:
    the order COPY_BATCH takes them in and answers for them."""
    groups: dict[str, list[Item]] = {}
    others: list[Item] = []
    for item in items:
        if item.kind == COPY:
            groups.setdefault(item.workspace_id, []).append(item)
        else:
            others.append(item)
    return [item for group in groups.values() for item in group] + others


def _mark(value: bytes | None) -> bytes:
    """What the read saw, in the form the script compares byte for byte."""
    return b"-" if value is None else b"=" + value


def _parse(reply: list[object], executing: bool) -> CopyReply:
    status = _text(reply[0])
    if status != "OK":
        return CopyReply(status)
    out = CopyReply("OK", _text(reply[1]))
    values = list(reply[2:])
    if len(values) > (len(COUNT_FIELDS) + 3 if executing else 0):  # the script's own time, last
        out.script_seconds = int(_text(values.pop())) / 1e6
    if executing:
        out.counts = {name: int(_text(values[n]) or 0) for n, name in enumerate(COUNT_FIELDS)}
        control, rate, batch = values[len(COUNT_FIELDS) : len(COUNT_FIELDS) + 3]
        out.control = _text(control)
        out.rate_limit_now = float(_text(rate)) if rate else None
        out.batch_size_now = int(_text(batch)) if batch else None
    return out


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
