"""One backfill batch across two stores, step by step: a batch replayed after a crash between the
per-workspace writes and the checkpoint is counted once (also when its replay's SCAN step holds fewer
keys), and a legacy record changed without a new rev during the copy is copied again."""

from __future__ import annotations

from relay.controller.backfill.batch import BatchReader
from relay.controller.backfill.split_batch import SplitBatchCopier
from relay.core.keys import KEYS
from relay.core.stores import Stores
from tests.backfill_support import WORKSPACES, seed_clean
from tests.topologies.split_support import record

BACKFILL = "bf-split-batch"


async def _state(split) -> None:
    await split.new.hset(KEYS.backfill(BACKFILL), mapping={"token": "t", "batches": "0", "state": "RUNNING"})


def _letters(reply) -> str:
    return "".join(sorted(reply.outcomes))


async def test_a_batch_replayed_after_a_crash_is_counted_once(split):
    await seed_clean(split.legacy, 60)
    await _state(split)
    stores = Stores(split.new, split.legacy)
    reader, copier = BatchReader(split.legacy), SplitBatchCopier(stores)
    batch = await reader.read("0", 1000, frozenset(), None)
    assert batch.last and len(batch.items) == 60
    # The first attempt wrote every workspace's share, then died before the checkpoint.
    planned, outcomes = await copier._read(batch)
    await copier._copy_workspaces(planned, outcomes, BACKFILL, "0", dry=False)
    assert set(outcomes) == {"m"}
    # The replay holds only some of those keys (another SCAN count), then the rest comes next.
    first = await reader.read("0", 1000, frozenset(), 25)
    reply = await copier.copy(first, BACKFILL, "t", 0, {"cursor": first.cursor_to})
    assert reply.status == "OK" and reply.outcomes == "m" * 25, reply
    rest = await reader.reread(first)
    rest.items = [item for item in batch.items if item.key not in set(first.done_keys)]
    reply = await copier.copy(rest, BACKFILL, "t", 1, {"cursor": "0"})
    assert reply.status == "OK" and reply.outcomes == "m" * 35, reply
    assert reply.counts["migrated"] == 60 and reply.counts["skipped_exists"] == 0
    assert reply.counts["scanned"] == 60
    # A batch replayed once more after its checkpoint is fenced, as COPY_BATCH is.
    assert (await copier.copy(rest, BACKFILL, "t", 1, {})).status == "FENCED"


async def test_a_legacy_record_changed_without_a_rev_during_the_copy_is_copied_again(split):
    [job_id] = await seed_clean(split.legacy, 1, workspaces=["ws-a"])
    await _state(split)
    copier = SplitBatchCopier(Stores(split.new, split.legacy))
    batch = await BatchReader(split.legacy).read("0", 100, frozenset(), None)
    copy_workspaces = copier._copy_workspaces

    async def then_the_old_system_writes(*args, **kwargs):
        written = await copy_workspaces(*args, **kwargs)
        await split.legacy.hset(KEYS.legacy_job(job_id), "status", "completed")  # no rev bump
        return written

    copier._copy_workspaces = then_the_old_system_writes  # type: ignore[method-assign]
    reply = await copier.copy(batch, BACKFILL, "t", 0, {"cursor": "0"})
    assert reply.status == "OK" and reply.outcomes == "m"
    new = await record(split.new, KEYS.new_job("ws-a", job_id))
    assert new == await record(split.legacy, KEYS.legacy_job(job_id))
    assert new["status"] == "completed"


async def test_the_copy_never_overwrites_a_newer_record_written_between_read_and_write(split):
    [job_id] = await seed_clean(split.legacy, 1, workspaces=[WORKSPACES[0]])
    await _state(split)
    copier = SplitBatchCopier(Stores(split.new, split.legacy))
    batch = await BatchReader(split.legacy).read("0", 100, frozenset(), None)
    read = copier._read

    async def then_jobservice_writes(b):
        got = await read(b)
        # An UpdateJobStatus in DUAL_WRITE: the legacy copy first, then the new one caught up, rev 1.
        newer = {**(await record(split.legacy, KEYS.legacy_job(job_id))), "status": "running", "rev": "1"}
        await split.legacy.hset(KEYS.legacy_job(job_id), mapping=newer)
        await split.new.hset(KEYS.new_job(WORKSPACES[0], job_id), mapping=newer)
        return got

    copier._read = then_jobservice_writes  # type: ignore[method-assign]
    reply = await copier.copy(batch, BACKFILL, "t", 0, {"cursor": "0"})
    assert reply.status == "OK" and reply.outcomes == "n"
    new = await record(split.new, KEYS.new_job(WORKSPACES[0], job_id))
    assert new["status"] == "running" and new == await record(split.legacy, KEYS.legacy_job(job_id))
