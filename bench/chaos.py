"""``make chaos``: the load run while the harness hurts Relay on purpose.

``python -m bench.chaos --duration 300``. The same workload and migration walk as ``bench.load``, against a
private Redis with AOF on (``appendfsync always``: an acknowledged write is on disk before its reply), while
faults land at random moments, one at a time:

- ``kill_controller``: SIGKILL the controller process, start it again a moment later;
- ``client_kill``: ``CLIENT KILL TYPE normal`` cuts every Redis client connection;
- ``pause_redis``: SIGSTOP the redis-server for 0.5-2 s, then SIGCONT;
- ``debug_sleep``: ``DEBUG SLEEP 0.5`` blocks Redis from inside;
- ``restart_redis``: SIGKILL the redis-server and start it again on the same port and AOF file.

It passes when the backfill still ends complete with exact counts, every acknowledged write survives and
reads back right, and callers saw only UNAVAILABLE or DEADLINE_EXCEEDED during the faults (never INTERNAL,
never wrong data). It reports, per kind of fault, how often it struck and what callers saw meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from typing import Any

from bench.load import scenario_arguments, scenario_of
from bench.load_scenario import FaultPlan, run_scenario, summary_lines
from bench.relay_cluster import Cluster

KINDS = ("kill_controller", "client_kill", "pause_redis", "debug_sleep", "restart_redis")
#: Faults only a Redis Cluster has (``--topology cluster`` adds them to the default kinds).
CLUSTER_KINDS = ("kill_primary",)
#: Errors callers see up to this long after a fault ended still belong to it.
AFTERMATH_SECONDS = 3.0


async def inject(cluster: Cluster, kind: str, rng: random.Random) -> dict[str, Any]:
    began = time.time()
    detail: dict[str, Any] = {}
    if kind == "kill_controller":
        cluster.kill_controller()
        await asyncio.sleep(rng.uniform(0.3, 2.0))
        await asyncio.to_thread(cluster.start_controller)
    elif kind == "client_kill":
        detail["connections"] = await asyncio.to_thread(cluster.kill_client_connections)
    elif kind == "pause_redis":
        cluster.pause_redis()
        try:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
        finally:
            cluster.resume_redis()
    elif kind == "debug_sleep":
        await asyncio.to_thread(cluster.debug_sleep, 0.5)
    elif kind == "kill_primary":
        workspace_id = rng.choice(sorted(cluster.keys.workspaces))
        detail = await asyncio.to_thread(cluster.kill_primary, workspace_id)
    elif kind == "restart_redis":
        cluster.crash_redis()
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        detail["reload_seconds"] = round(await asyncio.to_thread(cluster.start_redis_again), 3)
    else:
        raise ValueError(kind)
    return {"t": began, "kind": kind, "seconds": round(time.time() - began, 3), **detail}


def fault_plan(count: int, kinds: list[str], seed: int, shuffle: bool = True) -> FaultPlan:
    """``count`` faults, one in each equal slot of the load at a random moment, kinds taken in turn
    (in a random order, or as given)."""
    rng = random.Random(seed)

    async def run(cluster: Cluster, start: float, end: float) -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = []
        order = list(kinds)
        if shuffle:
            rng.shuffle(order)
        window_start, window_end = start + 0.05 * (end - start), start + 0.9 * (end - start)
        slot = (window_end - window_start) / max(count, 1)
        for n in range(count):
            at = window_start + n * slot + rng.uniform(0, slot * 0.6)
            await asyncio.sleep(max(0.0, at - time.time()))
            log.append(await inject(cluster, order[n % len(order)], rng))
        return log

    return run


def per_fault(series: dict[str, Any]) -> dict[str, Any]:
    """For each kind of fault: how often, how long, and the status codes callers and the operator got
    from its start until AFTERMATH_SECONDS after its end (or the next fault, if that comes first)."""
    faults = sorted(series["faults"], key=lambda f: f["t"])  # seconds since the load started
    out: dict[str, Any] = defaultdict(
        lambda: {"count": 0, "seconds": 0.0, "caller_errors": Counter(), "operator_errors": Counter()}
    )
    for n, fault in enumerate(faults):
        entry = out[fault["kind"]]
        entry["count"] += 1
        entry["seconds"] = round(entry["seconds"] + fault["seconds"], 3)
        until = fault["t"] + fault["seconds"] + AFTERMATH_SECONDS
        if n + 1 < len(faults):
            until = min(until, faults[n + 1]["t"])
        for row in series["seconds"]:
            if int(fault["t"]) <= row["t"] < until:
                entry["caller_errors"].update(row.get("errors", {}))
        for error in series.get("operator_errors", []):
            if fault["t"] <= error["t"] < until:
                entry["operator_errors"][error["code"]] += 1
    return {
        kind: {**v, "caller_errors": dict(v["caller_errors"]), "operator_errors": dict(v["operator_errors"])}
        for kind, v in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scenario_arguments(parser, 300.0)
    parser.add_argument("--faults", type=int, default=0, help="faults to inject (0: one per 8 s of load)")
    parser.add_argument(
        "--kinds",
        default="",
        help=f"comma-separated, taken in this order (default: all, shuffled): {', '.join(KINDS)}",
    )
    args = parser.parse_args(argv)
    known = KINDS + (CLUSTER_KINDS if args.topology == "cluster" else ())
    kinds = [k for k in args.kinds.split(",") if k] or list(known)
    unknown = set(kinds) - set(known)
    if unknown or not kinds:
        parser.error(f"unknown fault kinds: {sorted(unknown)}")
    count = args.faults or max(len(kinds), int(args.duration / 8))
    sc = scenario_of(args, "chaos", aof=True)
    report = asyncio.run(run_scenario(sc, fault_plan(count, kinds, args.seed, shuffle=not args.kinds)))
    series = json.loads((sc.out_dir / "chaos_timeseries.json").read_text())
    faults = per_fault(series)
    report["per_fault"] = faults
    (sc.out_dir / "chaos.json").write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(summary_lines(report)))
    print(
        "\n| fault | count | seconds | JobService callers saw | the operator saw |\n|---|---:|---:|---|---|"
    )
    for kind, entry in sorted(faults.items()):
        callers = ", ".join(f"{k} {v}" for k, v in sorted(entry["caller_errors"].items())) or "no error"
        operator = ", ".join(f"{k} {v}" for k, v in sorted(entry["operator_errors"].items())) or "no error"
        print(f"| {kind} | {entry['count']} | {entry['seconds']:.1f} | {callers} | {operator} |")
    print(f"results: {args.out}/chaos.json, chaos_timeseries.json" + ("" if args.no_plot else ", chaos.png"))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
