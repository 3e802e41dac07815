"""How far one step of the job services goes at most: attempts, timeouts and batch sizes.

Kept together because they trade the same things (a caller's latency, Redis time per call) and are
tuned side by side.
"""

from __future__ import annotations

# --- claims (relay.services.job_claims) --------------------------------------------------------------
#: Queues served per ClaimJob call at most (entries of gone or finished jobs are dropped on the way).
CLAIM_ATTEMPTS = 64
#: Seconds after which an entry taken from a queue but never marked running goes back to its queue.
CLAIM_TIMEOUT_SECONDS = 30.0
#: Such entries put back per visit of a queue at most.
CLAIMS_RECOVERED_PER_CALL = 10

# --- writes to two stores (relay.services.split_writes) ----------------------------------------------
#: Compare-and-set attempts of one update before the caller is told to retry (ABORTED).
WRITE_ATTEMPTS = 16
#: Seconds a workspace stays named among those with an outbox after its last write that named it.
OUTBOX_NAME_GRACE_SECONDS = 60.0
#: Outbox entries a repair pass handles per outbox at most.
REPAIRS_PER_PASS = 500
