"""relayctl backfill start | watch | status | pause | resume | cancel | set.

``start`` takes the old backfill script's options and ends with its summary block. The backfill runs in
the controller: Ctrl-C only detaches this terminal, and ``relayctl backfill watch <id>`` re-attaches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import click
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from relay.clients.cli_common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    call,
    connection,
    enum_names,
    json_option,
    run,
    show,
    to_dict,
)
from relay.v1 import backfill_pb2 as pb

EXIT_CODES_HELP = (
    "Exit codes: 0 completed; 1 failed; 6 cancelled; 3 refused (bad option, another backfill running, "
    "unknown id); 4 not allowed (needs a migration:admin key); 5 controller unreachable, or the stream "
    "ended before the backfill did; 130 detached with Ctrl-C (the backfill keeps running)."
)
STATE_NAMES = enum_names(pb.BackfillState)
KIND_NAMES = enum_names(pb.BackfillEventKind)
EXIT_OF_KIND = {
    pb.BACKFILL_EVENT_KIND_COMPLETED: EXIT_OK,
    pb.BACKFILL_EVENT_KIND_FAILED: EXIT_FAILED,
    pb.BACKFILL_EVENT_KIND_CANCELLED: EXIT_CANCELLED,
}
#: Without a terminal (a log file, a pipe), a progress line at most this often.
PLAIN_PROGRESS_SECONDS = 5.0


@click.group("backfill", help="Copy legacy job records to the workspace layout, and drive the copy.")
def backfill() -> None:
    pass


@backfill.command("start", epilog=EXIT_CODES_HELP)
@click.option("--dry-run", "mode", flag_value="dry-run", help="Count what --execute would do; write nothing.")
@click.option("--execute", "mode", flag_value="execute", help="Copy the records.")
@click.option("--workspace", default="", help="Only this workspace's legacy records (default: all).")
@click.option("--rps", type=float, default=0.0, show_default=True, help="Keys per second; 0 is unthrottled.")
@click.option("--batch", type=int, default=0, help="Keys per SCAN batch (default 1000, at most 10000).")
@click.option("--max-keys", type=int, default=0, help="Stop scanning after this many keys; 0 is no limit.")
@json_option("Print one JSON object per event instead.")
@run
async def start(
    ctx: click.Context, mode: str | None, workspace: str, rps: float, batch: int, max_keys: int, as_json: bool
) -> int:
    """Start a backfill and follow it to the end, with a live progress bar and the summary."""
    if mode is None:
        raise click.UsageError("say --dry-run or --execute")
    request = pb.StartBackfillRequest(
        dry_run=mode == "dry-run", workspace_id=workspace, rate_limit=rps, batch_size=batch, max_keys=max_keys
    )
    return await _follow(ctx, "StartBackfill", request, as_json)


@backfill.command("watch", epilog=EXIT_CODES_HELP)
@click.argument("backfill_id", required=False, default="")
@json_option("Print one JSON object per event instead.")
@run
async def watch(ctx: click.Context, backfill_id: str, as_json: bool) -> int:
    """Re-attach to a running or finished backfill (default: the current or latest one)."""
    return await _follow(ctx, "WatchBackfill", pb.WatchBackfillRequest(backfill_id=backfill_id), as_json)


@backfill.command("status", epilog=EXIT_CODES_HELP)
@click.argument("backfill_id", required=False, default="")
@json_option()
@run
async def status(ctx: click.Context, backfill_id: str, as_json: bool) -> int:
    """Show a backfill's state (default: the current or latest one)."""
    show(await call(ctx, "GetBackfill", pb.GetBackfillRequest(backfill_id=backfill_id)), as_json, describe)
    return EXIT_OK


#: The commands that send one control request for a backfill: (name, RPC, request type, help).
CONTROL_COMMANDS = (
    (
        "pause",
        "PauseBackfill",
        pb.PauseBackfillRequest,
        "Pause a backfill after its current batch (it keeps its place).",
    ),
    (
        "resume",
        "ResumeBackfill",
        pb.ResumeBackfillRequest,
        "Resume a paused backfill, or one whose controller died, from its checkpoint.",
    ),
    (
        "cancel",
        "CancelBackfill",
        pb.CancelBackfillRequest,
        "Cancel a backfill after its current batch (what it copied stays).",
    ),
)


def _control_command(name: str, method: str, request_type: type, help_text: str) -> None:
    @run
    async def command(ctx: click.Context, backfill_id: str) -> int:
        state = await _on_backfill(ctx, backfill_id, method, lambda given: request_type(backfill_id=given))
        click.echo(
            f"backfill {state.backfill_id}: {STATE_NAMES[state.state]}"
            + (f" ({state.reason})" if state.reason else "")
        )
        return EXIT_OK

    command.__doc__ = help_text
    backfill.command(name, epilog=EXIT_CODES_HELP)(
        click.argument("backfill_id", required=False, default="")(command)
    )


for _name, _method, _request_type, _help in CONTROL_COMMANDS:
    _control_command(_name, _method, _request_type, _help)


@backfill.command("set", epilog=EXIT_CODES_HELP)
@click.argument("backfill_id", required=False, default="")
@click.option("--rps", type=float, default=None, help="New keys per second; 0 is unthrottled.")
@click.option("--batch", type=int, default=None, help="New keys per batch.")
@run
async def set_options(ctx: click.Context, backfill_id: str, rps: float | None, batch: int | None) -> int:
    """Change the rate or batch size of a running backfill."""
    if rps is None and batch is None:
        raise click.UsageError("say --rps, --batch or both")
    state = await _on_backfill(
        ctx,
        backfill_id,
        "UpdateBackfill",
        lambda given: pb.UpdateBackfillRequest(
            backfill_id=given, rate_limit=rps or 0.0, update_rate_limit=rps is not None, batch_size=batch or 0
        ),
    )
    click.echo(
        f"backfill {state.backfill_id}: {_rate(state.options.rate_limit)}, batch {state.options.batch_size}"
    )
    return EXIT_OK


async def _on_backfill(
    ctx: click.Context, backfill_id: str, method: str, request_of: Callable[[str], Message]
) -> pb.Backfill:
    """Call ``method`` for the backfill given, or (none given) the current or latest one."""
    conn = connection(ctx)
    async with conn.channel() as channel:
        stub = conn.controller(channel)
        if not backfill_id:
            latest = await stub.GetBackfill(pb.GetBackfillRequest(), metadata=conn.metadata)
            backfill_id = latest.backfill_id
        return await getattr(stub, method)(request_of(backfill_id), metadata=conn.metadata)


async def _follow(ctx: click.Context, method: str, request: Message, as_json: bool) -> int:
    conn = connection(ctx)
    async with conn.channel() as channel:
        return await follow(
            getattr(conn.controller(channel), method)(request, metadata=conn.metadata), as_json
        )


# --- following a stream -------------------------------------------------------------------------
async def follow(stream: AsyncIterator[pb.BackfillEvent], as_json: bool) -> int:
    """Show a backfill's events until it ends; the exit code says how it ended."""
    view = JsonView() if as_json else LiveView()
    last: pb.BackfillEvent | None = None
    try:
        async for event in stream:
            last = event
            view.show(event)
    except asyncio.CancelledError:  # Ctrl-C: only this terminal lets go
        view.close()
        which = last.backfill_id if last is not None else ""
        click.echo(
            f"\nDetached; backfill {which or '(if it started)'} keeps running in the controller.\n"
            f"Re-attach with: relayctl backfill watch {which}".rstrip(),
            err=True,
        )
        raise
    view.close()
    if last is None or last.kind not in EXIT_OF_KIND:
        click.echo(
            "the stream ended before the backfill did; re-attach with relayctl backfill watch", err=True
        )
        return EXIT_UNREACHABLE
    if not as_json:
        click.echo(summary(last))
    return EXIT_OF_KIND[last.kind]


class JsonView:
    def show(self, event: pb.BackfillEvent) -> None:
        click.echo(json.dumps(to_dict(event)))

    def close(self) -> None:
        pass


class LiveView:
    """A progress bar with counts, rate, percent and ETA on a terminal; a line every few seconds elsewhere."""

    def __init__(self) -> None:
        self._console = Console()
        self._live = self._console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self._console,
            disable=not self._live,
        )
        self._task: TaskID | None = None
        self._last_line = 0.0

    def show(self, event: pb.BackfillEvent) -> None:
        b = event.backfill
        if self._task is None:
            self._progress.start()
            mode = "dry run" if b.options.dry_run else "backfill"
            self._task = self._progress.add_task(
                f"{mode} {event.backfill_id}", total=100, counts="", rate="", eta=""
            )
        p = b.progress
        counts = (
            f"{p.scanned:,} scanned · {p.migrated:,} migrated · {_skipped(p):,} skipped · {p.errors:,} errors"
        )
        eta = _duration(p.eta.ToTimedelta().total_seconds()) if p.HasField("eta") else "-"
        self._progress.update(
            self._task, completed=p.percent_done, counts=counts, rate=f"{p.rate:,.0f} keys/s", eta=eta
        )
        kind = event.kind
        if kind != pb.BACKFILL_EVENT_KIND_PROGRESS and kind not in EXIT_OF_KIND:
            self._say(f"{KIND_NAMES[kind].lower()}: {event.reason or STATE_NAMES[b.state].lower()}")
        elif not self._live and time.monotonic() - self._last_line >= PLAIN_PROGRESS_SECONDS:
            self._last_line = time.monotonic()
            self._say(f"{p.percent_done:5.1f}%  {counts}  {p.rate:,.0f} keys/s  ETA {eta}")

    def _say(self, text: str) -> None:
        if self._live:
            self._progress.console.print(text)
        else:
            click.echo(text)

    def close(self) -> None:
        self._progress.stop()


def summary(event: pb.BackfillEvent) -> str:
    """The old script's summary block, then the skips by reason and how it ended."""
    b = event.backfill
    p = b.progress
    lines = [
        "",
        f"{'Scanned:':<9}{p.scanned:>11}",
        f"{'Migrated:':<9}{p.migrated:>11}",
        f"{'Skipped:':<9}{_skipped(p):>11}",
        f"{'Errors:':<9}{p.errors:>11}",
        "",
        "Skipped by reason:",
        f"  {'exists:':<10}{p.skipped_exists:>10}   the new copy already holds the same revision",
        f"  {'newer:':<10}{p.skipped_newer:>10}   the new copy is newer, and was kept",
        f"  {'invalid:':<10}{p.skipped_invalid:>10}   not a hash, or no valid workspace_id or job id",
        f"  {'vanished:':<10}{p.skipped_vanished:>10}   deleted between the scan and the copy",
    ]
    if p.filtered_out:
        lines.append(f"Other workspaces passed over: {p.filtered_out}")
    if p.invalid_job_ids:
        shown = ", ".join(p.invalid_job_ids[:10]) + (" ..." if len(p.invalid_job_ids) > 10 else "")
        lines.append(f"Invalid job ids: {shown}")
    if b.options.dry_run:
        lines.append("Dry run: counted, nothing was written.")
    elapsed = ""
    if b.HasField("end_time") and b.HasField("create_time"):
        elapsed = f" in {_duration((b.end_time.ToNanoseconds() - b.create_time.ToNanoseconds()) / 1e9)}"
    lines.append(
        f"Backfill {b.backfill_id} {STATE_NAMES[b.state].lower()}{elapsed}: {event.reason or b.reason}"
    )
    return "\n".join(lines)


def describe(b: pb.Backfill) -> str:
    p = b.progress
    scope = f"workspace {b.options.workspace_id}" if b.options.workspace_id else "all workspaces"
    mode = "dry run" if b.options.dry_run else "execute"
    eta = _duration(p.eta.ToTimedelta().total_seconds()) if p.HasField("eta") else "-"
    lines = [
        f"Backfill {b.backfill_id}: {STATE_NAMES[b.state]} ({mode}, {scope})",
        f"  {_rate(b.options.rate_limit)}, batch {b.options.batch_size}, "
        f"max keys {b.options.max_keys or 'none'}",
        f"  {p.percent_done:.1f}% of ~{p.total_estimate:,} keys, {p.rate:,.0f} keys/s, ETA {eta}, "
        f"checkpoint {p.checkpoint}",
        f"  {'Scanned:':<9}{p.scanned:>11}",
        f"  {'Migrated:':<9}{p.migrated:>11}",
        f"  {'Skipped:':<9}{_skipped(p):>11}  (exists {p.skipped_exists}, newer {p.skipped_newer}, "
        f"invalid {p.skipped_invalid}, vanished {p.skipped_vanished})",
        f"  {'Errors:':<9}{p.errors:>11}",
    ]
    if b.reason:
        lines.append(f"  reason: {b.reason}")
    if b.owner:
        lines.append(f"  controller: {b.owner}")
    return "\n".join(lines)


def _skipped(p: pb.BackfillProgress) -> int:
    return p.skipped_exists + p.skipped_newer + p.skipped_invalid + p.skipped_vanished


def _rate(rate: float) -> str:
    return f"{rate:,.0f} keys/s" if rate else "unthrottled"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
