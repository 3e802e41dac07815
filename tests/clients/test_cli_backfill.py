"""relayctl backfill: the old script's options and summary block, JSON events, the documented exit codes,
and Ctrl-C detaching without stopping the backfill."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from click.testing import CliRunner

from harness.ports import free_port
from relay.clients import cli_backfill
from relay.clients.relayctl import cli
from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from tests.backfill_support import ROOT, seed_clean, seed_messy, wait_until


async def relayctl(relay, keys, *args: str, target: str | None = None):  # type: ignore[no-untyped-def]
    """Run relayctl in a thread (it runs its own event loop) against the test server."""
    argv = ["--target", target or relay.target, "--api-key", keys.raw["admin"], *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv, catch_exceptions=False)


async def test_start_execute_shows_the_old_summary_block_and_exits_0(relay, redis, keys):
    seed = await seed_messy(redis, clean=500)

    result = await relayctl(relay, keys, "backfill", "start", "--execute", "--batch", "200")

    assert result.exit_code == 0, result.output
    # Each line is 20 columns wide, the count right-aligned, as the old script printed them.
    block = (
        f"Scanned:{seed.total:>12}\n"
        f"Migrated:{len(seed.migrated):>11}\n"
        f"Skipped:{1 + 1 + len(seed.invalid):>12}\n"
        f"Errors:{1:>13}\n"
    )
    assert block in result.output
    assert "  exists:            1" in result.output
    assert "  invalid:           8" in result.output
    assert "Invalid job ids: " in result.output
    assert "completed" in result.output


async def test_a_dry_run_prints_json_events_and_writes_nothing(relay, redis, keys):
    await seed_clean(redis, 300)
    before = await redis.execute_command("DEBUG", "DIGEST")

    result = await relayctl(relay, keys, "backfill", "start", "--dry-run", "--json", "--workspace", "ws-a")

    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert events[0]["kind"] == "BACKFILL_EVENT_KIND_STARTED"
    assert events[-1]["kind"] == "BACKFILL_EVENT_KIND_COMPLETED"
    assert events[-1]["backfill"]["progress"]["migrated"] == "100"  # int64 as JSON text
    assert await redis.execute_command("DEBUG", "DIGEST") == before


async def test_exit_codes_for_refused_cancelled_unreachable_and_usage(relay, redis, keys):
    await seed_clean(redis, 2000)
    stream = relay.controller.StartBackfill(
        bpb.StartBackfillRequest(rate_limit=300), metadata=keys.md("admin")
    )
    backfill_id = (await stream.read()).backfill_id

    refused = await relayctl(relay, keys, "backfill", "start", "--execute", "--rps", "5")
    assert refused.exit_code == 3
    assert backfill_id in refused.output
    status = await relayctl(relay, keys, "backfill", "status")
    assert status.exit_code == 0 and f"Backfill {backfill_id}: RUNNING" in status.output
    changed = await relayctl(relay, keys, "backfill", "set", "--rps", "250", "--batch", "50")
    assert changed.exit_code == 0 and "250 keys/s, batch 50" in changed.output
    cancelled = await relayctl(relay, keys, "backfill", "cancel", backfill_id)
    assert cancelled.exit_code == 0 and "CANCELLED" in cancelled.output
    watched = await relayctl(relay, keys, "backfill", "watch", backfill_id)
    assert watched.exit_code == 6
    assert "Scanned:" in watched.output
    unknown = await relayctl(relay, keys, "backfill", "pause", "bf-unknown")
    assert unknown.exit_code == 3
    unreachable = await relayctl(
        relay, keys, "backfill", "start", "--execute", target=f"127.0.0.1:{free_port()}"
    )
    assert unreachable.exit_code == 5
    usage = await relayctl(relay, keys, "backfill", "start")
    assert usage.exit_code == 2 and "--dry-run or --execute" in usage.output


def test_the_summary_block_is_the_old_scripts():
    done = bpb.BackfillEvent(
        kind=bpb.BACKFILL_EVENT_KIND_COMPLETED,
        backfill=bpb.Backfill(
            state=bpb.BACKFILL_STATE_COMPLETED,
            options=bpb.BackfillOptions(dry_run=True),
            progress=bpb.BackfillProgress(scanned=20000, migrated=20000),
        ),
    )

    text = cli_backfill.summary(done)

    # Verbatim from the v1.0.0 release notes.
    assert (
        "\nScanned:       20000\nMigrated:      20000\nSkipped:           0\nErrors:            0\n" in text
    )
    assert "Dry run: counted, nothing was written." in text


async def test_a_failed_backfill_exits_1():
    failed = bpb.BackfillEvent(
        backfill_id="bf-x",
        kind=bpb.BACKFILL_EVENT_KIND_FAILED,
        reason="ResponseError: OOM",
        backfill=bpb.Backfill(backfill_id="bf-x", state=bpb.BACKFILL_STATE_FAILED),
    )

    async def stream():  # type: ignore[no-untyped-def]
        yield failed

    assert await asyncio.to_thread(lambda: asyncio.run(cli_backfill.follow(stream(), as_json=False))) == 1


async def test_ctrl_c_detaches_and_the_backfill_keeps_running(relay, redis, keys):
    await seed_clean(redis, 3000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        # As in a terminal: a process started in the background by a shell inherits SIGINT ignored.
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from relay.clients.relayctl import main; main()",
        *("--target", relay.target, "--api-key", keys.raw["admin"]),
        *("backfill", "start", "--execute", "--rps", "500"),
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_CREDENTIALS": "/nonexistent"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def running() -> bool:
            current = await redis.get(KEYS.backfill_current)
            return (
                bool(current) and int(await redis.hget(KEYS.backfill(current.decode()), "scanned") or 0) > 0
            )

        await wait_until(running, within=20)
        # Ctrl-C once relayctl follows the stream: its first line says the backfill started.
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert first.startswith(b"started"), first
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    backfill_id = (await redis.get(KEYS.backfill_current)).decode()
    assert proc.returncode == 130, err
    assert f"relayctl backfill watch {backfill_id}" in err.decode()
    state = await relay.controller.GetBackfill(
        bpb.GetBackfillRequest(backfill_id=backfill_id), metadata=keys.md("admin")
    )
    assert state.state == bpb.BACKFILL_STATE_RUNNING
    await relay.controller.CancelBackfill(
        bpb.CancelBackfillRequest(backfill_id=backfill_id), metadata=keys.md("admin")
    )
