"""The backfill family: copy every legacy record into the new layout, resumable and rate-limited.

``rpcs`` (protobuf in and out) → ``engine`` (one per process: start, attach, control) → ``runner`` (the
batch loop of one backfill, with ``pacing``) → ``batch`` (SCAN, read, COPY_BATCH); ``state`` and ``store``
hold the record in Redis, ``events`` carries progress to every watcher. Across two stores,
``split_batch`` copies each batch per workspace slot (``docs/two-stores.md``).

Exactly-once counting: every batch's counts are added inside the same Lua step that copies it, and that
step refuses to run unless the state still carries this run's fencing token and the number of batches
it expects. A crash between two batches loses nothing and counts nothing twice: the next owner starts
from the recorded cursor. (SCAN itself may return a key twice when the keyspace is resized during the
scan; such a key is counted again, as skipped "exists".)

A Redis restart (or failover) voids the checkpoint: Redis seeds its hash function anew at every start, so
an old SCAN cursor covers other keys. SCAN steps are read with Redis' run_id on one connection (at least
every half second, and after the last step: ``read_ahead``); when the run_id differs from the one recorded
with the cursor, the scan begins again from "0" as a new pass (``BACKFILL_RESCAN``), so a completion
always follows a pass that ran wholly on one Redis run.

A dry run makes the same decisions with the same script run read-only, and keeps its state in this
process's memory: it writes nothing to Redis at all, so it takes no lease and cannot be watched or
controlled from another controller process.
"""

from relay.controller.backfill.engine import BackfillEngine
from relay.controller.backfill.rpcs import BackfillRpcs
from relay.controller.backfill.runner import BackfillRunner
from relay.controller.backfill.state import BackfillOptions, BackfillRecord, BackfillState, Counts
from relay.controller.backfill.store import BackfillStore, Fenced

__all__ = [
    "BackfillEngine",
    "BackfillOptions",
    "BackfillRecord",
    "BackfillRpcs",
    "BackfillRunner",
    "BackfillState",
    "BackfillStore",
    "Counts",
    "Fenced",
]
