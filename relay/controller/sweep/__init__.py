"""The sweep family: operations that walk the legacy keyspace once (cleanup, reverse copy).

``loop`` is the resumable, rate-limited sweep both share; ``cleaner`` and ``reverse_copier`` are its two
kinds; ``rpcs`` converts to protobuf.
"""

from relay.controller.sweep.cleaner import Cleaner
from relay.controller.sweep.loop import Sweep, SweepRun, SweepState
from relay.controller.sweep.reverse_copier import ReverseCopier
from relay.controller.sweep.rpcs import CleanupRpcs

__all__ = ["Cleaner", "CleanupRpcs", "ReverseCopier", "Sweep", "SweepRun", "SweepState"]
