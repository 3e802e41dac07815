"""Another workspace's record under this workspace's key (a bad restore, a buggy tool): served to nobody,
changed by nobody, counted in ``relay_foreign_records`` and logged without its data (DESIGN.md, 2 and 9)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("relay.foreign")


def note_foreign(metrics: Any, job_id: str = "", layout: str = "new") -> None:
    """Count and log (the job id only) one foreign record met by a read, a write or a sweep."""
    if metrics is not None:
        metrics.foreign_records.add(1, {"layout": layout})
    log.warning(
        "a %s-layout key holds another workspace's record; treated as missing",
        layout,
        extra={"job_id": job_id},
    )
