"""The batches of one backfill, scanned and read ahead while the current one is copied, so Redis never
waits for this process. What they read may change before their copy: COPY_BATCH re-checks it inside Redis.

Which Redis run answers (INFO server, in one pipeline with the SCAN step) is asked at the first step, at
least every ``RUN_ID_EVERY_SECONDS``, after a failed read and once more after the step that ends the scan;
the steps between are taken to be the same run's. Asked at every step, INFO (its reply built by Redis and
parsed here) cost more than a small batch's SCAN. A restart is so found at most that long late: the steps
taken meanwhile are copied as any others (a copy is right whatever cursor found its key) and the scan
begins again from "0" as a new pass, which counts every key once; a pass that ends has been confirmed on
one run after its last step.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable

from relay.controller.backfill.batch import Batch, BatchReader
from relay.controller.backfill.continuation import Continuation
from relay.controller.backfill.pacing import Pacing
from relay.controller.backfill.retry import retrying, stop_task
from relay.controller.backfill.state import BackfillRecord

#: A SCAN step asks for at most this many times the batch size, when few keys match.
MAX_SCAN_FACTOR = 20
#: Batches scanned and read ahead of the one being copied, as many as the copies in flight
#: (``relay.controller.backfill.in_flight``: fewer under a script budget, whose reads live commands wait
#: behind too).
READ_AHEAD = 4
#: The Redis run is asked again after this long (see above).
RUN_ID_EVERY_SECONDS = 0.5


class ReadAhead:
    def __init__(
        self,
        record: BackfillRecord,
        reader: BatchReader,
        pacing: Pacing,
        continuation: Continuation,
        plan: Callable[[Batch], object] | None = None,
        depth: int = READ_AHEAD,
    ):
        self._plan = plan
        self._depth = depth
        self._record = record
        self._reader = reader
        self._pacing = pacing
        self._continuation = continuation
        self._match_ratio = 1.0
        self._queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(maxsize=depth)
        self._task: asyncio.Task[None] | None = None
        self._run_id = ""
        self._asked = -math.inf  # when the Redis run was last asked

    def start(self) -> None:
        """Read on from the record's cursor (dropping whatever an earlier start read)."""
        self._asked = -math.inf
        self._queue = asyncio.Queue(maxsize=self._depth)
        self._task = asyncio.create_task(self._run(self._queue))

    async def get(self) -> Batch | BaseException:
        """The next batch, or the error that ended the reading."""
        return await self._queue.get()

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self, out: asyncio.Queue[Batch | BaseException]) -> None:
        rec = self._record
        cursor, scanned = rec.cursor, rec.counts.scanned
        try:
            while True:
                batch = await retrying(
                    functools.partial(self._read, cursor, scanned, self._continuation.skip_at(cursor))
                )
                await out.put(batch)
                if batch.last:
                    return
                cursor, scanned = batch.cursor_to, scanned + len(batch.items)
        except Exception as exc:
            await out.put(exc)

    async def _read(self, cursor: str, scanned_before: int, skip: frozenset[bytes] | None) -> Batch:
        max_keys = self._record.options.max_keys
        limit = max(0, max_keys - scanned_before) if max_keys else None
        size = self._pacing.batch_size()
        count = max(1, min(int(size / self._match_ratio), size * MAX_SCAN_FACTOR))
        if limit is not None:
            count = max(1, min(count, int(limit / self._match_ratio) + 1))
        now = time.monotonic()
        known = self._run_id if now - self._asked < RUN_ID_EVERY_SECONDS else None
        try:
            batch = await self._reader.read(cursor, count, skip or frozenset(), limit, known)
            if known is not None and batch.last:
                batch.run_id = await self._reader.run_id()  # the pass ends: on the run it began on?
        except BaseException:
            self._asked = -math.inf  # a reconnect may follow: the next step asks
            raise
        if known is None:
            self._run_id, self._asked = batch.run_id, now
        if self._plan is not None:
            self._plan(batch)  # the copy's arguments, built now, while Redis runs the previous batch's copy
        if batch.cursor_to != "0":
            # The share of keys that are legacy records, so the next step asks for about a batch of them.
            share = max(batch.returned / count, 0.01)
            self._match_ratio = min(1.0, 0.5 * self._match_ratio + 0.5 * share)
        return batch
