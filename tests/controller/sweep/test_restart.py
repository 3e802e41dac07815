"""A sweep (cleanup, reverse copy) across a Redis restart: a SCAN cursor does not survive one, so a run
whose scan straddles a restart cannot know what it covered. It fails with that reason instead of
completing (and recording its migration fact), and its resume sweeps again from the start."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.controller.sweep.loop import RESTARTED
from relay.controller.sweep.reverse_copier import ReverseCopier
from relay.core.keys import KEYS
from tests.backfill_support import WORKSPACES, legacy_record
from tests.controller.backfill.test_restart import aof_redis, restart  # noqa: F401 (the fixture)

NEW = 3000


async def test_a_redis_restart_mid_scan_fails_the_reverse_copy_and_resume_covers_every_key(aof_redis):  # noqa: F811
    redis = Redis.from_url(aof_redis.url)
    try:
        pipe = redis.pipeline(transaction=False)
        for n in range(NEW):
            job_id, ws = str(uuid.uuid4()), WORKSPACES[n % len(WORKSPACES)]
            pipe.hset(KEYS.new_job(ws, job_id), mapping={**legacy_record(job_id, ws, n), "rev": "1"})
        await pipe.execute()
        sweep = ReverseCopier(redis)
        first = await sweep.prepare(
            dry_run=False, workspace_id="", rate_limit=0, batch_size=200, max_keys=0, resume=False
        )
        events: list[tuple[str, str, str]] = []
        try:
            async for kind, state in sweep.loop(first):
                events.append((kind, state.state, state.reason))
                if kind == "progress" and state.scanned >= NEW // 3 and ("restarted", "", "") not in events:
                    # The generator waits at this yield: its next SCAN step runs on the restarted Redis.
                    await asyncio.to_thread(restart, aof_redis)
                    events.append(("restarted", "", ""))
        except RedisConnectionError:
            # The step met a pooled connection the restart closed: the run stops there, never complete.
            events.append(("failed", "connection lost", ""))
        assert events[-1] in {("failed", "failed", RESTARTED), ("failed", "connection lost", "")}, events[-3:]
        assert await sweep.last() is None  # nothing recorded as done

        again = await sweep.prepare(
            dry_run=False, workspace_id="", rate_limit=0, batch_size=200, max_keys=0, resume=True
        )
        # The resume begins again at the first phase's cursor 0: in prepare (the run saw the restart) or
        # in run (it died on a dropped connection first, and finds the run_id changed).
        scanned_before = again.scanned
        final = [kind async for kind, _ in sweep.loop(again)]
        assert final[-1] == "completed"
        assert again.scanned - scanned_before == NEW  # the pass from the start saw every key once
    finally:
        await redis.aclose()
