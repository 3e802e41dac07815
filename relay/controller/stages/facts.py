"""The completed migration operations that stage rules rely on, kept in one Redis hash.

``KEYS.migration_facts`` holds one field per kind of operation and scope (``<kind>:<scope>``, the scope a
workspace id or ``*`` for all workspaces), each a JSON object with ``started_at`` (seconds since the
epoch, best taken from Redis' clock with :func:`redis_now`). A field is only replaced by an operation that
started at the same time or later.

- ``backfill:<scope>``: a backfill that ran with ``--execute`` over every legacy key of the scope and
  completed (not a dry run, not stopped by ``max_keys``, not cancelled). Written by the backfill engine
  through :func:`record_backfill_completed`, the only thing it has to do for the stage rules.
- ``verification:<scope>``: the latest completed verification covering the scope, clean or not.
- ``reverse_copy:<scope>``: a completed reverse copy (``complete`` false when it left records behind).
- ``cleanup:*``: a completed execute cleanup (``complete`` false when it kept valid legacy records).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from relay.controller.stages.rules import Evidence, Fact
from relay.core.codec import parse_time
from relay.core.keys import KEYS
from relay.core.lua import LuaScripts
from relay.core.lua.facts import SET_FACTS

ALL = "*"


async def redis_now(redis: Redis) -> float:
    """Redis' clock, shared by every controller process, in seconds since the epoch."""
    seconds, micros = await redis.time()
    return seconds + micros / 1_000_000


def _seconds(moment: float | datetime | str) -> float:
    if isinstance(moment, datetime):
        return moment.timestamp()
    if isinstance(moment, str):
        parsed = parse_time(moment)
        if parsed is None:
            raise ValueError(f"not an ISO-8601 time: {moment!r}")
        return parsed.timestamp()
    return float(moment)


async def _record(redis: Redis, facts: Mapping[str, dict[str, Any]]) -> None:
    args: list[str] = []
    for field, value in facts.items():
        args += [field, json.dumps(value)]
    if args:
        await LuaScripts(redis).call(SET_FACTS, keys=[KEYS.migration_facts], args=args)


async def record_backfill_completed(
    redis: Redis, workspace_id: str, started_at: float | datetime | str, backfill_id: str = ""
) -> None:
    """Call once when a backfill with ``--execute`` completes after scanning every legacy key.

    ``workspace_id`` is its workspace filter ("" for all workspaces); ``started_at`` is when it started
    scanning (for a resumed backfill, when it first started). READ_NEW is allowed only after such a
    backfill that started once dual-write was in force everywhere.
    """
    scope = workspace_id or ALL
    started = _seconds(started_at)
    now = await redis_now(redis)
    await _record(
        redis, {f"backfill:{scope}": {"started_at": started, "finished_at": now, "id": backfill_id}}
    )


async def record_verification(
    redis: Redis,
    workspace_id: str,
    started_at: float,
    finished_at: float,
    verification_id: str,
    per_workspace: Mapping[str, tuple[bool, bool]],
) -> None:
    """Record a completed verification: for its scope, and for every workspace it saw
    (``per_workspace``: workspace -> (clean, legacy_covered))."""
    base = {"started_at": started_at, "finished_at": finished_at, "id": verification_id}
    facts: dict[str, dict[str, Any]] = {}
    for ws, (clean, covered) in per_workspace.items():
        if not workspace_id or ws == workspace_id:
            facts[f"verification:{ws}"] = {**base, "clean": clean, "legacy_covered": covered}
    if not workspace_id:
        facts[f"verification:{ALL}"] = {
            **base,
            "clean": all(c for c, _ in per_workspace.values()),
            "legacy_covered": all(c for _, c in per_workspace.values()),
        }
    elif workspace_id not in per_workspace:
        facts[f"verification:{workspace_id}"] = {**base, "clean": True, "legacy_covered": True}
    await _record(redis, facts)


async def record_reverse_copy_completed(
    redis: Redis, workspace_id: str, started_at: float, finished_at: float, operation_id: str, complete: bool
) -> None:
    fact = {"started_at": started_at, "finished_at": finished_at, "id": operation_id, "complete": complete}
    await _record(redis, {f"reverse_copy:{workspace_id or ALL}": fact})


async def record_cleanup_completed(
    redis: Redis, started_at: float, finished_at: float, operation_id: str, complete: bool
) -> None:
    fact = {"started_at": started_at, "finished_at": finished_at, "id": operation_id, "complete": complete}
    await _record(redis, {f"cleanup:{ALL}": fact})


def _fact(raw: bytes | None) -> Fact | None:
    if not raw:
        return None
    data = json.loads(raw)
    return Fact(
        started_at=float(data.get("started_at", 0.0)),
        finished_at=float(data.get("finished_at", 0.0)),
        clean=bool(data.get("clean", True)),
        legacy_covered=bool(data.get("legacy_covered", True)),
        complete=bool(data.get("complete", True)),
        operation_id=str(data.get("id", "")),
    )


def _later(own: Fact | None, everyone: Fact | None) -> Fact | None:
    if own is None or (everyone is not None and everyone.started_at > own.started_at):
        return everyone
    return own


async def read_evidence(redis: Redis, workspace_id: str) -> Evidence:
    """The latest completed operations covering one workspace ("" for the global default)."""
    scopes = [workspace_id, ALL] if workspace_id else [ALL]
    fields = [f"{kind}:{scope}" for kind in ("backfill", "verification", "reverse_copy") for scope in scopes]
    fields.append(f"cleanup:{ALL}")
    raw = dict(zip(fields, await redis.hmget(KEYS.migration_facts, fields), strict=True))
    own = workspace_id or ALL

    def pick(kind: str) -> Fact | None:
        return _later(_fact(raw[f"{kind}:{own}"]), _fact(raw[f"{kind}:{ALL}"]))

    verification = _fact(raw[f"verification:{own}"])
    everyone = _fact(raw[f"verification:{ALL}"])
    if (
        workspace_id
        and everyone is not None
        and (verification is None or everyone.started_at > verification.started_at)
    ):
        # A verification of all workspaces that started later and wrote nothing for this one saw no record
        # of it in either layout: there is nothing to differ.
        verification = Fact(everyone.started_at, everyone.finished_at, operation_id=everyone.operation_id)
    return Evidence(
        backfill=pick("backfill"),
        verification=verification,
        reverse_copy=pick("reverse_copy"),
        cleanup=_fact(raw[f"cleanup:{ALL}"]),
    )
