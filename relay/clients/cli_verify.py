"""relayctl verify: compare the legacy layout with the new one, with a progress bar and a diff table.

Exits 0 when the verification is clean, 1 when it found differences or did not complete.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from relay.clients.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    call,
    enum_names,
    json_option,
    pace_options,
    print_json,
    run,
)
from relay.clients.cli_progress import RunEvents, follow_run
from relay.v1 import verification_pb2 as pb

STATE_NAMES = enum_names(pb.VerificationState, lower=True, unset=False)


def diff_table(result: pb.Verification) -> Table:
    table = Table(title=f"Verification {result.verification_id}", title_justify="left")
    for heading in ("workspace", "matching", "missing", "differing", "only new", "unlisted", "legacy behind"):
        table.add_column(heading, justify="left" if heading == "workspace" else "right")
    table.add_column("differing fields")
    for diff in result.workspaces:
        fields = ", ".join(f"{name}={count}" for name, count in sorted(diff.differing_fields.items()))
        table.add_row(
            diff.workspace_id,
            *(
                f"{n:,}"
                for n in (
                    diff.matching,
                    diff.missing_in_new,
                    diff.differing,
                    diff.only_in_new,
                    diff.unlisted,
                    diff.legacy_behind,
                )
            ),
            fields or "-",
        )
    return table


def show(result: pb.Verification, console: Console) -> None:
    if result.workspaces:
        console.print(diff_table(result))
    else:
        console.print(f"Verification {result.verification_id}: no job records found")
    state = STATE_NAMES.get(result.state, "unknown")
    console.print(
        f"scanned: {result.scanned_legacy:,} legacy keys, {result.scanned_new:,} new keys; "
        f"invalid legacy keys: {result.invalid_legacy:,}"
    )
    if result.reason:
        console.print(f"reason: {result.reason}")
    if result.outbox_pending:
        console.print(
            f"outbox_pending: {result.outbox_pending:,} writes still owed to one of the two stores "
            "(the controllers' repairer settles them within seconds)"
        )
    for diff in result.workspaces:
        if diff.sample_job_ids:
            console.print(f"{diff.workspace_id} examples: {', '.join(diff.sample_job_ids[:5])}")
    verdict = "CLEAN" if result.clean else ("NOT CLEAN" if state == "completed" else state.upper())
    console.print(f"result: {verdict}")


def _progress(result: pb.Verification) -> tuple[float, str]:
    scanned = result.scanned_legacy + result.scanned_new
    return result.percent_done, f"{result.phase} keys, {scanned:,} scanned" if result.phase != "done" else ""


EVENTS: RunEvents[pb.VerificationEvent, pb.Verification] = RunEvents(
    lambda event: event.verification, _progress, pb.Verification
)


@click.command(
    "verify", help="Compare legacy job records with the new layout (like VDiff) and show the diff."
)
@click.option("--workspace", default="", help="Only this workspace; default: all.")
@pace_options
@click.option("--resume", is_flag=True, help="Continue the last unfinished verification.")
@click.option("--last", is_flag=True, help="Show the last stored verification; run nothing.")
@json_option("Print the final result as JSON.")
@run
async def verify(
    ctx: click.Context, workspace: str, rps: float, batch: int, resume: bool, last: bool, as_json: bool
) -> int:
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if last:
        result = await call(ctx, "GetVerification", pb.GetVerificationRequest())
    else:
        request = pb.VerifyMigrationRequest(
            workspace_id=workspace, rate_limit=rps, batch_size=batch, resume=resume
        )
        result = await follow_run(ctx, "VerifyMigration", request, "verify", EVENTS)
    if as_json:
        print_json(result)
    else:
        show(result, console)
    return EXIT_OK if result.clean else EXIT_FAILED
