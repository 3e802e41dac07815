"""relayctl cleanup and reverse-copy: dry run by default, a summary, exit codes."""

from __future__ import annotations

from relay.core.keys import KEYS
from tests.controller.stages.test_rollback import new_record
from tests.migration_testkit import relayctl


async def test_cleanup_is_a_dry_run_unless_asked_and_reverse_copy_reports_its_counts(relay, keys, redis):
    await new_record(redis, "ws-a", "job-1")
    admin = keys.raw["admin"]
    code, out, _ = await relayctl(relay.target, admin, "reverse-copy")
    assert code == 0 and "(dry run): completed" in out and "Would copy:" in out
    assert not await redis.exists(KEYS.legacy_job("job-1"))
    code, out, _ = await relayctl(relay.target, admin, "reverse-copy", "--execute", "--workspace", "ws-a")
    assert code == 0 and "Copied:" in out and await redis.exists(KEYS.legacy_job("job-1"))
    code, out, _ = await relayctl(relay.target, admin, "cleanup")
    assert code == 0 and "Would delete:" in out and "an execute would be refused now" in out
    code, _, err = await relayctl(relay.target, admin, "cleanup", "--execute")
    assert code == 3 and "[STAGE_NOT_NEW_ONLY]" in err
    assert await redis.exists(KEYS.legacy_job("job-1"))
