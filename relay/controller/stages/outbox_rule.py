"""The stage rule of a split topology: NEW_ONLY stops reading and writing the legacy layout, which is
safe only when both layouts hold every acknowledged write. A write still owed to the other layout (an
outbox entry, ``docs/two-stores.md``) means they may not: the move waits until the repairer settled it.

The check runs before the stage change, not inside it: entries keep appearing while the stage writes both
layouts, and one written meanwhile belongs to a write in flight, which settles it (or the repairer does)
within seconds, while NEW_ONLY still reads the new layout it wrote first or caught up.
"""

from __future__ import annotations

from relay.core.errors import FailedPrecondition
from relay.core.keys import KEYS
from relay.core.stages import Stage
from relay.core.stores import Stores


async def owed_writes(stores: Stores, workspace_id: str = "") -> int:
    """Outbox entries still owed, of one workspace or (``""``) of all."""
    if stores.shared:
        return 0
    if workspace_id:
        legacy = sum(
            1
            for field in await stores.legacy.hkeys(KEYS.legacy_outbox)
            if field.decode("utf-8", "replace").partition(":")[0] == workspace_id
        )
        return legacy + await stores.new.hlen(KEYS.outbox(workspace_id))
    legacy = await stores.legacy.hlen(KEYS.legacy_outbox)
    new = 0
    for raw in await stores.new.zrange(KEYS.outbox_workspaces, 0, -1):
        new += await stores.new.hlen(KEYS.outbox(raw.decode()))
    return legacy + new


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
