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
from relay.controller.sweep.cleaner import QUEUE_RETRIES, Cleaner, _readable_idempotency_key
from relay.controller.sweep.loop import SweepRun
from relay.core import codec
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import IDEMPOTENCY_PATTERN, KEYS, LEGACY_JOB_PATTERN, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.split_migration import DELETE_UNCHANGED_LEGACY, READ_LEGACY_RECORDS
from relay.core.lua.sweep import DRAIN_LEGACY_QUEUE_HEAD
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

    async def _jobs(self, run: SweepRun) -> int:
        cursor, keys = await self._legacy.scan(run.cursor, match=LEGACY_JOB_PATTERN, count=run.batch_size)
        run.scanned += len(keys)
        if keys:
            await self._jobs_of(run, keys)
        run.cursor = int(cursor)
        if run.cursor == 0:
            run.phase = "queue"
        return len(keys)

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
        for outcome in outcomes:
            counter = DELETE_OUTCOMES.get(outcome.decode())
            if counter:
                setattr(run, counter, getattr(run, counter) + 1)

    async def _queue(self, run: SweepRun) -> int:
        queue = self._keys.legacy_queue
        start = run.queue_offset if run.dry_run else 0
        entries = await self._legacy.lrange(queue, start, start + run.batch_size - 1)
        if not entries:
            run.phase = "idempotency"
            return 0
        pipe = self._legacy.pipeline(transaction=False)
        for entry in entries:
            pipe.hget(self._keys.legacy_job(entry.decode("utf-8", "replace")), "workspace_id")
        workspaces = await pipe.execute(raise_on_error=False)
        keys: list[str] = [queue]
        args: list[str] = ["1" if run.dry_run else "0", str(start)]
        for entry, workspace in zip(entries, workspaces, strict=True):
            job_id = entry.decode("utf-8", "replace")
            legacy = self._keys.legacy_job(job_id)
            workspace_id = workspace.decode("utf-8", "replace") if isinstance(workspace, bytes) else ""
            valid = is_workspace_id(workspace_id) and is_job_id(job_id)
            # The new copy is in the other store: the legacy copy stands in for it (see the module doc).
            keys += [legacy, legacy]
            args += [job_id, workspace_id, "1" if valid else "0"]
        removed, why = await self._legacy_lua.call(DRAIN_LEGACY_QUEUE_HEAD, keys=keys, args=args)
        run.queue_entries_removed += int(removed)
        run.queue_offset = start + int(removed)
        why = why.decode()
        run.queue_changes = run.queue_changes + 1 if why == "changed" else 0
        if why == "pending" or run.queue_changes > QUEUE_RETRIES:
            run.phase = "idempotency"
        return len(entries)

    async def _idempotency(self, run: SweepRun) -> int:
        cursor, keys = await self._legacy.scan(run.cursor, match=IDEMPOTENCY_PATTERN, count=run.batch_size)
        run.scanned += len(keys)
        unreadable = [key for key in keys if not _readable_idempotency_key(key.decode("utf-8", "replace"))]
        if unreadable and not run.dry_run:
            await self._legacy.unlink(*unreadable)
        run.idempotency_deleted += len(unreadable)
        run.cursor = int(cursor)
        if run.cursor == 0:
            run.phase = "done"
        return len(keys)
