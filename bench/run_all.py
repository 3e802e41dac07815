"""``make bench``: every benchmark present in bench/, in one run, and one summary of all their tables.

    python -m bench.run_all                 # everything, full size
    python -m bench.run_all --quick         # a smoke run of each benchmark that has a --quick mode
    python -m bench.run_all --only jobs

Each benchmark runs in its own process through its ``main`` entry (bench/entry.py), so one that fails or
is missing never stops the others; its stdout (a markdown table) goes into bench/results/summary.md, with
a link to every plot the run left in bench/results/ (--quick writes summary-quick.md instead, so a smoke
run never replaces the real figures). A module that does not exist yet is reported as
"not present".

The summary opens with the table of issue #12 ("Fast under load"): each row a ratio measured side by side
in this run (read from the JSON the benchmarks wrote during it), beside the issue's figure before the work
and the aim.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    title: str
    #: Arguments for a full run and for --quick (when the module has no --quick of its own); each flag is
    #: passed only when the module's --help lists it.
    full_args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark("jobs", "bench.bench_jobs", "JobService: real vs no-op handler, ListJobs at scale"),
    Benchmark(
        "backfill",
        "bench.bench_backfill",
        "MigrationController: backfill",
        quick_args=("--keys", "20000", "--latency-seconds", "1"),
    ),
    Benchmark(
        "topologies",
        "bench.bench_topologies",
        "JobService on topology 1 (one Redis) and 2 (legacy Redis + Redis Cluster), side by side",
    ),
    Benchmark(
        "load",
        "bench.load",
        "Load test: backfill rate and JobService p99 over time (plot)",
        full_args=("--duration", "120"),
        quick_args=("--duration", "20"),
    ),
)


@dataclass
class Outcome:
    benchmark: Benchmark
    status: str  # ok | failed | not present
    seconds: float = 0.0
    output: str = ""
    errors: str = ""


def present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def accepted_flags(module: str) -> set[str]:
    """The long options a module's --help mentions (so only flags it knows are passed to it)."""
    reply = subprocess.run(
        [sys.executable, "-m", "bench.entry", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {word.strip("[],=") for word in reply.stdout.split() if word.startswith("--")}


def arguments(bench: Benchmark, quick: bool, flags: set[str]) -> list[str]:
    if quick and "--quick" in flags:
        return ["--quick"]
    args: list[str] = []
    pairs = list(bench.quick_args if quick else bench.full_args)
    while pairs:
        flag = pairs.pop(0)
        value = pairs.pop(0) if pairs and not pairs[0].startswith("--") else None
        if flag in flags:
            args += [flag] + ([value] if value is not None else [])
    return args


def run_one(bench: Benchmark, quick: bool) -> Outcome:
    if not present(bench.module):
        print(f"== {bench.name}: {bench.module} not present", flush=True)
        return Outcome(bench, "not present")
    args = arguments(bench, quick, accepted_flags(bench.module))
    print(f"== {bench.name}: python -m {bench.module} {' '.join(args)}".rstrip(), flush=True)
    begin = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.entry", bench.module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    error_lines: list[str] = []
    assert process.stdout is not None and process.stderr is not None
    # Both streams are shown as they come (a full run takes minutes) and kept for the summary.
    echo_errors = threading.Thread(target=_tee, args=(process.stderr, sys.stderr, error_lines), daemon=True)
    echo_errors.start()
    _tee(process.stdout, sys.stdout, lines)
    process.wait()
    echo_errors.join()
    errors = "".join(error_lines)
    seconds = time.perf_counter() - begin
    status = "ok" if process.returncode == 0 else "failed"
    if status == "failed":
        print(errors[-3000:], file=sys.stderr, flush=True)
    return Outcome(bench, status, seconds, "".join(lines), errors)


def _tee(source: IO[str], sink: IO[str], kept: list[str]) -> None:
    for line in source:
        sink.write(line)
        sink.flush()
        kept.append(line)


#: Issue #12's table before the work (its own figures, measured with an unbudgeted backfill):
#: measure -> (before, aim).
BEFORE: dict[str, tuple[str, str]] = {
    "Execute throughput vs no-op": ("0.45-0.60", "≥ 0.7"),
    "GetJob throughput vs no-op": ("0.46-0.67", "≥ 0.7"),
    "ListJobs (page of 50) throughput vs no-op": ("0.15", "≥ 0.5"),
    "GetJob p99 during an unthrottled backfill, vs idle": ("13x (8.8 → 114 ms)", "≤ 2x"),
    "backfill vs a hand-written Lua copy-and-index per SCAN batch": ("0.46-0.77", "≥ 0.8"),
    "price of the script budget (1 - with / without)": ("— (no budget)", "≤ 20%"),
    "ListJobs page latency, 1,000,000 vs 10,000 other keys": ("", "≤ 1.5"),
}


def _fresh(path: Path, since: float) -> dict[str, Any] | None:
    """The JSON at ``path`` when this run wrote it, else None."""
    try:
        if path.stat().st_mtime < since:
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def measured(since: float, quick: bool, results: Path = RESULTS) -> dict[str, str]:
    """This run's figure for each row of :data:`BEFORE` it measured."""
    now: dict[str, str] = {}
    jobs = _fresh(results / ("jobs-quick.json" if quick else "jobs.json"), since)
    if jobs:
        for row in jobs.get("throughput", []):
            name = "ListJobs (page of 50)" if row["rpc"] == "ListJobs" else row["rpc"]
            now[f"{name} throughput vs no-op"] = f"{row['ratio']:.2f}"
        pages = jobs.get("list_page_ratio")
        if pages:
            now["ListJobs page latency, 1,000,000 vs 10,000 other keys"] = (
                f"{pages['p50']:.2f} (p50; {pages['to_keys']:,} vs {pages['from_keys']:,} keys)"
            )
    backfill = _fresh(results / "backfill.json", since)
    if backfill:
        idle = backfill.get("jobservice_idle")
        with_budget = backfill.get("jobservice_during_backfill")
        without = backfill.get("jobservice_during_backfill_no_budget")
        if idle and with_budget and without and idle["p99_ms"]:
            now["GetJob p99 during an unthrottled backfill, vs idle"] = (
                f"{with_budget['p99_ms'] / idle['p99_ms']:.1f}x with the budget "
                f"({idle['p99_ms']:.1f} → {with_budget['p99_ms']:.1f} ms); "
                f"{without['p99_ms'] / idle['p99_ms']:.1f}x without ({without['p99_ms']:.1f} ms)"
            )
        if "ratio_no_budget" in backfill:
            now["backfill vs a hand-written Lua copy-and-index per SCAN batch"] = (
                f"{backfill['ratio']:.2f} with the budget, {backfill['ratio_no_budget']:.2f} without"
            )
            now["price of the script budget (1 - with / without)"] = f"{backfill['budget_price']:.0%}"
    return now


def headline(since: float, quick: bool, results: Path = RESULTS) -> list[str]:
    """Issue #12's table: before (where known), this run, aim."""
    now = measured(since, quick, results)
    lines = [
        "## Issue #12: fast under load",
        "",
        f"Load average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. Each figure "
        'is a ratio of two measurements taken side by side in this run; "before" is the issue\'s own.',
        "",
        "| measure | before | this run | aim |",
        "|---|---|---|---|",
    ]
    for name, (before, aim) in BEFORE.items():
        lines.append(f"| {name} | {before} | {now.get(name, 'not measured in this run')} | {aim} |")
    return lines


def summary(outcomes: list[Outcome], quick: bool, since: float | None = None) -> str:
    lines = [
        "# Relay benchmarks",
        "",
        f"Made by `python -m bench.run_all{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    if since is not None:
        lines += [*headline(since, quick), ""]
    lines += [
        "| benchmark | module | status | seconds |",
        "|---|---|---|---:|",
    ]
    for o in outcomes:
        lines.append(f"| {o.benchmark.name} | `{o.benchmark.module}` | {o.status} | {o.seconds:.0f} |")
    for o in outcomes:
        lines += ["", f"## {o.benchmark.title}", ""]
        if o.status == "not present":
            lines.append(f"`{o.benchmark.module}` not present.")
        elif o.status == "failed":
            lines += ["Failed:", "", "```", o.errors.strip()[-2000:], "```"]
        else:
            lines.append(_demote_headings(o.output.strip()))
    plots = sorted(RESULTS.glob("*.png"))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _demote_headings(text: str) -> str:
    """Each benchmark's own headings sit one level below its section."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark in bench/ and write a summary.")
    parser.add_argument("--quick", action="store_true", help="smoke-size runs where a benchmark offers them")
    parser.add_argument("--only", action="append", help="a benchmark name (repeatable)")
    parser.add_argument(
        "--backfill-keys", type=int, help="legacy records of the backfill benchmark (its default: 1,000,000)"
    )
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    if args.backfill_keys:
        chosen = [
            Benchmark(b.name, b.module, b.title, ("--keys", str(args.backfill_keys)), b.quick_args)
            if b.name == "backfill"
            else b
            for b in chosen
        ]
    since = time.time()
    outcomes = [run_one(bench, args.quick) for bench in chosen]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("summary-quick.md" if args.quick else "summary.md")
    path.write_text(summary(outcomes, args.quick, since))
    print(f"\nsummary written to {path.relative_to(ROOT)}", flush=True)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
