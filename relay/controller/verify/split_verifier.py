"""Verification across two stores (split topologies): the legacy records on their own Redis, the new
layout on a cluster or another Redis.

The same two passes as ``Verifier``: the legacy pass SCANs the legacy Redis and reads each record's new
copy from the new store; the new pass SCANs every primary of the new store (``StoreScan``) for copies
without a legacy record. No MULTI spans the stores, so a suspect is read again legacy first, then new:
every write brings the new copy to at least the legacy copy's revision (the authoritative layout first,
the replica caught up after), so a write between the two reads shows as *legacy behind* or *matching*,
never as a difference. Writes still owed to one of the stores (outbox entries) are reported as
``outbox_pending``; a run with any is not clean.
"""

from __future__ import annotations

from typing import Any

from relay.controller.common.store_scan import StoreScan, stores_run_id
from relay.controller.common.throttle import TokenBucket
from relay.controller.stages.outbox_rule import owed_writes
from relay.controller.verify.verifier import Record, VerificationRun, Verifier, _as_record, _own
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, LEGACY_JOB_PATTERN, NEW_JOB_PATTERN, KeyLayout
from relay.core.stores import Stores


class SplitVerifier(Verifier):
    def __init__(self, stores: Stores, keys: KeyLayout = KEYS):
        super().__init__(stores.new, keys)  # type: ignore[arg-type]
        self._stores = stores
        self._legacy = stores.legacy
        self._scan = StoreScan(stores.new)

    async def _run_id(self) -> str:
        return await stores_run_id(self._stores, self._scan)

    async def _key_count(self) -> int:
        return await self._stores.legacy.dbsize() + await self._scan.dbsize()

    async def _finish(self, run: VerificationRun) -> None:
        run.outbox_pending = await owed_writes(self._stores, run.workspace_id)
        await super()._finish(run)

    async def _batch(self, run: VerificationRun, bucket: TokenBucket) -> None:
        if run.phase == "legacy":
            cursor, keys = await self._legacy.scan(run.cursor, match=LEGACY_JOB_PATTERN, count=run.batch_size)
            await bucket.take(len(keys))
            await self._legacy_keys(run, keys)
            run.cursor = int(cursor)
        else:
            pattern = self._keys.new_job(run.workspace_id, "*") if run.workspace_id else NEW_JOB_PATTERN
            run.cursor, keys = await self._scan.scan(run.cursor, pattern, run.batch_size)
            await bucket.take(len(keys))
            await self._new_keys(run, keys)
        if run.cursor == 0:
            run.phase = "new" if run.phase == "legacy" else "done"

    async def _reread(self, suspects: list[tuple[str, str]]) -> list[tuple[str, str, Record | None, Record]]:
        if not suspects:
            return []
        pipe = self._legacy.pipeline(transaction=False)
        for job_id, _ in suspects:
            pipe.hgetall(self._keys.legacy_job(job_id))
        legacies = await pipe.execute(raise_on_error=False)
        pipe = self._redis.pipeline(transaction=False)
        for job_id, workspace_id in suspects:
            pipe.hgetall(self._keys.new_job(workspace_id, job_id))
        news = await pipe.execute(raise_on_error=False)
        out: list[tuple[str, str, Record | None, Record]] = []
        for (job_id, workspace_id), raw_legacy, raw_new in zip(suspects, legacies, news, strict=True):
            legacy = _own(_as_record(raw_legacy), job_id, workspace_id)
            new = _own(_as_record(raw_new), job_id, workspace_id)
            if legacy is not None and legacy.get("workspace_id") == workspace_id:
                out.append((job_id, workspace_id, new, legacy))
        return out

    async def _new_keys(self, run: VerificationRun, keys: list[bytes]) -> None:
        entries: list[tuple[str, str]] = []
        for key in keys:
            run.scanned_new += 1
            workspace_id, job_id = self._keys.parse_new_job(key.decode("utf-8", "replace"))
            mine = not run.workspace_id or workspace_id == run.workspace_id
            if mine and is_workspace_id(workspace_id) and is_job_id(job_id):
                entries.append((workspace_id, job_id))
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for workspace_id, job_id in entries:
            pipe.exists(self._keys.new_job(workspace_id, job_id))
            pipe.hget(self._keys.new_job(workspace_id, job_id), "enqueued_at")
        news = await pipe.execute(raise_on_error=False)
        pipe = self._legacy.pipeline(transaction=False)
        for _, job_id in entries:
            pipe.hget(self._keys.legacy_job(job_id), "workspace_id")
        legacies = await pipe.execute(raise_on_error=False)
        alone: list[tuple[str, str, Record]] = []
        for n, (workspace_id, job_id) in enumerate(entries):
            exists, enqueued_at, legacy_workspace = news[2 * n], news[2 * n + 1], legacies[n]
            if not exists or isinstance(enqueued_at, Exception):
                continue  # deleted since the SCAN, or not a hash: not a job record of ours
            if (
                isinstance(legacy_workspace, bytes)
                and legacy_workspace.decode("utf-8", "replace") == workspace_id
            ):
                continue  # compared in the legacy pass
            counts = run.counts(workspace_id)
            counts.only_in_new += 1
            counts.sample(job_id)
            when = enqueued_at.decode("utf-8", "replace") if enqueued_at else ""
            alone.append((job_id, workspace_id, {"enqueued_at": when}))
        await self._check_listed(run, alone)


def verifier_of(stores: Stores, keys: KeyLayout = KEYS, metrics: Any = None) -> Verifier:
    """The verifier of the topology."""
    if stores.shared:
        return Verifier(stores.new, keys, metrics)  # type: ignore[arg-type]
    return SplitVerifier(stores, keys)
