"""Every Redis key Relay reads or writes, built in one place.

The legacy names (``ai:jobs:``, ``ai:queue:pending``, ``ai:idempotency:``, ``ai:backfill:``) are the old
system's and must not change; they live on the legacy store, which is never a Redis Cluster.

Everything Relay adds lives under ``ai:job:``, ``ai:jobindex:``, ``ai:jobidem:`` and ``ai:relay:`` (so that
a ``SCAN ai:jobs:*`` of the legacy records never meets it) and carries a Redis Cluster hash tag in every
topology:

- a workspace's keys are tagged with the workspace id (``ai:job:{<workspace_id>}:<job_id>``), so that
  every JobService script touches one slot, and a later move of the data (RedisShake, RIOT) keeps a
  workspace together;
- Relay's own global state (stages, leases, backfill state, api keys, the claim rotation) shares the tag
  ``{_global}``, which no workspace id can be (they start with a letter or digit), so it lives in one
  slot and its scripts stay single-slot too.
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
NEW_IDEMPOTENCY_PREFIX = "ai:jobidem:"
RELAY_PREFIX = "ai:relay:"
#: The hash tag of Relay's global state.
GLOBAL_TAG = "{_global}"
GLOBAL_PREFIX = f"{RELAY_PREFIX}{GLOBAL_TAG}:"
#: The claim rotation's name for the legacy queue (not a workspace id: it starts with '~').
LEGACY_QUEUE_MEMBER = "~legacy"


def _tag(workspace_id: str) -> str:
    return "{" + workspace_id + "}"


def _in_workspace(suffix: str) -> staticmethod[[str], str]:
    """The builder of ``ai:relay:{<workspace_id>}:<suffix>``: Relay's own state of one workspace, kept in
    that workspace's slot beside its jobs."""

    def build(workspace_id: str) -> str:
        return f"{RELAY_PREFIX}{_tag(workspace_id)}:{suffix}"

    return staticmethod(build)


def _of_backfill(suffix: str = "") -> staticmethod[[str], str]:
    """The builder of ``ai:relay:{_global}:backfill:<backfill_id><suffix>``: one backfill's global state."""

    def build(backfill_id: str) -> str:
        return f"{GLOBAL_PREFIX}backfill:{backfill_id}{suffix}"

    return staticmethod(build)


def _claim_keys(suffix: str) -> tuple[staticmethod[[str], str], str]:
    """A key of the claim protocol in its two forms: a workspace's, in its slot, and the legacy queue's
    (``ai:relay:legacy-queue:<suffix>``, on the legacy store), which claimers serve the same way."""
    return _in_workspace("queue:" + suffix), f"{RELAY_PREFIX}legacy-queue:{suffix}"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    # --- job records -------------------------------------------------------------------------
    @staticmethod
    def legacy_job(job_id: str) -> str:
        return LEGACY_JOB_PREFIX + job_id

    @staticmethod
    def new_job(workspace_id: str, job_id: str) -> str:
        return f"{NEW_JOB_PREFIX}{_tag(workspace_id)}:{job_id}"

    @staticmethod
    def job_index(workspace_id: str) -> str:
        """A lexicographically ordered sorted set of ``<enqueue micros>|<job id>`` per workspace."""
        return JOB_INDEX_PREFIX + _tag(workspace_id)

    @staticmethod
    def job_index_late(workspace_id: str) -> str:
        """The index members a backfill added, scored by when (Redis TIME, micros).

        A listing that began before a backfill indexed a legacy job finds that job in its legacy phase,
        not in its index phase, so that it is listed exactly once.
        """
        return f"{JOB_INDEX_PREFIX}{_tag(workspace_id)}:late"

    @staticmethod
    def idempotency(workspace_id: str, client_request_id: str) -> str:
        """The legacy layout's idempotency key (the old system's name, on the legacy store)."""
        return f"{IDEMPOTENCY_PREFIX}{workspace_id}:{client_request_id}"

    @staticmethod
    def new_idempotency(workspace_id: str, client_request_id: str) -> str:
        """The new layout's idempotency key, in the workspace's slot."""
        return f"{NEW_IDEMPOTENCY_PREFIX}{_tag(workspace_id)}:{client_request_id}"

    @staticmethod
    def job_id_of_legacy(key: str) -> str:
        return key[len(LEGACY_JOB_PREFIX) :]

    @staticmethod
    def parse_new_job(key: str) -> tuple[str, str]:
        """(workspace_id, job_id) of a new-layout key."""
        rest = key[len(NEW_JOB_PREFIX) :]
        tag, _, job_id = rest.partition(":")
        return tag.strip("{}"), job_id

    @staticmethod
    def new_job_pattern(workspace_id: str) -> str:
        return f"{NEW_JOB_PREFIX}{_tag(workspace_id)}:*"

    # --- queues ------------------------------------------------------------------------------
    legacy_queue: str = LEGACY_QUEUE
    #: The workspace's pending jobs (job ids), FIFO, while the new layout is written.
    queue = _in_workspace("queue:pending")
    #: Entries taken from a queue by ClaimJob and not yet marked running.
    claiming, legacy_claiming = _claim_keys("claiming")
    #: Hash: claiming entry -> when it was taken (Redis TIME, seconds), to put back a dead claimer's.
    claim_times, legacy_claim_times = _claim_keys("claim-times")
    #: How many entries were ever pushed to a queue (for the claim rotation). The legacy one is never
    #: written: the old system pushes to the legacy queue without counting, so it is always served.
    queue_seq, legacy_queue_seq = _claim_keys("seq")
    #: Sorted set: the workspaces that may have pending work (and ``~legacy``), scored by when a claimer
    #: last served them, so claims go round the workspaces and a busy one never starves a quiet one.
    ready: str = GLOBAL_PREFIX + "queue:ready"
    #: Hash beside ``ready``: the queue sequence each ready workspace was last seen at ('inf' while an
    #: Execute is between its steps), so a claimer drops a workspace only when nothing was pushed since.
    ready_seq: str = GLOBAL_PREFIX + "queue:ready-seq"

    # --- writes across two stores -------------------------------------------------------------
    #: Hash: job id -> the replica write still owed to the legacy store (new layout written first).
    outbox = _in_workspace("outbox")
    #: Hash on the legacy store: ``<workspace_id>:<job_id>`` -> the replica write still owed to the new
    #: layout (legacy written first). The one key Relay adds to the legacy store, besides the claim lists.
    legacy_outbox: str = RELAY_PREFIX + "legacy-outbox"
    #: Sorted set: workspaces whose outbox may hold entries, scored by when a write last named them (before
    #: writing its entry, so a repairer always finds it).
    outbox_workspaces: str = GLOBAL_PREFIX + "outbox:workspaces"
    #: Written right before WAIT on one connection (``relay.core.replication``).
    replication_marker = _in_workspace("replicated")

    # --- migration state ---------------------------------------------------------------------
    #: Hash: field ``*`` is the global default stage, other fields are workspace overrides (JSON).
    stage: str = GLOBAL_PREFIX + "stage"
    stage_channel: str = GLOBAL_PREFIX + "stage:changed"
    #: Set by a completed full backfill: every legacy record is in the per-workspace indexes.
    legacy_indexed: str = GLOBAL_PREFIX + "legacy-indexed"
    backfill_current: str = GLOBAL_PREFIX + "backfill:current"
    backfill_lease: str = GLOBAL_PREFIX + "backfill:lease"
    backfill_history: str = GLOBAL_PREFIX + "backfill:history"
    verification_last: str = GLOBAL_PREFIX + "verification:last"
    cleanup_last: str = GLOBAL_PREFIX + "cleanup:last"
    operation_lease: str = GLOBAL_PREFIX + "operation:lease"
    #: Hash beside ``stage``, same fields: when each scope entered its stage and its layout history (JSON).
    stage_history: str = GLOBAL_PREFIX + "stage:history"
    #: Hash of completed migration operations that stage rules rely on (``relay.controller.migration_facts``).
    migration_facts: str = GLOBAL_PREFIX + "migration:facts"
    #: The running or interrupted verification, cleanup and reverse copy, with their checkpoints (JSON).
    verification_current: str = GLOBAL_PREFIX + "verification:current"
    cleanup_current: str = GLOBAL_PREFIX + "cleanup:current"
    reverse_copy_current: str = GLOBAL_PREFIX + "reverse-copy:current"
    reverse_copy_last: str = GLOBAL_PREFIX + "reverse-copy:last"

    backfill = _of_backfill()
    backfill_invalid = _of_backfill(":invalid")
    backfill_events = _of_backfill(":events")

    @staticmethod
    def backfill_applied(workspace_id: str, backfill_id: str) -> str:
        """Hash in the workspace's slot: batch number -> the outcomes a split-store backfill applied there,
        so that a batch replayed after a crash is counted once."""
        return f"{RELAY_PREFIX}{_tag(workspace_id)}:backfill:{backfill_id}:applied"

    # --- service state -----------------------------------------------------------------------
    #: The secret that signs page tokens, shared by every replica.
    token_secret: str = GLOBAL_PREFIX + "page-token-secret"

    @staticmethod
    def api_key(digest_hex: str) -> str:
        return f"{GLOBAL_PREFIX}apikey:{digest_hex}"

    api_key_pattern: str = GLOBAL_PREFIX + "apikey:*"


KEYS = KeyLayout()
