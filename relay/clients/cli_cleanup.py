"""relayctl cleanup | reverse-copy: remove the legacy layout, or bring it back up to date for a rollback.

Both are dry runs unless --execute is given. Exit 0 when the run completed (or stopped at --max-keys),
1 when it failed or stopped for another reason (the reason is printed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def exit_code(result: pb.Cleanup, max_keys: int) -> int:
    if result.state == pb.CLEANUP_STATE_COMPLETED:
        return EXIT_OK
    if result.state == pb.CLEANUP_STATE_INTERRUPTED and max_keys and result.scanned >= max_keys:
        return EXIT_OK
    return EXIT_FAILED


@dataclass(frozen=True)
class Sweep:
    """One of the two sweep commands, cleanup and reverse-copy: alike but for what is in this table.

    The request is the RPC's ``<method>Request``; ``before_pace`` and ``after_pace`` are the command's own
    options (named as the request fields they fill), around the shared ones in ``--help`` order."""

    name: str
    method: str
    help: str
    verb: str
    done: str
    resume_help: str
    before_pace: tuple[Decorator, ...] = ()
    after_pace: tuple[Decorator, ...] = ()

    @property
    def what(self) -> str:
        return self.name.replace("-", " ").capitalize()


CLEANUP = Sweep(
    "cleanup",
    "CleanupLegacy",
    "Delete legacy job keys whose new copy is equal or newer (NEW_ONLY only).",
    "delete",
    "Deleted",
    "Continue the last unfinished cleanup from its checkpoint.",
    after_pace=(
        click.option(
            "--max-keys", type=int, default=0, help="Stop after this many keys; --resume continues."
        ),
    ),
)
REVERSE_COPY = Sweep(
    "reverse-copy",
    "ReverseCopy",
    "Copy new-layout records back to legacy where it is missing or older.",
    "copy",
    "Copied",
    "Continue the last unfinished reverse copy.",
    before_pace=(
        click.option("--workspace", "workspace_id", default="", help="Only this workspace; default: all."),
    ),
)


def sweep_command(kind: Sweep) -> click.Command:
    """The relayctl command of a sweep: options, the run followed under a bar, the summary, the exit code."""

    @run
    async def command(
        ctx: click.Context, dry_run: bool, rps: float, batch: int, resume: bool, as_json: bool, **own: Any
    ) -> int:
        request = getattr(pb, f"{kind.method}Request")(
            dry_run=dry_run and not resume,  # --resume executes: only an execute run leaves a checkpoint
            rate_limit=rps,
            batch_size=batch,
            resume=resume,
            **own,
        )
        result = await follow_run(ctx, kind.method, request, kind.what.lower(), EVENTS)
        show(
            result, as_json, lambda r: summary(r, kind.what, f"Would {kind.verb}" if r.dry_run else kind.done)
        )
        return exit_code(result, own.get("max_keys", 0))

    decorators = [
        click.command(kind.name, help=kind.help),
        click.option(
            "--dry-run/--execute", "dry_run", default=True, help=f"Count only (default), or {kind.verb}."
        ),
        *kind.before_pace,
        pace_options,
        *kind.after_pace,
        click.option("--resume", is_flag=True, help=kind.resume_help),
        json_option("Print the final state as JSON."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command  # type: ignore[return-value]  # click.command made it a Command


cleanup = sweep_command(CLEANUP)
reverse_copy = sweep_command(REVERSE_COPY)
