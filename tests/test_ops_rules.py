"""The operations kit: alert rules pass promtool's checks and unit tests; the dashboard is sound JSON whose
queries parse and name only series Relay exports."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from relay.core.stages import Stage, StageSetting, StageTable
from relay.core.telemetry import BackfillGauges, build_metrics
from tests.ops_tools import promtool

OPS = Path(__file__).resolve().parent.parent / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERT_TESTS = [OPS / "prometheus" / "alerts_test.yml", OPS / "prometheus" / "alerts_stalled_test.yml"]
DASHBOARD = OPS / "grafana" / "relay.json"
OLD_PANELS = ("Migration completion %", "Error rate (5 min)", "Throughput (keys/s)", "Batch duration p99")
NEW_PANELS = ("Read paths", "Stage", "Shadow read mismatches", "RPC latency p99 by method")
PROMQL_WORDS = {
    "sum", "max", "min", "by", "without", "on", "ignoring", "and", "or", "unless", "rate", "increase",
    "histogram_quantile", "le", "bool", "group_left", "group_right",
}  # fmt: skip


@dataclass
class StageViewStandIn:
    """What the stage gauge reads of a replica's StageView: its table."""

    table: StageTable


def exported_names() -> set[str]:
    """Every series name Relay's /metrics can show, read off a live exposition."""
    metrics = build_metrics()
    metrics.watch_backfill(lambda: BackfillGauges("running", 0.5, 10, 1.0, 2.0))
    metrics.watch_stages(StageViewStandIn(StageTable(StageSetting(Stage.READ_NEW))))
    for counter in (
        metrics.backfill_scanned,
        metrics.backfill_migrated,
        metrics.backfill_skipped,
        metrics.backfill_errors,
        metrics.read_path,
        metrics.dual_write,
        metrics.shadow_reads,
    ):
        counter.add(1)
    for histogram in (metrics.backfill_duration, metrics.rpc_duration, metrics.redis_duration):
        histogram.record(0.1)
    text = generate_latest(metrics.registry).decode()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def metric_names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", without_ranges))
    grouped = set()
    for group in re.findall(r"(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_ranges):
        grouped |= {g.strip() for g in group.split(",")}
    return {w for w in words - labels - grouped - PROMQL_WORDS if w.startswith("relay_")}


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


# --- alert rules --------------------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules():
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests():
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, ALERT_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(ALERT_TESTS)


def test_the_old_thresholds_are_the_ones_in_force():
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    errors, slow, stalled = (
        rules["RelayBackfillErrors"],
        rules["RelayBackfillSlowBatches"],
        rules["RelayMigrationStalled"],
    )
    assert (errors["for"], errors["labels"]["severity"]) == ("5m", "warning")
    assert errors["expr"].strip().endswith("> 0")
    assert (slow["for"], slow["labels"]["severity"]) == ("10m", "warning")
    assert "histogram_quantile(0.99," in slow["expr"] and slow["expr"].strip().endswith("> 5")
    assert (stalled["for"], stalled["labels"]["severity"]) == ("72h", "info")
    assert "< 0.9" in stalled["expr"]


def test_alert_rules_name_only_series_relay_exports():
    exported = exported_names()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert metric_names_in(rule["expr"]) <= exported, rule["alert"]


# --- the Grafana dashboard ----------------------------------------------------------------------------


def test_the_dashboard_is_valid_json_with_the_old_and_the_new_panels():
    board = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in board["panels"]]
    for title in OLD_PANELS + NEW_PANELS:
        assert title in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "workspace"}
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


def test_dashboard_panels_do_not_overlap():
    occupied: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in occupied, (panel["title"], occupied.get((x, y)))
                occupied[(x, y)] = panel["title"]


def test_dashboard_queries_parse_and_name_only_series_relay_exports(tmp_path: Path):
    exported = exported_names()
    exprs = dashboard_exprs()
    for title, expr in exprs:
        assert metric_names_in(expr) <= exported, title
    # promtool parses every query as a recording rule (the dashboard variable replaced by a value).
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr.replace("$workspace", ".*")}
                    for n, (_title, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("title", OLD_PANELS)
def test_the_old_panels_keep_the_release_notes_windows(title: str):
    [expr] = [e for t, e in dashboard_exprs() if t == title]
    expected = {
        "Migration completion %": ("relay_backfill_migrated_total", 'reason="exists"'),
        "Error rate (5 min)": ("rate(relay_backfill_errors_total", "[5m]"),
        "Throughput (keys/s)": ("rate(relay_backfill_scanned_total", "[1m]"),
        "Batch duration p99": ("histogram_quantile(0.99", "relay_backfill_duration_seconds_bucket"),
    }[title]
    for fragment in expected:
        assert fragment in expr
