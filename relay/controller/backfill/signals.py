"""Why a backfill's batch loop stops between two batches (raised by its checks, caught by its run)."""

from __future__ import annotations


class Stopping(Exception):
    """This controller shuts down: the backfill is left for another controller to take over."""


class Cancelled(Exception):
    """An operator cancelled the backfill."""
