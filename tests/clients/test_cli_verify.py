"""relayctl verify: a table of the per-workspace diff, and exit 1 when it is not clean."""

from __future__ import annotations

import json

from tests.controller.verify.test_verification import copy_to_new
from tests.job_testkit import write_legacy_job
from tests.migration_testkit import relayctl


async def test_verify_shows_the_diff_and_fails_when_not_clean(relay, keys, redis):
    for _ in range(3):
        await copy_to_new(redis, await write_legacy_job(redis, "ws-a"))
    missing = await write_legacy_job(redis, "ws-b")
    code, out, _ = await relayctl(relay.target, keys.raw["admin"], "verify", "--batch", "2")
    assert code == 1
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert [cell.strip() for cell in rows["ws-a"].split("│")[2:7]] == ["3", "0", "0", "0", "0"]
    assert [cell.strip() for cell in rows["ws-b"].split("│")[2:7]] == ["0", "1", "0", "0", "0"]
    assert f"ws-b examples: {missing}" in out and "result: NOT CLEAN" in out
    code, out, _ = await relayctl(relay.target, keys.raw["admin"], "verify", "--last", "--json")
    assert code == 1 and json.loads(out)["workspaces"][1]["missing_in_new"] == "1"
