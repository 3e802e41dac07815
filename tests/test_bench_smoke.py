"""The benchmarks run: a smoke-size JobService benchmark yields real figures, and ``make bench`` copes
with benchmarks that are not there. Speed targets are reported by the benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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


def test_the_summary_opens_with_the_issue_table_from_this_runs_figures(tmp_path: Path) -> None:
    (tmp_path / "jobs-quick.json").write_text(
        json.dumps(
            {
                "throughput": [{"rpc": "Execute", "ratio": 0.71}, {"rpc": "ListJobs", "ratio": 0.52}],
                "list_page_ratio": {"p50": 1.1, "from_keys": 500, "to_keys": 6000},
            }
        )
    )
    (tmp_path / "backfill.json").write_text(
        json.dumps(
            {
                "ratio": 0.8,
                "ratio_no_budget": 0.9,
                "budget_price": 0.11,
                "jobservice_idle": {"p99_ms": 10.0},
                "jobservice_during_backfill": {"p99_ms": 15.0},
                "jobservice_during_backfill_no_budget": {"p99_ms": 100.0},
            }
        )
    )

    table = "\n".join(run_all.headline(0.0, quick=True, results=tmp_path))

    assert "| Execute throughput vs no-op | 0.45-0.60 | 0.71 | >= 0.7 |" in table.replace("≥", ">=")
    assert "| ListJobs (page of 50) throughput vs no-op | 0.15 | 0.52 |" in table
    assert "1.5x with the budget (10.0 -> 15.0 ms); 10.0x without (100.0 ms)" in table.replace("→", "->")
    assert "0.80 with the budget, 0.90 without" in table and "| 11% |" in table
    assert "| GetJob throughput vs no-op | 0.46-0.67 | not measured in this run |" in table
    # a file older than the run is not this run's figure
    assert "not measured" in "\n".join(run_all.headline(time.time() + 60, quick=True, results=tmp_path))
