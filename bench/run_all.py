"""``make bench``: every benchmark present in bench/, in one run, and one summary of all their tables.

    python -m bench.run_all                 # everything, full size
    python -m bench.run_all --quick         # a smoke run of each benchmark that has a --quick mode
    python -m bench.run_all --only jobs

Each benchmark runs in its own process through its ``main`` entry (bench/entry.py), so one that fails or
is missing never stops the others; its stdout (a markdown table) goes into bench/results/summary.md, with
a link to every plot the run left in bench/results/ (--quick writes summary-quick.md instead, so a smoke
run never replaces the real figures). A module that does not exist yet is reported as
"not present".
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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


def summary(outcomes: list[Outcome], quick: bool) -> str:
    lines = [
        "# Relay benchmarks",
        "",
        f"Made by `python -m bench.run_all{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
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
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    outcomes = [run_one(bench, args.quick) for bench in chosen]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("summary-quick.md" if args.quick else "summary.md")
    path.write_text(summary(outcomes, args.quick))
    print(f"\nsummary written to {path.relative_to(ROOT)}", flush=True)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
