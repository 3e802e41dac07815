"""A short `make load`: JobService under live traffic while the migration walks from legacy-only to
legacy-cleaned loses no acknowledged write, serves no stale or foreign data, and counts exactly.

Runs ``python -m bench.load`` as the real thing (Relay as separate processes against a private
redis-server, traffic from its own process) for a few seconds, and asserts only correctness, never speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def load_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("load")
    command = [sys.executable, "-m", "bench.load", "--duration", "8", "--workspaces", "6"]
    command += ["--legacy-keys", "1500", "--callers", "8", "--workers", "6", "--out", str(out), "--no-plot"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    report_path = out / "load.json"
    assert report_path.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    report["exit_code"] = run.returncode
    report["output"] = run.stdout[-3000:] + run.stderr[-3000:]
    return report


def test_the_run_passes_every_check(load_report):
    assert load_report["failures"] == [], load_report["output"]
    assert load_report["exit_code"] == 0


def test_the_migration_walks_all_the_way_under_load(load_report):
    steps = [s["step"] for s in load_report["migration"]["steps"]]
    stages = [s.removeprefix("stage ") for s in steps if s.startswith("stage ")]
    assert stages == ["DUAL_WRITE", "READ_NEW", "NEW_ONLY", "LEGACY_CLEANED"]
    assert steps.index("backfill completed") < steps.index("stage READ_NEW")
    assert steps.index("verify completed") < steps.index("stage NEW_ONLY")


def test_every_acknowledged_write_reads_back_right_and_only_in_its_workspace(load_report):
    check = load_report["model_check"]
    assert load_report["acknowledged_jobs"] > 0
    assert check["problems"] == {}
    assert check["checked_by_get"] >= load_report["acknowledged_jobs"]
    assert check["foreign_probes"] >= load_report["acknowledged_jobs"]
    assert load_report["traffic"]["violations"] == {}


def test_callers_saw_no_error_at_all_without_faults(load_report):
    for rpc, figures in load_report["traffic"]["rpcs"].items():
        assert set(figures["codes"]) == {"OK"}, (rpc, figures["codes"])
    assert load_report["traffic"]["unexpected_codes"] == 0


def test_the_backfill_counts_each_seeded_key_exactly_once(load_report):
    counts = load_report["counts"]
    assert all(counts["checks"].values()), counts["checks"]
    backfill, seeded = counts["backfill"], counts["seeded"]
    assert backfill["migrated"] == seeded["valid"]
    assert backfill["skipped_invalid"] == seeded["invalid"]
    assert backfill["errors"] == 0
    skipped = backfill["skipped_exists"] + backfill["skipped_newer"] + backfill["skipped_invalid"]
    assert backfill["migrated"] + skipped == backfill["scanned"]
    assert counts["legacy_keys_left"] == seeded["invalid"]
