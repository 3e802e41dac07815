"""One load run, shared by ``bench.load`` and ``bench.chaos``: set up, drive, walk, check, report.

1. A private Redis is seeded with legacy data; ``relay serve jobs`` and ``relay serve controller`` start
   as separate processes (legacy-only by their environment).
2. The walk sets DUAL_WRITE, then the traffic process starts; a tenth of the way in, the backfill starts
   (rate-limited so that it ends about half-way), then READ_NEW, a verification, NEW_ONLY, a cleanup,
   LEGACY_CLEANED. A fault plan (chaos) runs beside it.
3. When the traffic has ended and the walk is done, every acknowledged write is read back (load_check),
   and the backfill's, verification's and cleanup's counts are compared with what was seeded.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.legacy_seed import SeedManifest, seed_legacy
from bench.load_check import check
from bench.load_plot import plot
from bench.load_traffic import percentile
from bench.migration_walk import Walk, WalkFailed
from bench.relay_cluster import Cluster
from relay.core.keys import LEGACY_JOB_PATTERN

RESULTS = Path(__file__).parent / "results"
#: The backfill starts this far into the load and, throttled, should end about this far in.
BACKFILL_START = 0.1
BACKFILL_END = 0.45

FaultPlan = Callable[[Cluster, float, float], Awaitable[list[dict[str, Any]]]]


@dataclass
class Scenario:
    name: str = "load"
    duration: float = 300.0
    workspaces: int = 40
    #: Legacy keys seeded; 0 picks 200 per second of load (at least 1,000).
    legacy_keys: int = 0
    callers: int = 12
    workers: int = 8
    #: Keys per second for the backfill; -1 picks one that ends it about half-way; 0 is unthrottled.
    backfill_rate: float = -1.0
    aof: bool = False
    out_dir: Path = RESULTS
    plot: bool = True
    seed: int = 7
    call_timeout: float = 5.0
    #: "single" (both layouts on one Redis) or "cluster" (the new layout on a Redis Cluster).
    topology: str = "single"
    extra: dict[str, Any] = field(default_factory=dict)

    def keys_to_seed(self) -> int:
        return self.legacy_keys or max(1000, int(200 * self.duration))

    def rate(self) -> float:
        if self.backfill_rate >= 0:
            return self.backfill_rate
        return round(self.keys_to_seed() / ((BACKFILL_END - BACKFILL_START) * self.duration), 1)


def _count_legacy(cluster: Cluster) -> list[str]:
    with cluster.redis_client() as client:
        return [k.decode() for k in client.scan_iter(match=LEGACY_JOB_PATTERN, count=5000)]


async def run_scenario(sc: Scenario, faults: FaultPlan | None = None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"relay-{sc.name}-"))
    cluster = Cluster.create(workdir, sc.workspaces, sc.aof, sc.topology)
    try:
        return await _run(sc, cluster, workdir, faults)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(sc: Scenario, cluster: Cluster, workdir: Path, faults: FaultPlan | None) -> dict[str, Any]:
    workspaces = sorted(cluster.keys.workspaces)
    with cluster.redis_client() as client:
        manifest = await asyncio.to_thread(seed_legacy, client, workspaces, sc.keys_to_seed(), sc.seed)
    await asyncio.to_thread(cluster.start)
    seeded_path = workdir / "seeded.json"
    seeded_path.write_text(
        json.dumps({j: [r["workspace_id"], r["status"]] for j, r in manifest.valid.items()})
    )
    traffic_out = workdir / "traffic.json"
    walk = Walk(cluster.controller_target, cluster.keys.admin, backfill_rate=sc.rate())
    marks: dict[str, Any] = {}
    traffic_started = asyncio.get_running_loop().create_future()

    async def start_traffic() -> None:
        start_at = time.time() + 1.0
        config = {
            "target": cluster.jobs_target,
            "keys": cluster.keys.to_json(),
            "duration": sc.duration,
            "start_at": start_at,
            "callers": sc.callers,
            "workers": sc.workers,
            "seeded_jobs": str(seeded_path),
            "stop_file": str(workdir / "stop-workers"),
            "out": str(traffic_out),
            "call_timeout": sc.call_timeout,
            "seed": sc.seed,
        }
        config_path = workdir / "traffic-config.json"
        config_path.write_text(json.dumps(config))
        marks["traffic"] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.load_traffic", str(config_path)
        )
        marks["t0"] = start_at
        traffic_started.set_result(start_at)
        await asyncio.sleep(max(0.0, start_at + BACKFILL_START * sc.duration - time.time()))

    async def after_backfill() -> None:
        marks["legacy_after_backfill"] = len(await asyncio.to_thread(_count_legacy, cluster))

    async def walk_all() -> None:
        try:
            await walk.run(before_backfill=start_traffic, after_backfill=after_backfill)
        except (WalkFailed, Exception) as exc:  # reported, never hidden: the run then fails
            marks["walk_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            if not traffic_started.done():
                await start_traffic()

    walk_task = asyncio.create_task(walk_all())
    t0 = await traffic_started
    fault_task = asyncio.create_task(faults(cluster, t0, t0 + sc.duration)) if faults else None
    fault_log = await fault_task if fault_task else []
    try:  # the walk may outlast the load: the workers keep draining the queues until it is done
        await asyncio.wait_for(asyncio.shield(walk_task), timeout=sc.duration + max(120.0, sc.duration))
    except TimeoutError:
        marks["walk_error"] = f"the walk had not finished {max(120.0, sc.duration):.0f} s after the load"
        walk_task.cancel()
    (workdir / "stop-workers").touch()
    await marks["traffic"].wait()
    traffic = json.loads(traffic_out.read_text())
    model_report = await check(cluster.jobs_target, cluster.keys, traffic, manifest)
    legacy_left = await asyncio.to_thread(_count_legacy, cluster)
    report = _report(sc, t0, traffic, walk, marks, manifest, model_report.to_json(), legacy_left, fault_log)
    _write(sc, report, traffic, walk, t0, fault_log)
    return report


def _report(
    sc: Scenario,
    t0: float,
    traffic: dict[str, Any],
    walk: Walk,
    marks: dict[str, Any],
    manifest: SeedManifest,
    model: dict[str, Any],
    legacy_left: list[str],
    fault_log: list[dict[str, Any]],
) -> dict[str, Any]:
    failures: list[str] = []
    if marks.get("walk_error"):
        failures.append(f"migration walk: {marks['walk_error']}")
    if walk.reached != "LEGACY_CLEANED":
        failures.append(f"the walk stopped at {walk.reached}")
    if traffic["unexpected_codes"]:
        failures.append(f"{traffic['unexpected_codes']} calls failed with an unexpected status")
    if traffic["violations"]:
        failures.append(f"live checks failed: {traffic['violations']}")
    if walk.unexpected:
        failures.append(f"operator calls failed unexpectedly: {walk.unexpected[:5]}")
    if not model["ok"]:
        failures.append(f"read-back check failed: {model['problems']}")
    counts = _count_checks(walk, marks, manifest, legacy_left, split=sc.topology != "single")
    failures += [f"counts: {name}" for name, ok in counts["checks"].items() if not ok]
    steps = [{**s, "t": round(s["t"] - t0, 2)} for s in walk.steps]
    return {
        "ok": not failures,
        "failures": failures,
        "scenario": {
            **asdict(sc),
            "out_dir": str(sc.out_dir),
            "legacy_keys": sc.keys_to_seed(),
            "backfill_rate": sc.rate(),
        },
        "traffic": {k: v for k, v in traffic.items() if k not in ("model", "series", "latencies")},
        "phases": phases(traffic, walk, t0, sc.duration),
        "acknowledged_jobs": len(traffic["model"]),
        "migration": {
            "reached": walk.reached,
            "steps": steps,
            "operator_codes": dict(walk.codes),
            "backfills_started": walk.backfills_started,
            "backfill_resumes": walk.backfill_resumes,
        },
        "counts": counts,
        "model_check": model,
        "faults": fault_log,
    }


def _count_checks(
    walk: Walk, marks: dict[str, Any], manifest: SeedManifest, legacy_left: list[str], split: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {"checks": {}}
    checks = out["checks"]
    seeded_valid, seeded_invalid = len(manifest.valid), len(manifest.invalid_keys)
    out["seeded"] = {"valid": seeded_valid, "invalid": seeded_invalid, "queued": manifest.queued}
    if walk.backfill is not None:
        p = walk.backfill.progress
        skipped = p.skipped_exists + p.skipped_newer + p.skipped_invalid
        out["backfill"] = {
            "scanned": p.scanned,
            "migrated": p.migrated,
            "skipped_exists": p.skipped_exists,
            "skipped_newer": p.skipped_newer,
            "skipped_invalid": p.skipped_invalid,
            "errors": p.errors,
            "rescans": p.rescans,
            "migrated_in_earlier_passes": p.migrated_in_earlier_passes,
            "legacy_keys_at_start": manifest.total,
            "legacy_keys_at_end": marks.get("legacy_after_backfill"),
            "seconds": round(
                walk.backfill.end_time.ToDatetime().timestamp()
                - walk.backfill.create_time.ToDatetime().timestamp(),
                2,
            ),
        }
        checks["backfill: migrated + skipped + errors == scanned"] = (
            p.migrated + skipped + p.errors == p.scanned
        )
        # Seeded records are the only ones without a new copy: each is migrated exactly once. After a Redis
        # restart the scan begins again (rescans): the last pass counts the records an earlier pass
        # migrated as "exists", and the state keeps how many those were.
        if split:
            # Across two stores a live update of a seeded job brings its new copy over whole before the
            # backfill gets there (which then counts it "exists"): every seeded record is migrated at most
            # once, and migrated or found there.
            checks["backfill: migrated == valid seeded records"] = (
                p.migrated + p.migrated_in_earlier_passes <= seeded_valid
                and p.migrated + p.migrated_in_earlier_passes + p.skipped_exists >= seeded_valid
            )
        else:
            checks["backfill: migrated == valid seeded records"] = (
                p.migrated + p.migrated_in_earlier_passes == seeded_valid
            )
        if p.rescans:
            checks["backfill: the last pass migrated no more than the seeded records left"] = (
                p.migrated <= seeded_valid and p.skipped_exists >= p.migrated_in_earlier_passes
            )
        checks["backfill: skipped invalid == invalid seeded keys"] = p.skipped_invalid == seeded_invalid
        checks["backfill: no errors"] = p.errors == 0
        # Live dual writes add legacy keys while it scans: SCAN sees each key present throughout.
        checks["backfill: scanned covers every key present at its start"] = p.scanned >= manifest.total
        checks["backfill: scanned within the keys present at its end"] = p.scanned <= (
            marks.get("legacy_after_backfill") or 0
        )
    else:
        checks["backfill completed"] = False
    if walk.verification is not None:
        v = walk.verification
        out["verification"] = {
            "clean": v.clean,
            "scanned_legacy": v.scanned_legacy,
            "scanned_new": v.scanned_new,
            "invalid_legacy": v.invalid_legacy,
            "seconds": round(v.end_time.ToDatetime().timestamp() - v.start_time.ToDatetime().timestamp(), 2),
        }
        out["verification"]["attempts"] = len(walk.verifications)
        checks["verification: clean"] = v.clean
        checks["verification: invalid legacy == invalid seeded keys"] = v.invalid_legacy == seeded_invalid
    else:
        checks["verification completed"] = False
    if walk.cleanups:
        c = walk.cleanups[-1]
        out["cleanup"] = {
            "runs": len(walk.cleanups),
            "scanned": c.scanned,
            "deleted": c.done,
            "kept_missing_new": c.kept_missing_new,
            "kept_legacy_newer": c.kept_legacy_newer,
            "kept_differing": c.kept_differing,
            "kept_pending": c.kept_pending,
            "kept_invalid": c.kept_invalid,
            "deleted_all_runs": sum(run.done for run in walk.cleanups),
            "errors": c.errors,
        }
        checks["cleanup: the last run kept no valid record"] = (
            c.kept_missing_new + c.kept_legacy_newer + c.kept_differing + c.kept_pending == 0
        )
        checks["cleanup: no errors"] = c.errors == 0
    else:
        checks["cleanup completed"] = False
    out["legacy_keys_left"] = len(legacy_left)
    checks["only the invalid legacy keys are left"] = sorted(legacy_left) == sorted(manifest.invalid_keys)
    return out


def per_second_rate(samples: list[dict[str, Any]], field_name: str, t0: float) -> dict[int, float]:
    """Keys per second, second by second, from progress samples: the cumulative count (runs added end to
    end) interpolated at each whole second, differenced. Samples close together make no spikes."""
    points: list[tuple[float, float]] = []
    offset, last, run = 0.0, 0.0, None
    for sample in samples:
        value = float(sample[field_name])
        if sample.get("run") != run or value < last:  # a new run counts from zero again
            offset += last if run is not None else 0.0
            run = sample.get("run")
        last = value
        points.append((sample["t"] - t0, offset + value))
    if len(points) < 2:
        return {}
    times = [p[0] for p in points]
    counts = [p[1] for p in points]

    def cumulative(x: float) -> float:
        if x <= times[0]:
            return counts[0]
        if x >= times[-1]:
            return counts[-1]
        i = bisect.bisect_right(times, x)
        (ta, ca), (tb, cb) = points[i - 1], points[i]
        return ca if tb == ta else ca + (cb - ca) * (x - ta) / (tb - ta)

    return {
        second: round(cumulative(second + 1) - cumulative(second), 1)
        for second in range(math.floor(times[0]), math.ceil(times[-1]))
    }


def phases(traffic: dict[str, Any], walk: Walk, t0: float, duration: float) -> list[dict[str, Any]]:
    """JobService figures over each stretch of the migration (only seconds inside the load window)."""
    first = {s["step"]: s["t"] for s in reversed(walk.steps)}
    last = {s["step"]: s["t"] for s in walk.steps}
    end_of_load = t0 + duration
    bounds = [
        ("before the backfill", t0, first.get("backfill start")),
        ("backfill", first.get("backfill start"), last.get("backfill completed")),
        ("verification", first.get("verify start"), last.get("verify completed")),
        ("cleanup", first.get("cleanup start"), last.get("cleanup completed")),
        ("legacy cleaned", last.get("stage LEGACY_CLEANED"), end_of_load),
    ]
    log = {int(k): v for k, v in traffic.get("latencies", {}).items()}
    out = []
    for name, start, end in bounds:
        if start is None or end is None:
            continue
        end = min(end, end_of_load)
        seconds = [s for s in log if start <= s and s + 1 <= end]
        if not seconds:
            continue
        by_rpc: dict[str, list[float]] = defaultdict(list)
        for second in seconds:
            for rpc, values in log[second].items():
                by_rpc[rpc].extend(values)
        everything = sorted(x for values in by_rpc.values() for x in values)
        out.append(
            {
                "phase": name,
                "seconds": len(seconds),
                "calls_per_s": round(len(everything) / len(seconds), 1),
                "p50_ms": round(percentile(everything, 50), 1),
                "p99_ms": round(percentile(everything, 99), 1),
                "p99_ms_by_rpc": {
                    rpc: round(percentile(sorted(v), 99), 1) for rpc, v in sorted(by_rpc.items())
                },
            }
        )
    return out


def _series(
    traffic: dict[str, Any], walk: Walk, t0: float, fault_log: list[dict[str, Any]]
) -> dict[str, Any]:
    rows = {r["t"] - int(t0): {**r, "t": r["t"] - int(t0)} for r in traffic["series"]}
    for op, column in (("backfill", "backfill_rate"), ("cleanup", "cleanup_rate")):
        samples = [s for s in walk.samples if s["op"] == op]
        for second, rate in per_second_rate(samples, "scanned", float(int(t0))).items():
            row = rows.setdefault(
                second, {"t": second, "calls": 0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": {}}
            )
            row[column] = rate
    spans: dict[str, list[float]] = {}
    for name in ("backfill", "verify", "cleanup"):
        start = next((s["t"] for s in walk.steps if s["step"] == f"{name} start"), None)
        end = next((s["t"] for s in reversed(walk.steps) if s["step"] == f"{name} completed"), None)
        if start is not None and end is not None:
            spans[name] = [round(start - t0, 2), round(end - t0, 2)]
    return {
        "t0": t0,
        "seconds": [rows[k] for k in sorted(rows) if k >= 0],
        "steps": [{"t": round(s["t"] - t0, 2), "step": s["step"]} for s in walk.steps],
        "spans": spans,
        "faults": [
            {"t": round(f["t"] - t0, 2), "kind": f["kind"], "seconds": f.get("seconds", 0)} for f in fault_log
        ],
        "operator_errors": [{"t": round(t - t0, 2), "code": code} for t, code in walk.errors],
    }


def _write(
    sc: Scenario,
    report: dict[str, Any],
    traffic: dict[str, Any],
    walk: Walk,
    t0: float,
    fault_log: list[dict[str, Any]],
) -> None:
    sc.out_dir.mkdir(parents=True, exist_ok=True)
    (sc.out_dir / f"{sc.name}.json").write_text(json.dumps(report, indent=2, default=str))
    series = _series(traffic, walk, t0, fault_log)
    (sc.out_dir / f"{sc.name}_timeseries.json").write_text(json.dumps(series))
    if sc.plot:
        title = (
            f"relay {sc.name}: {sc.duration:.0f} s, {sc.keys_to_seed():,} legacy keys, "
            f"backfill at {sc.rate():,.0f} keys/s"
        )
        plot(series, sc.out_dir / f"{sc.name}.png", title)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The run as a few readable lines."""
    lines = [
        "| RPC | calls/s | p50 ms | p99 ms | p99.9 ms | status codes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for rpc, r in report["traffic"]["rpcs"].items():
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))
        lines.append(
            f"| {rpc} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['p999_ms']:.1f} | {codes} |"
        )
    lines += [
        "",
        "| stretch of the migration | seconds | calls/s | p50 ms | p99 ms | p99 ms by RPC |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for phase in report["phases"]:
        by_rpc = ", ".join(f"{rpc} {v}" for rpc, v in phase["p99_ms_by_rpc"].items())
        lines.append(
            f"| {phase['phase']} | {phase['seconds']} | {phase['calls_per_s']} | {phase['p50_ms']} "
            f"| {phase['p99_ms']} | {by_rpc} |"
        )
    lines.append("")
    c = report["counts"]
    if "backfill" in c:
        b = c["backfill"]
        lines.append(
            f"- backfill: scanned {b['scanned']:,} migrated {b['migrated']:,} "
            f"skipped exists {b['skipped_exists']:,} newer {b['skipped_newer']:,} "
            f"invalid {b['skipped_invalid']:,} errors {b['errors']} in {b['seconds']} s "
            f"(legacy keys {b['legacy_keys_at_start']:,} at start, {b['legacy_keys_at_end']} at end)"
            + (
                f"; Redis restarted: {b['rescans']} rescan(s), {b['migrated_in_earlier_passes']:,} "
                "migrated by the discarded pass(es)"
                if b.get("rescans")
                else ""
            )
        )
    if "verification" in c:
        v = c["verification"]
        lines.append(
            f"- verification: clean={v['clean']} legacy {v['scanned_legacy']:,} new {v['scanned_new']:,} "
            f"invalid {v['invalid_legacy']} in {v['seconds']} s ({v.get('attempts', 1)} attempt(s))"
        )
    if "cleanup" in c:
        k = c["cleanup"]
        lines.append(
            f"- cleanup: {k['runs']} runs deleted {k['deleted_all_runs']:,}; the last kept invalid "
            f"{k['kept_invalid']} pending {k['kept_pending']} differing {k['kept_differing']} missing-new "
            f"{k['kept_missing_new']} legacy-newer {k['kept_legacy_newer']} errors {k['errors']}"
        )
    m = report["model_check"]
    lines.append(
        f"- read-back: {report['acknowledged_jobs']:,} acknowledged jobs; "
        f"{m['checked_in_lists']:,} compared in listings, {m['checked_by_get']:,} by GetJob, "
        f"{m['foreign_probes']:,} foreign probes; problems: "
        f"{m['problems'] or 'none'}"
    )
    t = report["traffic"]
    lines.append(
        f"- live: violations {t['violations'] or 'none'}; unexpected codes {t['unexpected_codes']}; "
        f"unknown outcomes: claims {t['unknown_claims']}, "
        f"executes {sum(t['unknown_execute_actions'].values())}, unresolved updates {t['unresolved_updates']}"
    )
    lines.append(
        f"- migration reached {report['migration']['reached']}; " + ("OK" if report["ok"] else "FAILED")
    )
    lines += [f"  FAILURE: {f}" for f in report["failures"]]
    return lines
