"""Two COPY_BATCH in flight on one connection: a batch sent behind one that did not apply is refused by the
script and sent again after it, so the counts and the checkpoint stay exact whatever happens to the first.
"""

from __future__ import annotations

from redis.asyncio import Redis

from relay.controller.backfill.batch import BatchCopier, BatchReader
from relay.controller.backfill.continuation import Continuation
from relay.controller.backfill.in_flight import InFlight
from relay.controller.backfill.pacing import Pacing
from relay.controller.backfill.state import BackfillOptions, BackfillRecord
from relay.controller.backfill.store import BackfillStore
from relay.core import codec
from relay.core.keys import KEYS
from tests.backfill_support import seed_clean, wait_until

BACKFILL = "bf-in-flight"


async def two_batches_in_flight(redis: Redis) -> tuple[InFlight, BatchReader, BackfillRecord]:
    await seed_clean(redis, 300)
    await redis.hset(KEYS.backfill(BACKFILL), mapping={"token": "t", "batches": "0"})
    record = BackfillRecord.new(BACKFILL, BackfillOptions(), "me", "t")
    reader, copier = BatchReader(redis), BatchCopier(redis)
    copies = InFlight(
        record,
        reader,
        copier,
        BackfillStore(redis),
        Pacing(record, redis, 0.0),
        Continuation(record),
        copier.stream(),
        depth=2,
    )
    return copies, reader, record


async def stored(redis: Redis) -> dict[str, int | str]:
    values = await redis.hmget(KEYS.backfill(BACKFILL), "batches", "scanned", "migrated", "cursor")
    batches, scanned, migrated, cursor = (v.decode() if v is not None else "0" for v in values)
    return {"batches": int(batches), "scanned": int(scanned), "migrated": int(migrated), "cursor": cursor}


async def applied(redis: Redis, batches: int) -> bool:
    return (await stored(redis))["batches"] >= batches


async def test_a_batch_behind_a_stale_one_is_refused_and_sent_again_after_it(redis: Redis) -> None:
    copies, reader, _ = await two_batches_in_flight(redis)
    first = await reader.read("0", 100, frozenset(), None)
    second = await reader.read(first.cursor_to, 100, frozenset(), None)
    assert first.items and second.items and not second.last
    # The old system rewrites a record of the first batch after its read: that copy answers STALE.
    changed = first.items[0]
    await redis.hset(changed.key, "enqueued_at", "2025-01-02T03:04:05.000006+00:00")

    await copies.send(first)
    await copies.send(second)
    done_first, reply_first, _ = await copies.next()
    done_second, reply_second, _ = await copies.next()
    await copies.stop()

    assert reply_first.status == reply_second.status == "OK"
    assert reply_first.counts["scanned"] == len(first.items)
    assert reply_second.counts["scanned"] == len(first.items) + len(second.items)
    assert await stored(redis) == {
        "batches": 2,
        "scanned": len(first.items) + len(second.items),
        "migrated": len(first.items) + len(second.items),
        "cursor": second.cursor_to,
    }
    # The first batch was read again: its copy is indexed by the record as it is now.
    member = codec.index_member(changed.job_id, "2025-01-02T03:04:05.000006+00:00")
    assert [i.member for i in done_first.items if i.job_id == changed.job_id] == [member]
    assert await redis.zscore(KEYS.job_index(changed.workspace_id), member) is not None
    assert done_second is second


async def test_two_batches_whose_replies_a_dropped_connection_lost_are_counted_once(redis: Redis) -> None:
    copies, reader, _ = await two_batches_in_flight(redis)
    first = await reader.read("0", 100, frozenset(), None)
    second = await reader.read(first.cursor_to, 100, frozenset(), None)
    await copies.send(first)
    await copies.send(second)
    await wait_until(lambda: applied(redis, 2))  # both scripts ran; their replies are not read yet
    await copies._stream.drop()  # type: ignore[union-attr]  # the replies are lost with the connection

    _, reply_first, _ = await copies.next()
    _, reply_second, _ = await copies.next()
    await copies.stop()

    # Sent again, each is refused (the state holds more batches than it expects) and found applied.
    assert reply_first.status == reply_second.status == "OK"
    total = len(first.items) + len(second.items)
    assert reply_second.counts["scanned"] == total
    want = {"batches": 2, "scanned": total, "migrated": total, "cursor": second.cursor_to}
    assert await stored(redis) == want


async def test_after_a_batch_sent_again_the_copies_go_back_to_two_in_flight(redis: Redis) -> None:
    copies, reader, _ = await two_batches_in_flight(redis)
    await redis.script_flush()  # a fresh Redis: the first COPY_BATCH on the stream answers NOSCRIPT
    batches = [await reader.read("0", 60, frozenset(), None)]
    for _ in range(3):
        batches.append(await reader.read(batches[-1].cursor_to, 60, frozenset(), None))
    assert all(b.items for b in batches) and not batches[-1].last

    await copies.send(batches[0])
    await copies.send(batches[1])
    assert copies.full
    assert (await copies.next())[1].status == "OK"  # NOSCRIPT, then sent again (loading the script)
    assert copies.full, "the batch behind it is sent again too, alone: nothing goes beside it"
    assert (await copies.next())[1].status == "OK"

    await copies.send(batches[2])
    assert not copies.full, "back on the stream: a second batch may go beside it"
    await copies.send(batches[3])
    replies = [(await copies.next())[1] for _ in range(2)]
    await copies.stop()
    assert [r.status for r in replies] == ["OK", "OK"]
    total = sum(len(b.items) for b in batches)
    assert await stored(redis) == {
        "batches": 4,
        "scanned": total,
        "migrated": total,
        "cursor": batches[3].cursor_to,
    }
