"""relayctl cleanup | reverse-copy: remove the legacy layout, or bring it back up to date for a rollback.

Both are dry runs unless --execute is given. Exit 0 when the run completed (or stopped at --max-keys),
1 when it failed or stopped for another reason (the reason is printed).
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from relay.clients.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    Decorator,
    enum_names,
    json_option,
    pace_options,
    run,
    show,
)
from relay.clients.cli_progress import RunEvents, follow_run
from relay.v1 import cleanup_pb2 as pb

# The proto's INTERRUPTED is the sweep's STOPPED (max_keys, a refusal, the caller went away): the word
# an operator who set --max-keys expects, and the console's state colour.
STATE_NAMES = {
    **enum_names(pb.CleanupState, lower=True, unset=False),
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


def _progress(result: pb.Cleanup) -> tuple[float, str]:
    phase = f"{result.phase}: " if result.phase != "done" else ""
    return (
        result.percent_done,
        f"{phase}{result.scanned:,} scanned, {result.done:,} done, {result.rate:,.0f} keys/s",
    )


EVENTS: RunEvents[pb.CleanupEvent, pb.Cleanup] = RunEvents(lambda event: event.cleanup, _progress, pb.Cleanup)


@dataclass(frozen=True)
class Sweep:
    """What tells cleanup and reverse-copy apart: the RPC, the words of the bar and the summary."""

    method: str
    title: str
    what: str
    done: str
    would_do: str


CLEANUP = Sweep("CleanupLegacy", "cleanup", "Cleanup", "Deleted", "Would delete")
REVERSE_COPY = Sweep("ReverseCopy", "reverse copy", "Reverse copy", "Copied", "Would copy")


def exit_code(result: pb.Cleanup, max_keys: int) -> int:
    if result.state == pb.CLEANUP_STATE_COMPLETED:
        return EXIT_OK
    if result.state == pb.CLEANUP_STATE_INTERRUPTED and max_keys and result.scanned >= max_keys:
        return EXIT_OK
    return EXIT_FAILED


async def sweep(
    ctx: click.Context,
    kind: Sweep,
    request: pb.CleanupLegacyRequest | pb.ReverseCopyRequest,
    as_json: bool,
    max_keys: int = 0,
) -> int:
    """Run a cleanup or reverse copy to its end, then its summary (or JSON) and exit code."""
    result = await follow_run(ctx, kind.method, request, kind.title, EVENTS)
    show(result, as_json, lambda r: summary(r, kind.what, kind.would_do if r.dry_run else kind.done))
    return exit_code(result, max_keys)


def dry_run_option(verb: str) -> Decorator:
    return click.option(
        "--dry-run/--execute", "dry_run", default=True, help=f"Count only (default), or {verb}."
    )


@click.command("cleanup", help="Delete legacy job keys whose new copy is equal or newer (NEW_ONLY only).")
@dry_run_option("delete")
@pace_options
@click.option("--max-keys", type=int, default=0, help="Stop after this many keys; --resume continues.")
@click.option("--resume", is_flag=True, help="Continue the last unfinished cleanup from its checkpoint.")
@json_option("Print the final state as JSON.")
@run
async def cleanup(
    ctx: click.Context, dry_run: bool, rps: float, batch: int, max_keys: int, resume: bool, as_json: bool
) -> int:
    # --resume executes: only an execute run leaves a checkpoint to resume.
    request = pb.CleanupLegacyRequest(
        dry_run=dry_run and not resume, rate_limit=rps, batch_size=batch, max_keys=max_keys, resume=resume
    )
    return await sweep(ctx, CLEANUP, request, as_json, max_keys)


@click.command("reverse-copy", help="Copy new-layout records back to legacy where it is missing or older.")
@dry_run_option("copy")
@click.option("--workspace", default="", help="Only this workspace; default: all.")
@pace_options
@click.option("--resume", is_flag=True, help="Continue the last unfinished reverse copy.")
@json_option("Print the final state as JSON.")
@run
async def reverse_copy(
    ctx: click.Context, dry_run: bool, workspace: str, rps: float, batch: int, resume: bool, as_json: bool
) -> int:
    request = pb.ReverseCopyRequest(
        dry_run=dry_run and not resume,
        workspace_id=workspace,
        rate_limit=rps,
        batch_size=batch,
        resume=resume,
    )
    return await sweep(ctx, REVERSE_COPY, request, as_json)
