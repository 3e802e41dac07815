"""The plot of a load or chaos run: backfill rate and JobService latency, second by second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPAN_COLOURS = {"backfill": "#4c72b0", "verify": "#55a868", "cleanup": "#c44e52"}
FAULT_COLOURS = {
    "kill_controller": "#8172b2",
    "client_kill": "#937860",
    "pause_redis": "#da8bc3",
    "debug_sleep": "#da8bc3",
    "restart_redis": "#000000",
}


def plot(series: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = series["seconds"]
    t = [r["t"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), constrained_layout=True)
    nan = float("nan")  # seconds without a value leave a gap, not a zero
    top.plot(
        t,
        [r.get("backfill_rate", nan) for r in rows],
        color=SPAN_COLOURS["backfill"],
        label="backfill (keys/s)",
    )
    top.set_ylabel("backfill, keys per second")
    top.set_ylim(bottom=0)
    # The cleanup is unthrottled and far faster: its own scale, on the right.
    right = top.twinx()
    right.plot(
        t,
        [r.get("cleanup_rate", nan) for r in rows],
        color=SPAN_COLOURS["cleanup"],
        label="cleanup (keys/s, right)",
        linewidth=0.8,
    )
    right.set_ylabel("cleanup, keys per second")
    right.set_ylim(bottom=0)
    top.set_title(title)
    bottom.plot(
        t, [r["p99_ms"] if r["calls"] else nan for r in rows], color="#dd8452", label="JobService p99"
    )
    bottom.plot(
        t,
        [r["p50_ms"] if r["calls"] else nan for r in rows],
        color="#8c8c8c",
        label="JobService p50",
        linewidth=0.8,
    )
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since the load started")
    for axis in (top, bottom):
        for name, (start, end) in series.get("spans", {}).items():
            axis.axvspan(start, end, color=SPAN_COLOURS.get(name, "#cccccc"), alpha=0.08)
        for fault in series.get("faults", []):
            axis.axvline(
                fault["t"], color=FAULT_COLOURS.get(fault["kind"], "#999999"), alpha=0.5, linewidth=0.8
            )
    for step in series.get("steps", []):
        if step["step"].startswith("stage "):
            top.annotate(
                step["step"].removeprefix("stage "),
                (step["t"], 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
            )
    if series.get("faults"):
        kinds = sorted({f["kind"] for f in series["faults"]})
        for kind in kinds:
            bottom.plot([], [], color=FAULT_COLOURS.get(kind, "#999999"), label=kind.replace("_", " "))
    handles = top.get_legend_handles_labels()
    extra = right.get_legend_handles_labels()
    top.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
