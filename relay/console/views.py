"""Controller messages as the plain values pages and event streams show (one function per kind).

The summaries are relayctl's own (``relay.clients``), so a page says exactly what the terminal says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from relay.clients.cli_backfill import STATE_NAMES as BACKFILL_STATES
from relay.clients.cli_backfill import summary as backfill_summary
from relay.clients.cli_cleanup import STATE_NAMES as CLEANUP_STATES
from relay.clients.cli_cleanup import summary as cleanup_summary
from relay.clients.cli_common import enum_names
from relay.core.stages import Stage
from relay.v1 import backfill_pb2, cleanup_pb2, stage_pb2, verification_pb2

TERMINAL_BACKFILL = {
    backfill_pb2.BACKFILL_STATE_COMPLETED,
    backfill_pb2.BACKFILL_STATE_FAILED,
    backfill_pb2.BACKFILL_STATE_CANCELLED,
}
VERIFICATION_STATES = enum_names(verification_pb2.VerificationState, lower=True)
STAGE_ORDER = list(Stage)
#: What the controller checks before each step forward (its refusal says exactly what is missing).
STEP_RULES = {
    Stage.DUAL_WRITE: "always allowed: the new layout starts being written beside the legacy one",
    Stage.READ_NEW: "needs a completed backfill (execute, all workspaces) that started after dual-write "
    "began and settled",
    Stage.NEW_ONLY: "needs a clean verification, recent, started after the last stage change settled",
    Stage.LEGACY_CLEANED: "needs a complete cleanup (execute) that started after legacy writes stopped",
}
CHART_W, CHART_H = 600, 140


def when(stamp: timestamp_pb2.Timestamp) -> str:
    if not (stamp.seconds or stamp.nanos):
        return "-"
    return datetime.fromtimestamp(stamp.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def stage_name(value: int) -> str:
    return Stage(value).name if value in Stage._value2member_map_ else "UNSPECIFIED"


def layouts(stage: Stage) -> dict[str, str]:
    def names(legacy: bool, new: bool) -> str:
        return " and ".join(n for n, on in (("legacy", legacy), ("new", new)) if on) or "none"

    prefers = "new first" if stage.prefers_new else "legacy first"
    reads = names(stage.reads_legacy, stage.reads_new)
    if stage.reads_legacy and stage.reads_new:
        reads += f" ({prefers})"
    return {"reads": reads, "writes": names(stage.writes_legacy, stage.writes_new)}


def stage_view(setting: stage_pb2.StageSetting) -> dict[str, Any]:
    stage = Stage(setting.stage) if setting.stage in Stage._value2member_map_ else None
    following = (
        STAGE_ORDER[STAGE_ORDER.index(stage) + 1] if stage and stage is not Stage.LEGACY_CLEANED else None
    )
    return {
        "scope": setting.workspace_id or "",
        "label": f"workspace {setting.workspace_id}" if setting.workspace_id else "global default",
        "stage": stage.name if stage else "UNSPECIFIED",
        "shadow": setting.shadow_reads,
        "inherited": setting.inherited,
        "version": setting.version,
        "source": setting.source,
        "updated": when(setting.update_time),
        "entered": when(setting.enter_time),
        "new_writes_since": when(setting.new_writes_start_time),
        "legacy_writes_stopped": when(setting.legacy_writes_stop_time),
        "legacy_writes_resumed": when(setting.legacy_writes_resume_time),
        "layouts": layouts(stage) if stage else {"reads": "-", "writes": "-"},
        "next": following.name if following else "",
        "next_rule": STEP_RULES.get(following, "") if following else "",
    }


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def chart_points(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """An SVG polyline of the rate over the run, scaled into CHART_W x CHART_H."""
    if not samples:
        return {"points": "", "max_rate": 0, "seconds": 0}
    span = max(s[0] for s in samples) or 1.0
    top = max(s[1] for s in samples) or 1.0
    points = " ".join(
        f"{t / span * CHART_W:.1f},{CHART_H - rate / top * (CHART_H - 4):.1f}" for t, rate in samples
    )
    return {"points": points, "max_rate": round(top), "seconds": round(span)}


def backfill_view(
    b: backfill_pb2.Backfill, samples: list[tuple[float, float]] | None = None
) -> dict[str, Any]:
    p = b.progress
    state = BACKFILL_STATES.get(b.state, "UNSPECIFIED")
    terminal = b.state in TERMINAL_BACKFILL
    skipped = p.skipped_exists + p.skipped_newer + p.skipped_invalid + p.skipped_vanished
    view: dict[str, Any] = {
        "id": b.backfill_id,
        "state": state,
        "terminal": terminal,
        "mode": "dry run" if b.options.dry_run else "execute",
        "scope": f"workspace {b.options.workspace_id}" if b.options.workspace_id else "all workspaces",
        "rate_limit": f"{b.options.rate_limit:,.0f} keys/s" if b.options.rate_limit else "unthrottled",
        "percent": round(p.percent_done, 1),
        "fields": {
            "state": state,
            "percent": f"{p.percent_done:.1f}%",
            "scanned": f"{p.scanned:,}",
            "total": f"{p.total_estimate:,}",
            "migrated": f"{p.migrated:,}",
            "skipped": f"{skipped:,}",
            "skipped_exists": f"{p.skipped_exists:,}",
            "skipped_newer": f"{p.skipped_newer:,}",
            "skipped_invalid": f"{p.skipped_invalid:,}",
            "skipped_vanished": f"{p.skipped_vanished:,}",
            "filtered_out": f"{p.filtered_out:,}",
            "errors": f"{p.errors:,}",
            "rate": f"{p.rate:,.0f} keys/s",
            "eta": _duration(p.eta.ToTimedelta().total_seconds())
            if p.HasField("eta") and not terminal
            else "-",
            "checkpoint": p.checkpoint or "0",
            "rescans": f"{p.rescans:,}",
            "reason": b.reason or "-",
            "started": when(b.create_time),
            "ended": when(b.end_time),
            "owner": b.owner or "-",
            "invalid_ids": ", ".join(p.invalid_job_ids) or "none",
        },
        "summary": backfill_summary(backfill_pb2.BackfillEvent(backfill=b, reason=b.reason)).strip("\n")
        if terminal
        else "",
        "chart": chart_points(samples or []),
    }
    return view


def verification_view(v: verification_pb2.Verification) -> dict[str, Any]:
    state = VERIFICATION_STATES.get(v.state, "unspecified")
    rows = [
        {
            "workspace": w.workspace_id,
            "matching": w.matching,
            "missing": w.missing_in_new,
            "differing": w.differing,
            "only_new": w.only_in_new,
            "unlisted": w.unlisted,
            "legacy_behind": w.legacy_behind,
            "fields": ", ".join(f"{k}: {n:,}" for k, n in sorted(w.differing_fields.items())) or "-",
            "samples": list(w.sample_job_ids),
            "clean": not (w.missing_in_new or w.differing or w.only_in_new or w.unlisted),
        }
        for w in v.workspaces
    ]
    result = "CLEAN" if v.clean else ("NOT CLEAN" if state == "completed" else state.upper())
    return {
        "id": v.verification_id,
        "state": state,
        "terminal": state != "running",
        "percent": round(v.percent_done, 1),
        "rows": rows,
        "clean": v.clean,
        "result": result,
        "fields": {
            "state": state,
            "percent": f"{v.percent_done:.1f}%",
            "phase": v.phase or "-",
            "scanned_legacy": f"{v.scanned_legacy:,}",
            "scanned_new": f"{v.scanned_new:,}",
            "invalid_legacy": f"{v.invalid_legacy:,}",
            "result": result,
            "legacy_covered": "yes" if v.legacy_covered else "no",
            "reason": v.reason or "-",
            "started": when(v.start_time),
            "ended": when(v.end_time),
            "scope": f"workspace {v.workspace_id}" if v.workspace_id else "all workspaces",
        },
    }


def cleanup_view(c: cleanup_pb2.Cleanup, kind: str) -> dict[str, Any]:
    state = CLEANUP_STATES.get(c.state, "unknown")
    what, done_label = (
        ("Cleanup", "Would delete" if c.dry_run else "Deleted")
        if kind == "cleanup"
        else ("Reverse copy", "Would copy" if c.dry_run else "Copied")
    )
    return {
        "id": c.cleanup_id,
        "state": state,
        "terminal": state != "running",
        "percent": round(c.percent_done, 1),
        "mode": "dry run" if c.dry_run else "execute",
        "fields": {
            "state": state,
            "percent": f"{c.percent_done:.1f}%",
            "phase": c.phase or "-",
            "scanned": f"{c.scanned:,}",
            "done": f"{c.done:,}",
            "errors": f"{c.errors:,}",
            "rate": f"{c.rate:,.0f} keys/s",
        },
        "summary": cleanup_summary(c, what, done_label),
    }
