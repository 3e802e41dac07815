"""The copies of one backfill's batches, in the order of the scan, with up to ``DEPTH`` in flight
(``DEPTH_WITH_BUDGET`` under a script budget).

Executing on one Redis, each batch's COPY_BATCH goes out on a connection of its own (``CopyStream``) as
soon as it is read, up to ``DEPTH`` ahead of the oldest reply: Redis runs the next script as soon as the
previous one ends instead of waiting for this process between the two. The order is what keeps the counts
exact. Each script runs only while the state holds the number of batches it expects and writes nothing
otherwise, so a batch sent behind one that did not apply (STALE, an error reply, a dropped connection) is
refused, and is sent again after it, one at a time; the checkpoint moves past a batch only in the script
that applied it. A dry run, or a copy across two stores (several scripts per batch), has one batch in
flight, copied in a task of its own.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from dataclasses import dataclass

from redis.exceptions import ResponseError

from relay.controller.backfill.batch import Batch, BatchCopier, BatchReader, CopyReply
from relay.controller.backfill.continuation import Continuation
from relay.controller.backfill.copy_stream import CopyStream
from relay.controller.backfill.pacing import Pacing
from relay.controller.backfill.retry import retrying, stop_task
from relay.controller.backfill.split_batch import SplitBatchCopier
from relay.controller.backfill.state import COUNT_FIELDS, BackfillRecord
from relay.controller.backfill.store import BackfillStore, Fenced
from relay.core import codec
from relay.core.rpc_errors import TRANSIENT_STORE_ERRORS

#: Batches whose scripts are sent before the oldest one's reply is read. Two keep Redis busy in the
#: steady state (the next script waits in Redis while this process reads the reply of the one before);
#: four also cover this process' pauses (a batch's read-ahead, a progress event), which measured 0.58 ->
#: 0.67 of the hand-written copy. With a script budget only two: scripts queued on one connection may run
#: back to back, and a live command waits behind all of them, which is what the budget bounds.
DEPTH = 4
DEPTH_WITH_BUDGET = 2
#: Times a batch is read again when the copy finds it changed since the read.
STALE_RETRIES = 5


@dataclass(slots=True)
class _Sent:
    batch: Batch
    before: int  # batches recorded before it: what its script expects the state to say
    scanned_before: int
    started: float
    #: Its script is on the stream, and its reply the stream's next.
    piped: bool = False
    task: asyncio.Task[tuple[Batch, CopyReply]] | None = None


class InFlight:
    def __init__(
        self,
        record: BackfillRecord,
        reader: BatchReader,
        copier: BatchCopier | SplitBatchCopier,
        store: BackfillStore,
        pacing: Pacing,
        continuation: Continuation,
        stream: CopyStream | None,
        depth: int = DEPTH,
    ):
        self._record = record
        self._depth = depth
        self._stream = stream if not record.options.dry_run and isinstance(copier, BatchCopier) else None
        self._reader, self._copier, self._store = reader, copier, store
        self._pacing, self._continuation = pacing, continuation
        self._sent: deque[_Sent] = deque()
        self._before = record.batches
        self._scanned = record.counts.scanned
        #: The batch sent last (it may be answered already).
        self.last_sent: Batch | None = None

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def full(self) -> bool:
        # A batch sent again (not on the stream) is copied alone: nothing is sent beside it, so that once
        # it is applied the copies go back to the stream. (Were the next batch sent while it waits, every
        # later one would queue behind an unpiped one, and a single NOSCRIPT at the start of a backfill on
        # a fresh Redis left the whole backfill copying one batch at a time.)
        piping = self._stream is not None and all(s.piped for s in self._sent)
        return len(self._sent) >= (self._depth if piping else 1)

    def restart(self) -> None:
        """The next batch sent follows what the record says (at the start, and after a new pass)."""
        self._before, self._scanned = self._record.batches, self._record.counts.scanned
        self.last_sent = None

    async def send(self, batch: Batch) -> None:
        sent = _Sent(batch, self._before, self._scanned, time.monotonic())
        self._before += 1
        self._scanned += len(batch.items)
        self.last_sent = batch
        if self._stream is None:
            sent.task = asyncio.create_task(self._apply(batch, sent.before, sent.scanned_before))
        elif all(s.piped for s in self._sent):  # never ahead of a batch that is sent again
            rec = self._record
            fields = self._checkpoint(batch, sent.scanned_before)
            try:
                await self._copier.send(self._stream, batch, rec.backfill_id, rec.token, sent.before, fields)
                sent.piped = True
            except TRANSIENT_STORE_ERRORS:
                await self._unpipe()  # the connection is gone, and with it the replies of those before
        self._sent.append(sent)

    async def next(self) -> tuple[Batch, CopyReply, float]:
        """The oldest batch sent, applied, with its reply and the seconds from its send to its reply."""
        sent = self._sent.popleft()
        if sent.task is not None:
            batch, reply = await sent.task
        elif sent.piped:
            batch, reply = await self._answer(sent)
        else:
            batch, reply = await self._apply(sent.batch, sent.before, sent.scanned_before)
        if not self._sent:  # the next batch follows what this one really held (it may have been read again)
            self._scanned = sent.scanned_before + len(batch.items)
        return batch, reply, time.monotonic() - sent.started

    async def stop(self) -> None:
        for sent in self._sent:
            await stop_task(sent.task)
        self._sent.clear()
        if self._stream is not None:
            await self._stream.drop()

    async def _answer(self, sent: _Sent) -> tuple[Batch, CopyReply]:
        assert self._stream is not None and isinstance(self._copier, BatchCopier)
        try:
            reply: CopyReply | None = await self._copier.answer(self._stream, sent.batch)
        except (ResponseError, *TRANSIENT_STORE_ERRORS):  # NOSCRIPT, a dropped connection, ...
            reply = None
        if reply is not None and reply.status == "OK":
            return sent.batch, reply
        # It did not apply, or whether it did is unknown: the batches sent behind it were refused.
        await self._unpipe()
        stale = reply if reply is not None and reply.status == "STALE" else None
        return await self._apply(sent.batch, sent.before, sent.scanned_before, stale)

    async def _unpipe(self) -> None:
        """Every batch in flight is sent again, one at a time; the stream's refused replies are read."""
        for sent in self._sent:
            sent.piped = False
        stream = self._stream
        while stream is not None and stream.pending:
            try:
                await stream.reply()
            except ResponseError:
                continue
            except TRANSIENT_STORE_ERRORS:
                break  # the stream dropped its connection, and what it still owed

    async def _apply(
        self, batch: Batch, before: int, scanned_before: int, reply: CopyReply | None = None
    ) -> tuple[Batch, CopyReply]:
        """Copy ``batch`` (``reply``: a STALE answer it already had), reading it again while it changes."""
        rec = self._record
        for _ in range(STALE_RETRIES + 1):
            if reply is None and rec.options.dry_run:
                reply = await retrying(functools.partial(self._copier.decide, batch, rec.backfill_id))
            elif reply is None:
                reply = await self._copy(batch, before, scanned_before)
            if reply.status == "OK":
                return batch, reply
            if reply.status == "FENCED":
                raise Fenced("another controller took the backfill over")
            batch = await retrying(functools.partial(self._reader.reread, batch))
            reply = None
        raise RuntimeError(f"the legacy records of a batch kept changing during {STALE_RETRIES + 1} copies")

    async def _copy(self, batch: Batch, before: int, scanned_before: int) -> CopyReply:
        rec = self._record
        fields = self._checkpoint(batch, scanned_before)
        reply = await retrying(lambda: self._copier.copy(batch, rec.backfill_id, rec.token, before, fields))
        if reply.status != "FENCED":
            return reply
        # Sent again after a dropped connection, the batch may already have gone through (and, sent on the
        # stream, the one behind it too): then the state holds our token and more batches than ``before``.
        # Take the counts from there.
        stored = await retrying(lambda: self._store.load(rec.backfill_id))
        if stored is None or stored.token != rec.token or stored.batches <= before:
            return reply
        rec.invalid_ids = stored.invalid_ids
        counts = {name: getattr(stored.counts, name) for name in COUNT_FIELDS}
        return CopyReply("OK", "", counts, stored.control, stored.rate_limit_now, stored.batch_size_now)

    def _checkpoint(self, batch: Batch, scanned_before: int) -> dict[str, str]:
        scanned_after = scanned_before + len(batch.items)
        fields = {
            "cursor": batch.cursor_to,
            "update_time": codec.now_iso(),
            "rate": repr(self._pacing.rate_with(scanned_after)),
            "total_estimate": str(self._pacing.estimate(batch.cursor_to, scanned_after)),
        }
        if batch.last:
            fields.update(self._continuation.end_fields(batch))
        return fields
