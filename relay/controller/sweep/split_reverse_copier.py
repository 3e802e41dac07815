"""ReverseCopy across two stores (split topologies): new-layout records read from every primary of the
new store, copied back to the legacy Redis by ``REVERSE_COPY_RECORDS``, only forwards by revision.

The record is read from the new store and written to the legacy Redis in two steps; the script decides on
the legacy copy as it is at the write, so the legacy copy never goes backwards. A new record that moved on
after the read is behind in the legacy layout until the next run (the stage rules ask for a run that
started after legacy writes resumed, and JobService's own writes keep both layouts then).
"""

from __future__ import annotations

from redis.asyncio import Redis

from relay.controller.common.store_scan import StoreScan, stores_run_id
from relay.controller.sweep.loop import SweepRun
from relay.controller.sweep.reverse_copier import OUTCOMES, ReverseCopier
from relay.core import codec
from relay.core.codec import DATA_FIELDS
from relay.core.keys import KEYS, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.split_migration import REVERSE_COPY_RECORDS
from relay.core.stores import Stores, raise_store_failures


class SplitReverseCopier(ReverseCopier):
    def __init__(self, stores: Stores, keys: KeyLayout = KEYS):
        super().__init__(stores.new, keys)  # type: ignore[arg-type]
        self._stores = stores
        self._legacy: Redis = stores.legacy
        self._legacy_lua = LuaScripts(stores.legacy)
        self._scan_store = StoreScan(stores.new)

    async def _run_id(self) -> str:
        return await stores_run_id(self._stores, self._scan_store)

    async def _key_count(self) -> int:
        return await self._scan_store.dbsize()

    async def _scan(self, run: SweepRun) -> tuple[int, list[bytes]]:
        return await self._scan_store.scan(run.cursor, self._pattern(run), run.batch_size)

    async def _copy(self, run: SweepRun, entries: list[tuple[str, str, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for name, _, _ in entries:
            pipe.hgetall(name)
        records = raise_store_failures(await pipe.execute(raise_on_error=False))
        script_keys: list[str] = []
        args: list[str | bytes] = ["1" if run.dry_run else "0", str(len(DATA_FIELDS)), *DATA_FIELDS]
        for (_, workspace_id, job_id), raw in zip(entries, records, strict=True):
            if not isinstance(raw, dict) or not raw:
                continue  # gone since the SCAN, or not a hash
            script_keys.append(self._keys.legacy_job(job_id))
            flat = [item for pair in raw.items() for item in pair]
            rev = str(codec.revision(codec.decode(raw)))
            args += [workspace_id, job_id, rev, str(len(raw)), *flat]
        if script_keys:
            run.add_outcomes(OUTCOMES, await self._legacy_lua.call(REVERSE_COPY_RECORDS, script_keys, args))
