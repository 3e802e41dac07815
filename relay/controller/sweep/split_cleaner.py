"""CleanupLegacy across two stores (split topologies): the legacy keys on their own Redis, the new copies
on a cluster or another Redis.

The jobs phase reads each legacy record whole from the legacy Redis and its new copy from the new store,
decides as ``CLEANUP_LEGACY_JOBS`` does (delete only when the new copy is newer, or has the same rev and
the same data, and is not pending), then deletes on the legacy Redis with ``DELETE_UNCHANGED_LEGACY``,
which keeps any legacy record that is no longer exactly the one compared. The new copy only moves
forwards, so the one compared stays equal or newer. The queue and idempotency phases run on the legacy
Redis, where those keys live; the queue drain reads a job's status from its legacy copy (the new one is
in another store), which keeps an entry whose legacy copy still says pending: never a job lost, at worst
an entry left for the next run.
"""

from __future__ import annotations

from redis.asyncio import Redis

from relay.controller.common.redis_run import redis_run_id
from relay.controller.stages.control import StageControl
from relay.controller.sweep.cleaner import Cleaner
from relay.controller.sweep.loop import SweepRun
from relay.core import codec
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.split_migration import DELETE_UNCHANGED_LEGACY, READ_LEGACY_RECORDS
from relay.core.stores import Stores, raise_store_failures

DELETE_OUTCOMES = {"deleted": "done", "changed": "kept_differing"}


def _decode(flat: list[bytes]) -> dict[str, str]:
    return codec.decode({flat[i]: flat[i + 1] for i in range(0, len(flat), 2)})


def same_data(legacy: dict[str, str], new: dict[str, str], job_id: str, workspace_id: str) -> bool:
    """As the scripts' ``same_data``: a missing job_id or workspace_id reads as the job's own."""
    defaults = {"job_id": job_id, "workspace_id": workspace_id}
    return all(
        legacy.get(f, defaults.get(f, "")) == new.get(f, defaults.get(f, "")) for f in codec.DATA_FIELDS
    )


class SplitCleaner(Cleaner):
    def __init__(self, stores: Stores, stage_control: StageControl, keys: KeyLayout = KEYS):
        super().__init__(stores.new, stage_control, keys)  # type: ignore[arg-type]
        self._legacy: Redis = stores.legacy
        self._legacy_lua = LuaScripts(stores.legacy)

    async def _run_id(self) -> str:
        return await redis_run_id(self._legacy)  # every phase scans the legacy Redis

    async def _key_count(self) -> int:
        return await self._legacy.dbsize()

    def _jobs_batch(self, run: SweepRun) -> int:
        return run.batch_size  # this topology's scripts are not timed: the budget has nothing to go by

    async def _jobs_of(self, run: SweepRun, keys: list[bytes]) -> None:
        replies = await self._legacy_lua.call_ro(READ_LEGACY_RECORDS, keys)
        found: list[tuple[bytes, str, str, list[bytes], dict[str, str]]] = []
        for key, reply in zip(keys, replies, strict=True):
            job_id = KeyLayout.job_id_of_legacy(key.decode("utf-8", "replace"))
            if isinstance(reply, int) or not is_job_id(job_id):
                run.kept_invalid += 1  # not a hash, or a key no job id could make
                continue
            if not reply:
                continue  # deleted since the SCAN
            legacy = _decode(reply)
            workspace_id = legacy.get("workspace_id", "")
            if not is_workspace_id(workspace_id):
                run.kept_invalid += 1
                continue
            found.append((key, job_id, workspace_id, reply, legacy))
        if not found:
            return
        pipe = self._redis.pipeline(transaction=False)
        for _, job_id, workspace_id, _, _ in found:
            pipe.hgetall(self._keys.new_job(workspace_id, job_id))
        news = raise_store_failures(await pipe.execute(raise_on_error=False))
        doomed: list[tuple[bytes, list[bytes]]] = []
        for (key, job_id, workspace_id, flat, legacy), raw in zip(found, news, strict=True):
            new = codec.decode(raw) if isinstance(raw, dict) and raw else None
            if new is None:
                run.kept_missing_new += 1
            elif codec.revision(legacy) > codec.revision(new):
                run.kept_legacy_newer += 1
            elif codec.revision(legacy) == codec.revision(new) and not same_data(
                legacy, new, job_id, workspace_id
            ):
                run.kept_differing += 1
            elif new.get("status") == "pending":
                run.kept_pending += 1
            else:
                doomed.append((key, flat))
        if run.dry_run:
            run.done += len(doomed)
            return
        if not doomed:
            return
        args: list[bytes | str] = []
        for _, flat in doomed:
            args += [str(len(flat) // 2), *flat]
        outcomes = await self._legacy_lua.call(DELETE_UNCHANGED_LEGACY, [key for key, _ in doomed], args)
        run.add_outcomes(DELETE_OUTCOMES, outcomes)

    def _queue_new_key(self, workspace_id: str, job_id: str) -> str:
        # The new copy is in the other store: the legacy copy stands in for it (see the module doc).
        return self._keys.legacy_job(job_id)
