"""The stage rule of a split topology: NEW_ONLY stops reading and writing the legacy layout, which is
safe only when both layouts hold every acknowledged write. A write still owed to the other layout (an
outbox entry, ``docs/two-stores.md``) means they may not: the move waits until the repairer settled it.

The check runs before the stage change, not inside it: entries keep appearing while the stage writes both
layouts, and one written meanwhile belongs to a write in flight, which settles it (or the repairer does)
within seconds, while NEW_ONLY still reads the new layout it wrote first or caught up.
"""

from __future__ import annotations

import asyncio

from relay.core.errors import FailedPrecondition
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.core.stores import Stores

#: How long an outbox entry must stay, unchanged, to count as owed: under live traffic every write leaves
#: one for the milliseconds between its steps.
SETTLE_SECONDS = 1.0


async def owed_writes(stores: Stores, workspace_id: str = "", settle_seconds: float = SETTLE_SECONDS) -> int:
    """Outbox entries still owed, of one workspace or (``""``) of all: those still there, unchanged,
    ``settle_seconds`` after they were first seen (a write in flight settles its own within that)."""
    if stores.shared:
        return 0
    first = await _entries(stores, workspace_id)
    if not first or settle_seconds <= 0:
        return len(first)
    await asyncio.sleep(settle_seconds)
    later = await _entries(stores, workspace_id)
    return sum(1 for key, entry in first.items() if later.get(key) == entry)


async def _entries(stores: Stores, workspace_id: str) -> dict[tuple[str, bytes], bytes]:
    out: dict[tuple[str, bytes], bytes] = {}
    for field, entry in (await stores.legacy.hgetall(KEYS.legacy_outbox)).items():
        if not workspace_id or field.decode("utf-8", "replace").partition(":")[0] == workspace_id:
            out[("legacy", field)] = entry
    if workspace_id:
        spaces = [workspace_id]
    else:
        spaces = [raw.decode() for raw in await stores.new.zrange(KEYS.outbox_workspaces, 0, -1)]
    for ws in spaces:
        for field, entry in (await stores.new.hgetall(KEYS.outbox(ws))).items():
            out[(ws, field)] = entry
    return out


async def refuse_while_writes_owed(stores: Stores, workspace_id: str, target: Stage) -> None:
    if target is not Stage.NEW_ONLY or stores.shared:
        return
    owed = await owed_writes(stores, workspace_id)
    if owed:
        scope = f"workspace {workspace_id}" if workspace_id else "the global default"
        raise FailedPrecondition(
            f"{owed} write(s) of {scope} are still owed to one of the two stores (outbox entries): NEW_ONLY "
            "stops reading the legacy layout, which may hold the only copy of such a write. The repairer "
            "settles them within seconds; check with `relayctl verify` (outbox_pending) and retry",
            reason="WRITES_OWED",
            metadata={"workspace_id": workspace_id, "owed": str(owed)},
        )
