"""``make load``: JobService under a realistic load while a backfill, a verification and a cleanup run.

``python -m bench.load --duration 300`` (``--duration 20`` for a short look). Relay runs as separate
processes (``relay serve jobs``, ``relay serve controller``) against a private redis-server; the load comes
from a process of its own. Prints throughput and p50/p99/p999 per RPC, errors by status code, the
migration's counts and the read-back of every acknowledged write; writes bench/results/load.json,
load_timeseries.json and load.png. Exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.load_scenario import RESULTS, Scenario, run_scenario, summary_lines


def scenario_arguments(parser: argparse.ArgumentParser, duration: float) -> None:
    parser.add_argument("--duration", type=float, default=duration, help="seconds of load")
    parser.add_argument("--workspaces", type=int, default=40)
    parser.add_argument(
        "--legacy-keys", type=int, default=0, help="legacy keys seeded (0: 200 per second of load)"
    )
    parser.add_argument(
        "--callers", type=int, default=16, help="concurrent callers (Execute, GetJob, ListJobs)"
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="concurrent workers (ClaimJob, UpdateJobStatus)"
    )
    parser.add_argument(
        "--backfill-rate", type=float, default=-1.0, help="keys/s (-1: end about half-way; 0: unthrottled)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--topology",
        choices=("single", "cluster"),
        default="single",
        help="single: both layouts on one Redis; cluster: the new layout on a private Redis Cluster",
    )


def scenario_of(args: argparse.Namespace, name: str, aof: bool) -> Scenario:
    return Scenario(
        name=name,
        duration=args.duration,
        workspaces=args.workspaces,
        legacy_keys=args.legacy_keys,
        callers=args.callers,
        workers=args.workers,
        backfill_rate=args.backfill_rate,
        aof=aof,
        out_dir=args.out,
        plot=not args.no_plot,
        seed=args.seed,
        topology=args.topology,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scenario_arguments(parser, 300.0)
    args = parser.parse_args(argv)
    report = asyncio.run(run_scenario(scenario_of(args, "load", aof=False)))
    print("\n".join(summary_lines(report)))
    print(f"results: {args.out}/load.json, load_timeseries.json" + ("" if args.no_plot else ", load.png"))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
