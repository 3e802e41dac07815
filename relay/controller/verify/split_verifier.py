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
from relay.controller.stages.outbox_rule import owed_writes
from relay.controller.verify.verifier import Record, VerificationRun, Verifier, _as_record, _own
from relay.core.keys import KEYS, NEW_JOB_PATTERN, KeyLayout
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

    async def _complete(self, run: VerificationRun) -> None:
        run.outbox_pending = await owed_writes(self._stores, run.workspace_id)
        await super()._complete(run)

    async def _scan_new(self, run: VerificationRun) -> tuple[int, list[bytes]]:
        pattern = self._keys.new_job(run.workspace_id, "*") if run.workspace_id else NEW_JOB_PATTERN
        return await self._scan.scan(run.cursor, pattern, run.batch_size)

    async def _both_copies(self, suspects: list[tuple[str, str]]) -> list[tuple[object, Record | None]]:
        pipe = self._legacy.pipeline(transaction=False)
        for job_id, _ in suspects:
            pipe.hgetall(self._keys.legacy_job(job_id))
        legacies = await pipe.execute(raise_on_error=False)
        pipe = self._redis.pipeline(transaction=False)
        for job_id, workspace_id in suspects:
            pipe.hgetall(self._keys.new_job(workspace_id, job_id))
        news = await pipe.execute(raise_on_error=False)
        return [
            (raw_legacy, _own(_as_record(raw_new), job_id, workspace_id))
            for (job_id, workspace_id), raw_legacy, raw_new in zip(suspects, legacies, news, strict=True)
        ]

    async def _new_key_facts(self, entries: list[tuple[str, str]]) -> list[tuple[Any, Any, Any]]:
        pipe = self._redis.pipeline(transaction=False)
        for workspace_id, job_id in entries:
            pipe.exists(self._keys.new_job(workspace_id, job_id))
            pipe.hget(self._keys.new_job(workspace_id, job_id), "enqueued_at")
        news = await pipe.execute(raise_on_error=False)
        pipe = self._legacy.pipeline(transaction=False)
        for _, job_id in entries:
            pipe.hget(self._keys.legacy_job(job_id), "workspace_id")
        legacies = await pipe.execute(raise_on_error=False)
        facts: list[tuple[Any, Any, Any]] = []
        for n, legacy_workspace in enumerate(legacies):
            exists, enqueued_at = news[2 * n], news[2 * n + 1]
            # The owner is not read here: a foreign record under the key counts as its workspace's.
            fields = enqueued_at if isinstance(enqueued_at, Exception) else [enqueued_at, None]
            facts.append((legacy_workspace, exists, fields))
        return facts


def verifier_of(stores: Stores, keys: KeyLayout = KEYS, metrics: Any = None) -> Verifier:
    """The verifier of the topology."""
    if stores.shared:
        return Verifier(stores.new, keys, metrics)  # type: ignore[arg-type]
    return SplitVerifier(stores, keys)
