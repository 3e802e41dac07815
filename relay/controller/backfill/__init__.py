"""The backfill family: copy every legacy record into the new layout, resumable and rate-limited.

``rpcs`` (protobuf in and out) → ``engine`` (one per process: start, attach, control) → ``runner`` (the
batch loop of one backfill, with ``pacing``) → ``batch`` (SCAN, read, COPY_BATCH); ``state`` and ``store``
hold the record in Redis, ``events`` carries progress to every watcher.
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
