"""A verification across a Redis restart: a SCAN cursor does not survive one (Redis seeds its hash function
anew at every start), so a verification whose scan straddles a restart cannot know what it covered. It
fails with that reason instead of reporting a result, and its resume verifies again from the start."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from relay.controller.verify.verifier import RESTARTED, Verifier
from tests.backfill_support import seed_clean
from tests.controller.backfill.test_restart import aof_redis, restart  # noqa: F401 (the fixture)

LEGACY = 3000


async def test_a_redis_restart_mid_scan_fails_the_verification_and_resume_covers_every_key(aof_redis):  # noqa: F811
    redis = Redis.from_url(aof_redis.url)
    try:
        await seed_clean(redis, LEGACY)
        run = Verifier(redis).run("", rate_limit=0, batch_size=200, resume=False)
        events: list[tuple[str, str, str]] = []
        async for kind, state in run:
            events.append((kind, state.state, state.reason))
            if (
                kind == "progress"
                and state.scanned_legacy >= LEGACY // 3
                and ("restarted", "", "") not in events
            ):
                # The generator waits at this yield: its next SCAN step runs on the restarted Redis.
                await asyncio.to_thread(restart, aof_redis)
                events.append(("restarted", "", ""))
        assert events[-1] == ("failed", "failed", RESTARTED), events[-3:]
        assert ("completed", "completed", "") not in events

        final = None
        async for kind, state in Verifier(redis).run("", rate_limit=0, batch_size=200, resume=True):
            final = (kind, state)
        assert final is not None and final[0] == "completed"
        assert final[1].scanned_legacy == LEGACY  # the pass from the start saw every legacy key once
    finally:
        await redis.aclose()
