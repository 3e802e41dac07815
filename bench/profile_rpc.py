"""Where the time of one RPC goes in ``relay serve jobs`` under load: py-spy samples the server process.

    .venv/bin/pip install py-spy      # optional tool, not a dependency
    .venv/bin/python -m bench.profile_rpc --rpc GetJob --duration 10
    .venv/bin/python -m bench.profile_rpc --rpc Execute --top 40

The stack of bench/bench_jobs.py (a private redis-server, ``relay serve jobs`` in its own process, the load
generator in another) runs one RPC for ``--duration`` seconds while ``py-spy record`` samples the server
(``--format raw``: folded stacks, kept in bench/results/profile-<rpc>.txt). It prints the functions that
hold the most samples, inclusive and self, as a share of the server's samples. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench import bench_jobs, workload
from relay.core.keys import KEYS

RESULTS = Path(__file__).resolve().parent / "results"


def folded_shares(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """Inclusive and self samples per function of a py-spy raw (folded) file, and the total."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    return inclusive, own, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpc", choices=bench_jobs.RPCS, default="GetJob")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{args.rpc}.txt"
    warmup = 1.0
    with bench_jobs.running_stack(with_noop=False) as stack:
        # The same data and pages as bench_jobs' throughput run: the indexed phase, as a completed
        # backfill leaves it.
        job_ids = bench_jobs.seed_read_workspace(stack, 1000)
        stack.redis.client().set(KEYS.legacy_indexed, "1")
        tokens = bench_jobs.page_walk(stack, "", 1000 // workload.PAGE_SIZE - 1)
        inputs = {"job_ids": job_ids, "page_tokens": tokens}
        workspace = workload.EXEC_WORKSPACE if args.rpc == "Execute" else workload.READ_WORKSPACE
        spy_argv = [spy, "record", "--pid", str(stack.real.process.pid), "--format", "raw"]
        spy_argv += ["--rate", str(args.rate), "--duration", str(int(args.duration + warmup + 1))]
        spy_argv += ["--output", str(out), "--nonblocking"]
        record = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        result = bench_jobs.load(
            stack, stack.real, workspace, args.rpc, inputs, args.duration, args.concurrency, warmup
        )
        _, errors = record.communicate(timeout=args.duration + 60)
        if record.returncode != 0:
            raise SystemExit(f"py-spy failed: {errors[-2000:]}")
    inclusive, own, total = folded_shares(out)
    print(
        f"{args.rpc}: {result['throughput']:,.0f} calls/s, p99 {result['p99_ms']:.1f} ms, server CPU "
        f"{result['server_cpu_us_per_call']:.0f} µs/call, load average {os.getloadavg()[0]:.1f}; "
        f"{total:,} samples in {out}"
    )
    print("\n| inclusive | self | function |\n|---:|---:|---|")
    for frame, n in inclusive.most_common(args.top):
        print(f"| {n / total:.1%} | {own[frame] / total:.1%} | `{frame}` |")


if __name__ == "__main__":
    main()
