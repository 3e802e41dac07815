"""Every Redis key Relay reads or writes, built in one place.

The legacy names (``ai:jobs:``, ``ai:queue:pending``, ``ai:idempotency:``, ``ai:backfill:``) are the old
system's and must not change. Everything Relay adds lives under ``ai:job:``, ``ai:jobindex:`` and
``ai:relay:`` so that a ``SCAN ai:jobs:*`` of the legacy records never meets it.

``KeyLayout(cluster=True)`` wraps the workspace id in a hash tag so one workspace's keys share a Redis
Cluster slot; callers never build key strings themselves, so switching layouts touches only this module.
"""

from __future__ import annotations

from dataclasses import dataclass

LEGACY_JOB_PREFIX = "ai:jobs:"
LEGACY_JOB_PATTERN = LEGACY_JOB_PREFIX + "*"
LEGACY_QUEUE = "ai:queue:pending"
IDEMPOTENCY_PREFIX = "ai:idempotency:"
IDEMPOTENCY_PATTERN = IDEMPOTENCY_PREFIX + "*"
LEGACY_BACKFILL_CURSOR = "ai:backfill:cursor"
LEGACY_BACKFILL_LAST_JOB = "ai:backfill:last_job"

NEW_JOB_PREFIX = "ai:job:"
NEW_JOB_PATTERN = NEW_JOB_PREFIX + "*"
JOB_INDEX_PREFIX = "ai:jobindex:"
RELAY_PREFIX = "ai:relay:"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    cluster: bool = False

    def _ws(self, workspace_id: str) -> str:
        return "{" + workspace_id + "}" if self.cluster else workspace_id

    # --- job records -------------------------------------------------------------------------
    def legacy_job(self, job_id: str) -> str:
        return LEGACY_JOB_PREFIX + job_id

    def new_job(self, workspace_id: str, job_id: str) -> str:
        return f"{NEW_JOB_PREFIX}{self._ws(workspace_id)}:{job_id}"

    def job_index(self, workspace_id: str) -> str:
        """A lexicographically ordered sorted set of ``<enqueue micros>|<job id>`` per workspace."""
        return JOB_INDEX_PREFIX + self._ws(workspace_id)

    def job_index_late(self, workspace_id: str) -> str:
        """The index members a backfill added, scored by when (Redis TIME, micros).

        A listing that began before a backfill indexed a legacy job finds that job in its legacy phase,
        not in its index phase, so that it is listed exactly once.
        """
        return f"{JOB_INDEX_PREFIX}{self._ws(workspace_id)}:late"

    def idempotency(self, workspace_id: str, client_request_id: str) -> str:
        return f"{IDEMPOTENCY_PREFIX}{workspace_id}:{client_request_id}"

    @staticmethod
    def job_id_of_legacy(key: str) -> str:
        return key[len(LEGACY_JOB_PREFIX) :]

    def parse_new_job(self, key: str) -> tuple[str, str]:
        """(workspace_id, job_id) of a new-layout key."""
        rest = key[len(NEW_JOB_PREFIX) :]
        workspace_id, _, job_id = rest.partition(":")
        if self.cluster:
            workspace_id = workspace_id.strip("{}")
        return workspace_id, job_id

    # --- queues ------------------------------------------------------------------------------
    legacy_queue: str = LEGACY_QUEUE
    #: Pending jobs enqueued while the new layout is written, as ``<workspace_id>:<job_id>``.
    queue: str = RELAY_PREFIX + "queue:pending"
    #: Entries taken from a queue by ClaimJob and not yet marked running.
    claiming: str = RELAY_PREFIX + "queue:claiming"
    #: Hash: claiming entry -> when it was taken (Redis TIME, seconds), to put back a dead claimer's entry.
    claim_times: str = RELAY_PREFIX + "queue:claim-times"

    # --- migration state ---------------------------------------------------------------------
    #: Hash: field ``*`` is the global default stage, other fields are workspace overrides (JSON).
    stage: str = RELAY_PREFIX + "stage"
    stage_channel: str = RELAY_PREFIX + "stage:changed"
    #: Set by a completed full backfill: every legacy record is in the per-workspace indexes.
    legacy_indexed: str = RELAY_PREFIX + "legacy-indexed"
    backfill_current: str = RELAY_PREFIX + "backfill:current"
    backfill_lease: str = RELAY_PREFIX + "backfill:lease"
    backfill_history: str = RELAY_PREFIX + "backfill:history"
    verification_last: str = RELAY_PREFIX + "verification:last"
    cleanup_last: str = RELAY_PREFIX + "cleanup:last"
    operation_lease: str = RELAY_PREFIX + "operation:lease"
    #: Hash beside ``stage``, same fields: when each scope entered its stage and its layout history (JSON).
    stage_history: str = RELAY_PREFIX + "stage:history"
    #: Hash of completed migration operations that stage rules rely on (``relay.controller.migration_facts``).
    migration_facts: str = RELAY_PREFIX + "migration:facts"
    #: The running or interrupted verification, cleanup and reverse copy, with their checkpoints (JSON).
    verification_current: str = RELAY_PREFIX + "verification:current"
    cleanup_current: str = RELAY_PREFIX + "cleanup:current"
    reverse_copy_current: str = RELAY_PREFIX + "reverse-copy:current"
    reverse_copy_last: str = RELAY_PREFIX + "reverse-copy:last"

    def backfill(self, backfill_id: str) -> str:
        return f"{RELAY_PREFIX}backfill:{backfill_id}"

    def backfill_invalid(self, backfill_id: str) -> str:
        return f"{RELAY_PREFIX}backfill:{backfill_id}:invalid"

    def backfill_events(self, backfill_id: str) -> str:
        return f"{RELAY_PREFIX}backfill:{backfill_id}:events"

    # --- service state -----------------------------------------------------------------------
    #: The secret that signs page tokens, shared by every replica.
    token_secret: str = RELAY_PREFIX + "page-token-secret"

    def api_key(self, digest_hex: str) -> str:
        return f"{RELAY_PREFIX}apikey:{digest_hex}"

    api_key_pattern: str = RELAY_PREFIX + "apikey:*"


KEYS = KeyLayout()
