"""Which stage changes are safe: pure functions of the stage, its history and the operations completed.

A *scope* is the global default or one workspace's override. Its :class:`StageHistory` says when it
entered its stage, since when it has written the new layout, and when it stopped and resumed writing the
legacy layout. The :class:`Evidence` is the completed operations that cover the scope (a backfill,
a verification, a reverse copy, a cleanup; see ``relay.controller.stages.facts``).

Every operation counts only if it *started* at least ``settle_seconds`` after the change it depends
on, so that every JobService replica had seen that change before the operation looked at a key. The
rules, each refusing with a reason the operator can act on:

- Forward moves go one stage at a time.
- DUAL_WRITE -> READ_NEW needs a completed execute backfill covering the scope that started after
  dual-write began: records written to the legacy layout only, before dual-write, reach the new layout
  only through a backfill, and from READ_NEW on the new layout is the one trusted.
- READ_NEW -> NEW_ONLY needs a clean verification covering the scope, started after dual-write began,
  finished at most ``verification_max_age_seconds`` ago.
- NEW_ONLY -> LEGACY_CLEANED needs a complete cleanup (it kept no valid record) that started after legacy
  writes stopped.
- Leaving NEW_ONLY or LEGACY_CLEANED for a stage that reads the legacy layout needs a complete reverse copy
  covering the scope that started after legacy writes stopped (the legacy layout misses every job
  enqueued since, and lost its keys in a cleanup).
- Entering LEGACY_ONLY, the one stage that does not read the new layout, after legacy writes had stopped
  needs a complete reverse copy that started after legacy writes *resumed*: jobs enqueued while the stage
  was still new-only exist only in the new layout. So a rollback from NEW_ONLY goes through READ_NEW or
  DUAL_WRITE, with a reverse copy on each side of the resume.
- Any other backward move is free: DUAL_WRITE and READ_NEW read both layouts (the higher revision wins)
  and write every copy that exists, and LEGACY_ONLY is reached this way only while legacy writes never
  stopped, so the legacy layout holds every job at its latest revision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from relay.core.stages import Stage


@dataclass(frozen=True, slots=True)
class StageHistory:
    """When a scope's stage changed, in seconds since the epoch by Redis' clock (0: never)."""

    entered_at: float = 0.0
    new_writes_since: float = 0.0
    legacy_writes_stopped_at: float = 0.0
    legacy_writes_resumed_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes | None) -> StageHistory:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(**{name: float(data.get(name, 0.0) or 0.0) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Fact:
    """A completed operation. ``complete`` is False when it kept records it should have handled."""

    started_at: float
    finished_at: float = 0.0
    clean: bool = True
    legacy_covered: bool = True
    complete: bool = True
    operation_id: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The latest completed operations that cover one scope."""

    backfill: Fact | None = None
    verification: Fact | None = None
    reverse_copy: Fact | None = None
    cleanup: Fact | None = None


@dataclass(frozen=True, slots=True)
class RuleLimits:
    settle_seconds: float = 2.0
    verification_max_age_seconds: float = 6 * 3600


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    message: str


def at(moment: float) -> str:
    """A moment for an operator to read."""
    if moment <= 0:
        return "the beginning"
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def scope_name(workspace_id: str) -> str:
    return f"workspace {workspace_id}" if workspace_id else "the global default"


def _cover(workspace_id: str) -> str:
    return f"workspace {workspace_id} (or all workspaces)" if workspace_id else "all workspaces"


def _flag(workspace_id: str) -> str:
    return f" --workspace {workspace_id}" if workspace_id else ""


def _latest(fact: Fact | None, what: str) -> str:
    if fact is None:
        return f"no {what} covering it has completed"
    return f"the latest completed {what} covering it started at {at(fact.started_at)}"


def _complete_since(fact: Fact | None, since: float) -> bool:
    """Whether ``fact`` is a complete operation that started at or after ``since`` (a rule accepts it)."""
    return fact is not None and fact.complete and fact.started_at >= since


def _found(fact: Fact | None, what: str, left: str) -> str:
    """What the operator is told of the latest ``what``; ``left`` says what an incomplete one left behind."""
    found = _latest(fact, what)
    if fact is not None and not fact.complete:
        found += left
    return found


def check_transition(
    current: Stage,
    target: Stage,
    history: StageHistory,
    evidence: Evidence,
    now: float,
    limits: RuleLimits,
    workspace_id: str = "",
) -> Refusal | None:
    """None when ``current -> target`` is safe for the scope, else why not and what to do."""
    if target == current:
        return None
    scope = scope_name(workspace_id)
    settle = limits.settle_seconds
    if target > current:
        if target != current + 1:
            return Refusal(
                "STAGE_SKIPPED",
                f"{scope} is in {current.name}; stages move forward one at a time, so the next one is "
                f"{Stage(current + 1).name}",
            )
        if target is Stage.READ_NEW:
            return _needs_backfill(history, evidence, limits, workspace_id)
        if target is Stage.NEW_ONLY:
            return _needs_verification(history, evidence, now, limits, workspace_id)
        if target is Stage.LEGACY_CLEANED:
            return _needs_cleanup(history, evidence, limits, workspace_id)
        return None
    if not current.writes_legacy and target.reads_legacy:
        if target is Stage.LEGACY_ONLY:
            return Refusal(
                "ROLLBACK_THROUGH_READ_NEW",
                f"{scope} is in {current.name}: jobs enqueued until the stage changes exist only in the new "
                "layout, which LEGACY_ONLY does not read. Move back to READ_NEW first (after a reverse "
                "copy), run another reverse copy once legacy writes have resumed, then to LEGACY_ONLY",
            )
        why = (
            f"{scope} stopped writing the legacy layout at {at(history.legacy_writes_stopped_at)}: before it "
            "reads that layout again,"
        )
        return _needs_reverse_copy(evidence, history.legacy_writes_stopped_at + settle, workspace_id, why)
    if target is Stage.LEGACY_ONLY and history.legacy_writes_stopped_at > 0:
        why = (
            f"{scope} wrote the new layout only from {at(history.legacy_writes_stopped_at)} to "
            f"{at(history.legacy_writes_resumed_at)}; LEGACY_ONLY does not read the new layout, so"
        )
        return _needs_reverse_copy(evidence, history.legacy_writes_resumed_at + settle, workspace_id, why)
    return None


def _needs_backfill(
    history: StageHistory, evidence: Evidence, limits: RuleLimits, workspace_id: str
) -> Refusal | None:
    since = history.new_writes_since + limits.settle_seconds
    fact = evidence.backfill  # only a completed backfill is recorded, and it is always complete
    if _complete_since(fact, since):
        return None
    return Refusal(
        "BACKFILL_REQUIRED",
        f"{scope_name(workspace_id)} began dual-write at {at(history.new_writes_since)}; before reads "
        f"prefer the new layout, a completed backfill (--execute, not a dry run) of {_cover(workspace_id)} "
        f"must have started after {at(since)}, or records written to the legacy layout alone would be "
        f"hidden. Now {_latest(fact, 'backfill')}. Run `relayctl backfill start --execute"
        f"{_flag(workspace_id)}` and retry",
    )


def _needs_verification(
    history: StageHistory, evidence: Evidence, now: float, limits: RuleLimits, workspace_id: str
) -> Refusal | None:
    since = history.new_writes_since + limits.settle_seconds
    oldest = now - limits.verification_max_age_seconds
    fact = evidence.verification
    scope = scope_name(workspace_id)
    run = f"Run `relayctl verify{_flag(workspace_id)}` and retry"
    if fact is None:
        return Refusal(
            "VERIFICATION_REQUIRED",
            f"{scope} stops reading the legacy layout in NEW_ONLY; that needs a clean verification of "
            f"{_cover(workspace_id)}, and none has completed. {run}",
        )
    if not fact.clean:
        return Refusal(
            "VERIFICATION_NOT_CLEAN",
            f"the last verification covering {scope} (started {at(fact.started_at)}) found records missing, "
            "differing, unlisted or only in the new layout; NEW_ONLY would hide or change them. Run a "
            f"backfill or reverse copy as the diff shows, then `relayctl verify{_flag(workspace_id)}`",
        )
    if fact.started_at < since:
        return Refusal(
            "VERIFICATION_OUTDATED",
            f"the last clean verification covering {scope} started at {at(fact.started_at)}, before "
            f"{at(since)} (dual-write began at {at(history.new_writes_since)}), so it does not cover jobs "
            f"written to the legacy layout alone. {run}",
        )
    if fact.finished_at < oldest:
        return Refusal(
            "VERIFICATION_OUTDATED",
            f"the last clean verification covering {scope} finished at {at(fact.finished_at)}, more than "
            f"{limits.verification_max_age_seconds:.0f} s ago. {run}",
        )
    return None


def _needs_cleanup(
    history: StageHistory, evidence: Evidence, limits: RuleLimits, workspace_id: str
) -> Refusal | None:
    since = history.legacy_writes_stopped_at + limits.settle_seconds
    if _complete_since(evidence.cleanup, since):
        return None
    found = _found(
        evidence.cleanup, "cleanup", ", and it kept legacy records it could not delete yet (see its counts)"
    )
    return Refusal(
        "CLEANUP_REQUIRED",
        f"{scope_name(workspace_id)} can be marked LEGACY_CLEANED only after a complete cleanup (--execute) "
        f"that started after {at(since)}, when legacy writes had stopped everywhere; {found}. Run "
        "`relayctl cleanup --execute` and retry",
    )


def _needs_reverse_copy(evidence: Evidence, since: float, workspace_id: str, why: str) -> Refusal | None:
    """A refusal unless a complete reverse copy started after ``since``; ``why`` opens its message."""
    if _complete_since(evidence.reverse_copy, since):
        return None
    left = " and it left records it could not copy (see its counts)"
    return Refusal(
        "REVERSE_COPY_REQUIRED",
        f"{why} a complete reverse copy of {_cover(workspace_id)} must have started after {at(since)}, and "
        f"{_found(evidence.reverse_copy, 'reverse copy', left)}. Run `relayctl reverse-copy "
        f"--execute{_flag(workspace_id)}` and retry",
    )


def next_history(current: Stage, target: Stage, history: StageHistory, now: float) -> StageHistory:
    """The scope's history once it moves from ``current`` to ``target`` at ``now``."""
    if target == current:
        return history
    if target is Stage.LEGACY_ONLY:
        return StageHistory(entered_at=now)
    if current is Stage.LEGACY_ONLY:
        return StageHistory(entered_at=now, new_writes_since=now)
    moved = replace(history, entered_at=now)
    if current.writes_legacy and not target.writes_legacy:
        moved = replace(moved, legacy_writes_stopped_at=now)
    elif target.writes_legacy and not current.writes_legacy:
        moved = replace(moved, legacy_writes_resumed_at=now)
    return moved


def stricter_history(a: StageHistory, b: StageHistory) -> StageHistory:
    """One history that asks at least as much as either: used when a workspace stops having its own.

    Every rule asks for an operation that started after one of these moments, so the later moment of each
    pair is the stricter one.
    """
    return StageHistory(
        entered_at=max(a.entered_at, b.entered_at),
        new_writes_since=max(a.new_writes_since, b.new_writes_since),
        legacy_writes_stopped_at=max(a.legacy_writes_stopped_at, b.legacy_writes_stopped_at),
        legacy_writes_resumed_at=max(a.legacy_writes_resumed_at, b.legacy_writes_resumed_at),
    )


def check_cleanup_allowed(
    global_stage: Stage,
    overrides: dict[str, Stage],
    verification: Fact | None,
    now: float,
    limits: RuleLimits,
) -> Refusal | None:
    """Legacy keys may be deleted only when no stage reads or writes them and a recent verification
    found every valid legacy record in the new layout."""
    behind = sorted(ws for ws, stage in overrides.items() if stage < Stage.NEW_ONLY)
    if global_stage < Stage.NEW_ONLY or behind:
        where = f"the global default is {global_stage.name}" if global_stage < Stage.NEW_ONLY else ""
        if behind:
            shown = ", ".join(behind[:5]) + (f" and {len(behind) - 5} more" if len(behind) > 5 else "")
            where += ("; " if where else "") + f"workspaces before NEW_ONLY: {shown}"
        return Refusal(
            "STAGE_NOT_NEW_ONLY",
            f"legacy keys are still read or written ({where}); move every scope to NEW_ONLY first",
        )
    if verification is None:
        return Refusal(
            "VERIFICATION_REQUIRED",
            "no verification of all workspaces has completed; run `relayctl verify` first",
        )
    if not verification.legacy_covered:
        return Refusal(
            "VERIFICATION_NOT_CLEAN",
            f"the last verification of all workspaces (started {at(verification.started_at)}) found legacy "
            "records missing, differing or unlisted in the new layout; fix them and run `relayctl verify`",
        )
    if verification.finished_at < now - limits.verification_max_age_seconds:
        return Refusal(
            "VERIFICATION_OUTDATED",
            f"the last verification of all workspaces finished at {at(verification.finished_at)}, more "
            f"than {limits.verification_max_age_seconds:.0f} s ago; run `relayctl verify` again",
        )
    return None
