"""Backfill events to the streams that watch them.

In the controller that runs a backfill, an :class:`EventHub` fans each event out to every watching
stream. A controller that does not run it (WatchBackfill on another process) follows the state its
runner keeps in Redis, read every half second, and turns the changes into the same events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from relay.controller.backfill.state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    PAUSED,
    RUNNING,
    BackfillRecord,
)
from relay.v1 import backfill_pb2 as pb

TERMINAL_KINDS = frozenset(
    {pb.BACKFILL_EVENT_KIND_COMPLETED, pb.BACKFILL_EVENT_KIND_FAILED, pb.BACKFILL_EVENT_KIND_CANCELLED}
)
KIND_OF_STATE = {
    COMPLETED: pb.BACKFILL_EVENT_KIND_COMPLETED,
    FAILED: pb.BACKFILL_EVENT_KIND_FAILED,
    CANCELLED: pb.BACKFILL_EVENT_KIND_CANCELLED,
    PAUSED: pb.BACKFILL_EVENT_KIND_PAUSED,
}
#: Events a slow stream may fall behind by; past that its oldest progress events are dropped.
QUEUE_LIMIT = 256
POLL_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class BackfillEvent:
    """What a backfill's streams are told: a kind, and the record as it stood then (a copy of its own,
    since the runner goes on changing the record it holds). ``rpcs`` turns it into protobuf."""

    kind: pb.BackfillEventKind.ValueType
    record: BackfillRecord
    reason: str = ""
    #: The state to show where it is not the record's own (a run that stopped here unfinished).
    state: str | None = None
    time: float = 0.0


def make_event(
    record: BackfillRecord, kind: pb.BackfillEventKind.ValueType, reason: str = "", state: str | None = None
) -> BackfillEvent:
    return BackfillEvent(kind, record.copy(), reason, state, time.time())


def snapshot_event(record: BackfillRecord, state: str | None = None) -> BackfillEvent:
    """The event a stream that attaches starts with: where the backfill stands now."""
    shown = state or record.state
    return make_event(record, KIND_OF_STATE.get(shown, pb.BACKFILL_EVENT_KIND_PROGRESS), record.reason, state)


class Subscription:
    """One stream's view of a hub: its events up to a terminal one, or until the hub detaches."""

    _DETACH = object()

    def __init__(self, hub: EventHub, first: BackfillEvent | None):
        self._hub = hub
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.detached = False
        if first is not None:
            self._queue.put_nowait(first)

    def offer(self, item: object) -> None:
        if self._queue.qsize() >= QUEUE_LIMIT:
            # Drop the oldest event: a reader this far behind wants the latest state, not the history.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[BackfillEvent]:
        try:
            while True:
                item = await self._queue.get()
                if item is self._DETACH:
                    self.detached = True
                    return
                assert isinstance(item, BackfillEvent)
                yield item
                if item.kind in TERMINAL_KINDS:
                    return
        finally:
            self._hub.unsubscribe(self)


class EventHub:
    """Fans one backfill's events out to the streams of this process that watch it."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.closed = False

    def subscribe(self, first: BackfillEvent | None = None) -> Subscription:
        sub = Subscription(self, first)
        if self.closed:
            sub.offer(Subscription._DETACH)
        else:
            self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)

    def publish(self, event: BackfillEvent) -> None:
        for sub in list(self._subscriptions):
            sub.offer(event)
        if event.kind in TERMINAL_KINDS:
            self.closed = True
            self._subscriptions.clear()

    def detach(self) -> None:
        """The run stopped here without finishing (shutdown, lost lease): watchers follow Redis instead."""
        self.closed = True
        for sub in self._subscriptions:
            sub.offer(Subscription._DETACH)
        self._subscriptions.clear()


LoadView = Callable[[], Awaitable[tuple[BackfillRecord, str] | None]]


async def follow_redis(load: LoadView, skip_first: bool = False) -> AsyncIterator[BackfillEvent]:
    """Events made from the state in Redis, polled; ``load`` returns (record, state as shown) or None.

    The shown state differs from the stored one when the runner's lease expired (ORPHANED).
    """
    previous: tuple[BackfillRecord, str] | None = None
    last_sent = 0.0
    while True:
        current = await load()
        if current is None:
            return
        record, shown = current
        events: list[BackfillEvent] = []
        if previous is None:
            if not skip_first or record.state in FINISHED:
                events.append(snapshot_event(record, shown))
        else:
            events = _changes(previous, current)
            counts_moved = record.counts != previous[0].counts
            if not events and (counts_moved or time.monotonic() - last_sent >= PROGRESS_EVERY_SECONDS):
                events.append(make_event(record, pb.BACKFILL_EVENT_KIND_PROGRESS, "", shown))
        if record.state in FINISHED and not any(e.kind in TERMINAL_KINDS for e in events):
            events.append(snapshot_event(record, shown))
        for event in events:
            yield event
            last_sent = time.monotonic()
        if record.state in FINISHED:
            return
        previous = current
        await asyncio.sleep(POLL_SECONDS)


def _changes(
    previous: tuple[BackfillRecord, str], current: tuple[BackfillRecord, str]
) -> list[BackfillEvent]:
    (old, old_shown), (new, shown) = previous, current
    events: list[BackfillEvent] = []
    if new.throttle_seq != old.throttle_seq and new.throttle_reason:
        events.append(make_event(new, pb.BACKFILL_EVENT_KIND_THROTTLED, new.throttle_reason, shown))
    if shown != old_shown:
        if shown in KIND_OF_STATE:
            events.append(make_event(new, KIND_OF_STATE[shown], new.reason, shown))
        elif shown == RUNNING:
            events.append(make_event(new, pb.BACKFILL_EVENT_KIND_RESUMED, new.reason, shown))
        else:
            events.append(make_event(new, pb.BACKFILL_EVENT_KIND_PROGRESS, new.reason, shown))
    elif new.token != old.token and shown == RUNNING:
        events.append(make_event(new, pb.BACKFILL_EVENT_KIND_RESUMED, new.reason, shown))
    return events
