"""relayctl cleanup | reverse-copy: remove the legacy layout, or bring it back up to date for a rollback.

Both are dry runs unless --execute is given. Exit 0 when the run completed (or stopped at --max-keys),
1 when it failed or stopped for another reason (the reason is printed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import click

from relay.clients.cli_common import EXIT_FAILED, EXIT_OK, connection, print_json, run
from relay.clients.cli_progress import follow_with_bar
from relay.v1 import cleanup_pb2 as pb

STATE_NAMES = {
    pb.CLEANUP_STATE_RUNNING: "running",
    pb.CLEANUP_STATE_COMPLETED: "completed",
    pb.CLEANUP_STATE_FAILED: "failed",
    pb.CLEANUP_STATE_INTERRUPTED: "stopped",
}


def summary(result: pb.Cleanup, what: str, done_label: str) -> str:
    mode = "dry run" if result.dry_run else "execute"
    lines = [f"{what} {result.cleanup_id} ({mode}): {STATE_NAMES.get(result.state, 'unknown')}"]
    rows = [("Scanned", result.scanned), (done_label, result.done)]
    if what == "Cleanup":
        rows += [
            ("Kept (new copy missing)", result.kept_missing_new),
            ("Kept (legacy newer)", result.kept_legacy_newer),
            ("Kept (same rev, other data)", result.kept_differing),
            ("Kept (job still pending)", result.kept_pending),
            ("Kept (not a valid job)", result.kept_invalid),
            ("Queue entries removed", result.queue_entries_removed),
            ("Idempotency keys deleted", result.idempotency_deleted),
        ]
    else:
        rows += [
            ("Already equal", result.unchanged),
            ("Kept (legacy newer)", result.kept_legacy_newer),
            ("Kept (same rev, other data)", result.kept_differing),
            ("Kept (legacy key not ours)", result.kept_invalid),
        ]
    rows.append(("Errors", result.errors))
    lines += [f"{label + ':':<29}{value:>10,}" for label, value in rows]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    return "\n".join(lines)


async def follow(events: AsyncIterator[pb.CleanupEvent], title: str) -> pb.Cleanup:
    return await follow_with_bar(events, title, lambda event: event.cleanup, _progress, pb.Cleanup())


def _progress(result: pb.Cleanup) -> tuple[float, str]:
    phase = f"{result.phase}: " if result.phase != "done" else ""
    return (
        result.percent_done,
        f"{phase}{result.scanned:,} scanned, {result.done:,} done, {result.rate:,.0f} keys/s",
    )


def exit_code(result: pb.Cleanup, max_keys: int) -> int:
    if result.state == pb.CLEANUP_STATE_COMPLETED:
        return EXIT_OK
    if result.state == pb.CLEANUP_STATE_INTERRUPTED and max_keys and result.scanned >= max_keys:
        return EXIT_OK
    return EXIT_FAILED


@click.command("cleanup", help="Delete legacy job keys whose new copy is equal or newer (NEW_ONLY only).")
@click.option("--dry-run/--execute", "dry_run", default=True, help="Count only (default), or delete.")
@click.option("--rps", type=float, default=0.0, help="Keys per second; 0: unthrottled.")
@click.option("--batch", type=int, default=1000, help="Keys per SCAN batch.")
@click.option("--max-keys", type=int, default=0, help="Stop after this many keys; --resume continues.")
@click.option("--resume", is_flag=True, help="Continue the last unfinished cleanup from its checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the final state as JSON.")
@click.pass_context
@run
async def cleanup(
    ctx: click.Context, dry_run: bool, rps: float, batch: int, max_keys: int, resume: bool, as_json: bool
) -> int:
    if resume and dry_run:
        dry_run = False  # only an execute run leaves a checkpoint to resume
    conn = connection(ctx)
    request = pb.CleanupLegacyRequest(
        dry_run=dry_run, rate_limit=rps, batch_size=batch, max_keys=max_keys, resume=resume
    )
    async with conn.channel() as channel:
        events = conn.controller(channel).CleanupLegacy(request, metadata=conn.metadata)
        result = await follow(events, "cleanup")
    if as_json:
        print_json(result)
    else:
        click.echo(summary(result, "Cleanup", "Deleted" if not result.dry_run else "Would delete"))
    return exit_code(result, max_keys)


@click.command("reverse-copy", help="Copy new-layout records back to legacy where it is missing or older.")
@click.option("--dry-run/--execute", "dry_run", default=True, help="Count only (default), or copy.")
@click.option("--workspace", default="", help="Only this workspace; default: all.")
@click.option("--rps", type=float, default=0.0, help="Keys per second; 0: unthrottled.")
@click.option("--batch", type=int, default=1000, help="Keys per SCAN batch.")
@click.option("--resume", is_flag=True, help="Continue the last unfinished reverse copy.")
@click.option("--json", "as_json", is_flag=True, help="Print the final state as JSON.")
@click.pass_context
@run
async def reverse_copy(
    ctx: click.Context, dry_run: bool, workspace: str, rps: float, batch: int, resume: bool, as_json: bool
) -> int:
    if resume and dry_run:
        dry_run = False
    conn = connection(ctx)
    request = pb.ReverseCopyRequest(
        dry_run=dry_run, workspace_id=workspace, rate_limit=rps, batch_size=batch, resume=resume
    )
    async with conn.channel() as channel:
        events = conn.controller(channel).ReverseCopy(request, metadata=conn.metadata)
        result = await follow(events, "reverse copy")
    if as_json:
        print_json(result)
    else:
        click.echo(summary(result, "Reverse copy", "Copied" if not result.dry_run else "Would copy"))
    return exit_code(result, 0)
