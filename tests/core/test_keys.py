"""Every Redis key name, to the byte: the legacy names are the old system's and the new-layout names are
already in production stores, so no refactoring of ``relay.core.keys`` may change a single one."""

from __future__ import annotations

import inspect

import pytest

from relay.core import keys
from relay.core.keys import KEYS, KeyLayout

WS = "ws-a"
JOB = "job-1"

#: Each name of the layout, with the key it builds for workspace ``ws-a``, job ``job-1`` and the like.
KEY_NAMES: dict[str, str] = {
    "legacy_job": "ai:jobs:job-1",
    "new_job": "ai:job:{ws-a}:job-1",
    "new_job_pattern": "ai:job:{ws-a}:*",
    "job_index": "ai:jobindex:{ws-a}",
    "job_index_late": "ai:jobindex:{ws-a}:late",
    "idempotency": "ai:idempotency:ws-a:req-1",
    "new_idempotency": "ai:jobidem:{ws-a}:req-1",
    "legacy_queue": "ai:queue:pending",
    "queue": "ai:relay:{ws-a}:queue:pending",
    "claiming": "ai:relay:{ws-a}:queue:claiming",
    "claim_times": "ai:relay:{ws-a}:queue:claim-times",
    "queue_seq": "ai:relay:{ws-a}:queue:seq",
    "legacy_claiming": "ai:relay:legacy-queue:claiming",
    "legacy_claim_times": "ai:relay:legacy-queue:claim-times",
    "legacy_queue_seq": "ai:relay:legacy-queue:seq",
    "ready": "ai:relay:{_global}:queue:ready",
    "ready_seq": "ai:relay:{_global}:queue:ready-seq",
    "outbox": "ai:relay:{ws-a}:outbox",
    "legacy_outbox": "ai:relay:legacy-outbox",
    "outbox_workspaces": "ai:relay:{_global}:outbox:workspaces",
    "replication_marker": "ai:relay:{ws-a}:replicated",
    "stage": "ai:relay:{_global}:stage",
    "stage_channel": "ai:relay:{_global}:stage:changed",
    "stage_history": "ai:relay:{_global}:stage:history",
    "legacy_indexed": "ai:relay:{_global}:legacy-indexed",
    "migration_facts": "ai:relay:{_global}:migration:facts",
    "backfill_current": "ai:relay:{_global}:backfill:current",
    "backfill_lease": "ai:relay:{_global}:backfill:lease",
    "backfill_history": "ai:relay:{_global}:backfill:history",
    "backfill": "ai:relay:{_global}:backfill:bf-1",
    "backfill_invalid": "ai:relay:{_global}:backfill:bf-1:invalid",
    "backfill_events": "ai:relay:{_global}:backfill:bf-1:events",
    "backfill_applied": "ai:relay:{ws-a}:backfill:bf-1:applied",
    "verification_current": "ai:relay:{_global}:verification:current",
    "verification_last": "ai:relay:{_global}:verification:last",
    "cleanup_current": "ai:relay:{_global}:cleanup:current",
    "cleanup_last": "ai:relay:{_global}:cleanup:last",
    "reverse_copy_current": "ai:relay:{_global}:reverse-copy:current",
    "reverse_copy_last": "ai:relay:{_global}:reverse-copy:last",
    "operation_lease": "ai:relay:{_global}:operation:lease",
    "token_secret": "ai:relay:{_global}:page-token-secret",
    "api_key": "ai:relay:{_global}:apikey:abc123",
    "api_key_pattern": "ai:relay:{_global}:apikey:*",
}

#: The arguments a builder is given, by parameter name.
SAMPLE_ARGS = {
    "workspace_id": WS,
    "job_id": JOB,
    "client_request_id": "req-1",
    "backfill_id": "bf-1",
    "digest_hex": "abc123",
}

#: The layout's readers of key names (not builders).
PARSERS = {"job_id_of_legacy", "parse_new_job"}


def _built(name: str) -> str:
    member = getattr(KEYS, name)
    if isinstance(member, str):
        return member
    parameters = inspect.signature(member).parameters
    return member(*(SAMPLE_ARGS[p] for p in parameters))


@pytest.mark.parametrize(("name", "expected"), sorted(KEY_NAMES.items()))
def test_every_key_name_is_unchanged(name, expected):
    assert _built(name) == expected


def test_every_key_of_the_layout_is_pinned_here():
    public = {n for n in dir(KeyLayout) if not n.startswith("_")}
    assert public - PARSERS == set(KEY_NAMES)


def test_the_prefixes_and_patterns_are_unchanged():
    assert (
        keys.LEGACY_JOB_PREFIX,
        keys.LEGACY_JOB_PATTERN,
        keys.LEGACY_QUEUE,
        keys.IDEMPOTENCY_PREFIX,
        keys.IDEMPOTENCY_PATTERN,
        keys.LEGACY_BACKFILL_CURSOR,
        keys.LEGACY_BACKFILL_LAST_JOB,
        keys.NEW_JOB_PREFIX,
        keys.NEW_JOB_PATTERN,
        keys.JOB_INDEX_PREFIX,
        keys.NEW_IDEMPOTENCY_PREFIX,
        keys.RELAY_PREFIX,
        keys.GLOBAL_TAG,
        keys.GLOBAL_PREFIX,
        keys.LEGACY_QUEUE_MEMBER,
    ) == (
        "ai:jobs:",
        "ai:jobs:*",
        "ai:queue:pending",
        "ai:idempotency:",
        "ai:idempotency:*",
        "ai:backfill:cursor",
        "ai:backfill:last_job",
        "ai:job:",
        "ai:job:*",
        "ai:jobindex:",
        "ai:jobidem:",
        "ai:relay:",
        "{_global}",
        "ai:relay:{_global}:",
        "~legacy",
    )


def test_a_new_layout_job_key_parses_back_into_its_workspace_and_job():
    assert KeyLayout.parse_new_job(KEYS.new_job(WS, JOB)) == (WS, JOB)


def test_a_legacy_job_key_gives_back_its_job_id():
    assert KeyLayout.job_id_of_legacy(KEYS.legacy_job(JOB)) == JOB
