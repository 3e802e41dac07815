"""Where a backfill continues one that max_keys stopped, and where the next one will continue it.

A SCAN step from the cursor a backfill stopped at may return keys it already handled (when keys were
added since, the same cursor covers fewer buckets per step): until the scan passes ``skip_until``, those
keys are skipped.
"""

from __future__ import annotations

import json

from relay.controller.backfill.batch import Batch
from relay.controller.backfill.state import BackfillRecord, scan_position


class Continuation:
    def __init__(self, record: BackfillRecord):
        self._record = record
        self._keys = frozenset(k.encode("utf-8", "surrogateescape") for k in record.skip_keys)

    def clear(self) -> None:
        """A new pass from cursor "0" skips nothing."""
        self._keys = frozenset()

    def skip_at(self, cursor: str) -> frozenset[bytes] | None:
        """The keys the continued backfill handled, while a step from ``cursor`` may return them."""
        if self._keys and scan_position(cursor) < scan_position(self._record.skip_until, end=True):
            return self._keys
        return None

    def stop_point(self, batch: Batch) -> tuple[str, list[str], str] | None:
        """(cursor, keys to skip, until) where a continuation resumes when max_keys ends the scan in this
        batch, else None."""
        if not batch.limit_reached or (batch.cursor_to == "0" and not batch.cut):
            return None
        resume = batch.cursor_from if batch.cut else batch.cursor_to
        inherited = self.skip_at(resume) or frozenset()
        done = set(inherited)
        until = self._record.skip_until if inherited else resume
        if batch.cut:
            done.update(batch.skipped_keys, batch.done_keys)
            if scan_position(batch.cursor_to, end=True) > scan_position(until, end=True) or not inherited:
                until = batch.cursor_to
        return resume, sorted(k.decode("utf-8", "surrogateescape") for k in done), until

    def end_fields(self, batch: Batch) -> dict[str, str]:
        """The checkpoint fields of the batch that ends the scan (``batch.last``)."""
        fields = {"scan_done": "1"}
        stop = self.stop_point(batch)
        if stop is not None:
            fields["max_keys_reached"] = "1"
            fields["resume_cursor"] = stop[0]
            fields["resume_skip"] = json.dumps(stop[1])
            fields["resume_skip_until"] = stop[2]
        return fields

    def record_end(self, batch: Batch) -> None:
        """The record after the batch that ends the scan, as ``end_fields`` stored it."""
        rec = self._record
        rec.scan_done = True
        stop = self.stop_point(batch)
        if stop is not None:
            rec.max_keys_reached = True
            rec.resume_cursor, rec.resume_skip, rec.resume_skip_until = stop
