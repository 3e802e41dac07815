"""The benchmarks run: a smoke-size JobService benchmark yields real figures, and ``make bench`` copes
with benchmarks that are not there. Speed targets are reported by the benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import run_all

ROOT = Path(__file__).resolve().parents[1]


def test_the_jobs_benchmark_measures_every_rpc_against_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "jobs.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_jobs", "--quick", "--json-out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())

    assert [row["rpc"] for row in results["throughput"]] == ["Execute", "GetJob", "ListJobs"]
    for row in results["throughput"]:
        for server in ("real", "noop"):
            assert row[server]["calls"] > 0 and row[server]["throughput"] > 0, (row["rpc"], server)
            assert row[server]["errors"] == {}, (row["rpc"], server)
            assert 0 < row[server]["p50_ms"] <= row[server]["p99_ms"]
        assert row["ratio"] > 0
    assert len(results["list_pages"]) == 2
    for row in results["list_pages"]:
        assert row["calls"] > 0 and row["errors"] == {}
        assert row["keys"]["total"] > row["other_keys"]
    assert results["legacy_phase"]["calls"] > 0 and results["legacy_phase"]["errors"] == {}
    assert "| ListJobs |" in done.stdout and "legacy phase" in done.stdout


def test_a_missing_benchmark_is_reported_as_not_present() -> None:
    missing = run_all.Benchmark("ghost", "bench.no_such_benchmark", "A benchmark nobody wrote")

    outcome = run_all.run_one(missing, quick=True)

    assert outcome.status == "not present"
    assert "`bench.no_such_benchmark` not present." in run_all.summary([outcome], quick=True)
