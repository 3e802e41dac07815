"""Stage transition rules: which moves are safe, as pure functions of the stage, its history and evidence."""

from __future__ import annotations

import pytest

from relay.controller.stages.rules import (
    Evidence,
    Fact,
    RuleLimits,
    StageHistory,
    check_cleanup_allowed,
    check_transition,
    next_history,
    stricter_history,
)
from relay.core.stages import Stage

L, D, R, N, C = Stage.LEGACY_ONLY, Stage.DUAL_WRITE, Stage.READ_NEW, Stage.NEW_ONLY, Stage.LEGACY_CLEANED
LIMITS = RuleLimits(settle_seconds=2.0, verification_max_age_seconds=3600)
NOW = 100_000.0


def reason(current, target, history=StageHistory(), evidence=Evidence(), now=NOW, ws=""):  # noqa: B008
    refusal = check_transition(current, target, history, evidence, now, LIMITS, ws)
    return refusal.reason if refusal else None


def test_forward_moves_go_one_stage_at_a_time():
    assert reason(L, R) == "STAGE_SKIPPED"
    assert reason(D, N) == "STAGE_SKIPPED"
    assert reason(L, C) == "STAGE_SKIPPED"
    assert reason(L, D) is None


def test_staying_in_a_stage_is_always_allowed():
    for stage in Stage:
        assert reason(stage, stage) is None


def test_read_new_needs_a_backfill_that_started_after_dual_write_was_seen_everywhere():
    history = StageHistory(entered_at=1000, new_writes_since=1000)
    assert reason(D, R, history) == "BACKFILL_REQUIRED"
    too_early = Evidence(backfill=Fact(started_at=1001))  # within the settle time: a replica may lag
    assert reason(D, R, history, too_early) == "BACKFILL_REQUIRED"
    assert reason(D, R, history, Evidence(backfill=Fact(started_at=1002))) is None


def test_the_refusal_names_the_workspace_and_the_command_to_run():
    history = StageHistory(new_writes_since=1000)
    refusal = check_transition(D, R, history, Evidence(), NOW, LIMITS, "canary")
    assert refusal is not None
    assert "workspace canary" in refusal.message
    assert "relayctl backfill start --execute --workspace canary" in refusal.message


def test_new_only_needs_a_clean_recent_verification_started_after_dual_write():
    history = StageHistory(new_writes_since=1000)
    assert reason(R, N, history) == "VERIFICATION_REQUIRED"
    dirty = Fact(started_at=5000, finished_at=NOW - 10, clean=False)
    assert reason(R, N, history, Evidence(verification=dirty)) == "VERIFICATION_NOT_CLEAN"
    before_dual_write = Fact(started_at=999, finished_at=NOW - 10)
    assert reason(R, N, history, Evidence(verification=before_dual_write)) == "VERIFICATION_OUTDATED"
    old = Fact(started_at=5000, finished_at=NOW - 3601)
    assert reason(R, N, history, Evidence(verification=old)) == "VERIFICATION_OUTDATED"
    good = Fact(started_at=5000, finished_at=NOW - 10)
    assert reason(R, N, history, Evidence(verification=good)) is None


def test_legacy_cleaned_needs_a_complete_cleanup_started_after_legacy_writes_stopped():
    history = StageHistory(new_writes_since=1000, legacy_writes_stopped_at=5000)
    assert reason(N, C, history) == "CLEANUP_REQUIRED"
    early = Evidence(cleanup=Fact(started_at=5001))
    assert reason(N, C, history, early) == "CLEANUP_REQUIRED"
    kept_some = Evidence(cleanup=Fact(started_at=6000, complete=False))
    assert reason(N, C, history, kept_some) == "CLEANUP_REQUIRED"
    assert reason(N, C, history, Evidence(cleanup=Fact(started_at=6000))) is None


def test_leaving_new_only_for_a_stage_that_reads_legacy_needs_a_reverse_copy_after_the_stop():
    history = StageHistory(new_writes_since=1000, legacy_writes_stopped_at=5000)
    for source in (N, C):
        for target in (R, D):
            assert reason(source, target, history) == "REVERSE_COPY_REQUIRED"
            before = Evidence(reverse_copy=Fact(started_at=4000))
            assert reason(source, target, history, before) == "REVERSE_COPY_REQUIRED"
            incomplete = Evidence(reverse_copy=Fact(started_at=6000, complete=False))
            assert reason(source, target, history, incomplete) == "REVERSE_COPY_REQUIRED"
            assert reason(source, target, history, Evidence(reverse_copy=Fact(started_at=6000))) is None


def test_new_only_never_goes_straight_back_to_legacy_only():
    history = StageHistory(new_writes_since=1000, legacy_writes_stopped_at=5000)
    evidence = Evidence(reverse_copy=Fact(started_at=9000))
    assert reason(N, L, history, evidence) == "ROLLBACK_THROUGH_READ_NEW"
    assert reason(C, L, history, evidence) == "ROLLBACK_THROUGH_READ_NEW"


def test_legacy_only_after_a_new_only_period_needs_a_reverse_copy_after_legacy_writes_resumed():
    history = StageHistory(
        new_writes_since=1000, legacy_writes_stopped_at=5000, legacy_writes_resumed_at=7000
    )
    copied_while_new_only = Evidence(reverse_copy=Fact(started_at=6000))
    for source in (R, D):
        assert reason(source, L, history, copied_while_new_only) == "REVERSE_COPY_REQUIRED"
        assert reason(source, L, history, Evidence(reverse_copy=Fact(started_at=7002))) is None


def test_backward_moves_that_keep_reading_both_layouts_are_free():
    history = StageHistory(new_writes_since=1000)
    assert reason(R, D, history) is None
    assert reason(R, L, history) is None  # legacy writes never stopped: legacy holds everything
    assert reason(D, L, history) is None
    assert reason(C, N, StageHistory(legacy_writes_stopped_at=5000)) is None


def test_history_records_when_new_writes_began_and_legacy_writes_stopped_and_resumed():
    h = next_history(L, D, StageHistory(), 10)
    assert h == StageHistory(entered_at=10, new_writes_since=10)
    h = next_history(D, R, h, 20)
    assert h == StageHistory(entered_at=20, new_writes_since=10)
    h = next_history(R, N, h, 30)
    assert h.legacy_writes_stopped_at == 30 and h.new_writes_since == 10
    h = next_history(N, C, h, 40)
    assert h.legacy_writes_stopped_at == 30 and h.entered_at == 40
    h = next_history(C, R, h, 50)
    assert (h.legacy_writes_stopped_at, h.legacy_writes_resumed_at) == (30, 50)
    assert next_history(R, R, h, 60) == h
    assert next_history(R, L, h, 70) == StageHistory(entered_at=70)


def test_a_stricter_history_takes_the_later_moment_of_each_pair():
    a = StageHistory(entered_at=5, new_writes_since=1, legacy_writes_stopped_at=0, legacy_writes_resumed_at=0)
    b = StageHistory(entered_at=3, new_writes_since=2, legacy_writes_stopped_at=4, legacy_writes_resumed_at=6)
    assert stricter_history(a, b) == StageHistory(5, 2, 4, 6)


def test_history_round_trips_through_json():
    h = StageHistory(1.5, 2.5, 3.5, 4.5)
    assert StageHistory.from_json(h.to_json()) == h
    assert StageHistory.from_json(None) == StageHistory()


@pytest.mark.parametrize(
    ("default", "overrides", "verification", "expected"),
    [
        (R, {}, Fact(1, NOW), "STAGE_NOT_NEW_ONLY"),
        (N, {"canary": R}, Fact(1, NOW), "STAGE_NOT_NEW_ONLY"),
        (N, {}, None, "VERIFICATION_REQUIRED"),
        (N, {}, Fact(1, NOW, clean=False, legacy_covered=False), "VERIFICATION_NOT_CLEAN"),
        (N, {}, Fact(1, NOW - 3601), "VERIFICATION_OUTDATED"),
        (N, {"canary": C}, Fact(1, NOW, clean=False, legacy_covered=True), None),
    ],
)
def test_cleanup_needs_every_scope_new_only_and_a_recent_verification_covering_legacy(
    default, overrides, verification, expected
):
    refusal = check_cleanup_allowed(default, overrides, verification, NOW, LIMITS)
    assert (refusal.reason if refusal else None) == expected
