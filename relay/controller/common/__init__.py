"""Pieces every controller family shares: leases, operation ids, throttles, the Redis run id."""

from relay.controller.common.lease import Lease
from relay.controller.common.throttle import LatencyBrake, TokenBucket

__all__ = ["LatencyBrake", "Lease", "TokenBucket"]
