"""The backfill's script budget: batches sized by how long their scripts run, and a latency brake that
watches those scripts. Latency is injected by wrapping the copy call (it waits, and reports the wait as
script time); no test asserts a speed."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from relay.controller.backfill.batch import BatchCopier, BatchReader
from relay.controller.backfill.in_flight import DEPTH
from relay.controller.common.script_budget import FIRST_BATCH, WINDOW, ScriptBudget, timed_script
from relay.core.config import Settings
from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from tests.backfill_support import events_of, seed_clean


def admin(keys):  # type: ignore[no-untyped-def]
    return keys.md("admin")


# --- the budget on its own ----------------------------------------------------------------------
def test_the_budget_sizes_a_batch_to_fill_most_of_it() -> None:
    budget = ScriptBudget(0.002)
    assert budget.size(1000) == FIRST_BATCH  # nothing measured yet: a small first batch
    for _ in range(30):  # a script costs 50 µs plus 10 µs per key
        n = budget.size(1000)
        budget.observe(n, 50e-6 + n * 10e-6)
    n = budget.size(1000)
    assert 0.0015 <= 50e-6 + n * 10e-6 <= 0.002


def test_slower_scripts_shrink_the_batches_and_one_outlier_does_not() -> None:
    budget = ScriptBudget(0.002)
    budget.observe(100, 0.001)
    assert budget.size(1000) == 160
    budget.observe(160, 0.016)  # one script ten times slower per key (Redis was descheduled, say)
    assert budget.size(1000) > 16
    for _ in range(WINDOW):  # every script slower: the budget follows within a few batches
        budget.observe(16, 0.0016)
    assert budget.size(1000) == 16
    budget.observe(16, 0.0002)  # growth is gradual
    assert budget.size(1000) <= 33


def test_no_budget_keeps_the_operators_batch_size_and_the_cap_always_holds() -> None:
    off = ScriptBudget(0.0)
    off.observe(1000, 0.5)
    assert off.size(1000) == 1000
    on = ScriptBudget(1.0)
    on.observe(10, 0.0001)
    assert on.size(5) == 5 and on.size(0) == 1


def test_the_longest_script_is_kept_for_the_brake_until_taken() -> None:
    budget = ScriptBudget(0.002)
    budget.observe(10, 0.003)
    budget.observe(10, 0.001)
    budget.observe(0, 0.004)  # a batch of nothing still kept Redis busy
    assert budget.take_longest() == 0.004
    assert budget.take_longest() == 0.0


def test_the_budget_is_a_setting_in_milliseconds() -> None:
    assert Settings().backfill_script_budget_seconds == 0.002
    assert Settings.from_env({"RELAY_BACKFILL_SCRIPT_BUDGET_MS": "5"}).backfill_script_budget_seconds == 0.005
    assert Settings.from_env({"RELAY_BACKFILL_SCRIPT_BUDGET_MS": "0"}).backfill_script_budget_seconds == 0


# --- the script reports its own time ------------------------------------------------------------
async def test_copy_batch_reports_how_long_it_ran_executing_and_dry(redis):  # type: ignore[no-untyped-def]
    await seed_clean(redis, 200)
    reader, copier = BatchReader(redis), BatchCopier(redis)
    await redis.hset(KEYS.backfill("bf-t"), mapping={"token": "t", "batches": "0"})
    batch = await reader.read("0", 500, frozenset(), None)
    assert batch.items

    dry = await copier.decide(batch, "bf-t")
    done = await copier.copy(batch, "bf-t", "t", 0, {"cursor": batch.cursor_to})

    for reply in (dry, done):
        assert reply.status == "OK"
        assert reply.script_seconds is not None and 0 <= reply.script_seconds < 5
    assert done.counts["migrated"] == len(batch.items)
    assert done.batch_size_now is None and done.rate_limit_now is None


# --- in a running backfill ------------------------------------------------------------------------
def slowed_copies(
    monkeypatch: pytest.MonkeyPatch, per_key_seconds: float, sizes: list[int]
) -> dict[str, float]:
    """Every COPY_BATCH call takes ``per_key_seconds`` longer per key, and says so as its script time;
    returns the knob (``["per_key"]``) that changes it. Both ways of calling it are slowed: ``copy``
    (one call) and ``answer`` (the reply of one pipelined on a stream)."""
    slow = {"per_key": per_key_seconds}

    async def slowed(batch, reply):  # type: ignore[no-untyped-def]
        extra = slow["per_key"] * len(batch.items)
        if extra:
            await asyncio.sleep(extra)
            if reply.script_seconds is not None:
                reply.script_seconds += extra
        sizes.append(len(batch.items))
        return reply

    copy, answer = BatchCopier.copy, BatchCopier.answer

    async def slow_copy(self, batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        return await slowed(batch, await copy(self, batch, *args, **kwargs))

    async def slow_answer(self, stream, batch):  # type: ignore[no-untyped-def]
        return await slowed(batch, await answer(self, stream, batch))

    monkeypatch.setattr(BatchCopier, "copy", slow_copy)
    monkeypatch.setattr(BatchCopier, "answer", slow_answer)
    return slow


@pytest.mark.parametrize("per_key_us", [0, 200])
async def test_batches_shrink_when_the_copy_script_takes_longer(  # type: ignore[no-untyped-def]
    start_relay, redis, keys, monkeypatch, per_key_us
):
    relay = await start_relay(backfill_script_budget_seconds=0.002, backfill_latency_ceiling_seconds=0.0)
    await seed_clean(redis, 2000)
    sizes: list[int] = []
    slowed_copies(monkeypatch, per_key_us / 1e6, sizes)

    events = await events_of(
        relay.controller.StartBackfill(bpb.StartBackfillRequest(batch_size=500), metadata=admin(keys))
    )

    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    assert events[-1].backfill.progress.migrated == 2000
    assert sum(sizes) == 2000
    # The first batches were read before any script was measured: DEPTH are being copied, one more is sent
    # as the first reply arrives (before it is recorded), two wait in the read-ahead queue, one is read.
    steady = sizes[DEPTH + 4 :]
    if per_key_us:
        # 200 µs per key: about 8 keys fill 80% of 2 ms (SCAN may return a few keys more than asked)
        assert max(steady) <= 20, sizes
    else:
        assert statistics.median(steady) > 20, sizes


async def test_long_scripts_make_the_brake_engage_though_ping_is_fast(  # type: ignore[no-untyped-def]
    start_relay, redis, keys, monkeypatch
):
    relay = await start_relay(backfill_script_budget_seconds=0.0, backfill_latency_ceiling_seconds=0.005)
    await seed_clean(redis, 3000)
    sizes: list[int] = []
    slow = slowed_copies(monkeypatch, 0.0001, sizes)  # 100 keys: 10 ms of script, twice the ceiling

    events: list[bpb.BackfillEvent] = []
    stream = relay.controller.StartBackfill(bpb.StartBackfillRequest(batch_size=100), metadata=admin(keys))
    async for event in stream:
        events.append(event)
        if event.kind == bpb.BACKFILL_EVENT_KIND_THROTTLED:
            slow["per_key"] = 0.0  # the scripts are short again: the backfill speeds up and finishes

    throttled = [e for e in events if e.kind == bpb.BACKFILL_EVENT_KIND_THROTTLED]
    assert throttled, [e.kind for e in events]
    assert "5 ms latency ceiling" in throttled[0].reason
    assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED
    assert events[-1].backfill.progress.scanned == 3000


async def test_a_sweep_script_sizes_the_next_batch_by_the_run_time_it_reports_not_the_clients_wait() -> None:
    budget = ScriptBudget(0.002)

    async def script() -> list[object]:
        await asyncio.sleep(0.05)  # the client's busy event loop took 50 ms to see the reply ...
        return [b"deleted"] * 100 + [10_000]  # ... of a script that ran 10 ms: 100 µs per key

    assert await timed_script(budget, 100, script()) == [b"deleted"] * 100
    assert 10 <= budget.size(1000) <= 16  # 80% of 2 ms at 100 µs per key (at 500 µs, the wait's, it is 3)
    assert ScriptBudget(0.0).size(1000) == 1000
