"""ClaimJob: find pending work across the workspaces' queues, fairly, and hand each job to one worker.

The rotation (``relay.core.lua.claims``) names the queue to serve; the queue's head moves to its
claiming list in one script; the job is then marked running if it is still pending (one script over both
layouts in the shared topology, the two-store update in a split one) and the claiming entry forgotten.
A claimer that dies between those steps leaves the entry in the claiming list, and the next claim that
serves that queue after the claim timeout puts it back at the head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from relay.core import codec
from relay.core.codec import Record
from relay.core.errors import NotFound
from relay.core.foreign import note_foreign
from relay.core.ids import is_job_id, is_workspace_id
from relay.core.keys import KEYS, LEGACY_QUEUE_MEMBER, KeyLayout
from relay.core.lua import LuaScripts
from relay.core.lua.claims import DROP_READY, FORGET_CLAIM, ROTATE, TAKE
from relay.core.lua.jobs import CLAIM
from relay.core.stage_store import StageView
from relay.core.stages import Stage
from relay.core.stores import Stores
from relay.core.telemetry import Metrics
from relay.services.bounds import CLAIM_ATTEMPTS, CLAIM_TIMEOUT_SECONDS, CLAIMS_RECOVERED_PER_CALL
from relay.services.split_writes import SplitWrites

log = logging.getLogger("relay.jobs")


@dataclass(frozen=True, slots=True)
class _Queue:
    """One queue of the rotation and the store it lives on."""

    name: str
    redis: Redis | RedisCluster
    pending: str
    claiming: str
    claim_times: str
    seq: str

    @property
    def is_legacy(self) -> bool:
        return self.name == LEGACY_QUEUE_MEMBER


class Claims:
    def __init__(
        self,
        stores: Stores,
        stages: StageView,
        split: SplitWrites | None,
        keys: KeyLayout = KEYS,
        claim_timeout_seconds: float = CLAIM_TIMEOUT_SECONDS,
        metrics: Metrics | None = None,
    ):
        self._metrics = metrics
        self._stores = stores
        self._stages = stages
        self._split = split
        self._keys = keys
        self._timeout = claim_timeout_seconds
        self._lua = LuaScripts(stores.new)
        self._legacy_lua = self._lua if stores.shared else LuaScripts(stores.legacy)

    def _queue(self, name: str) -> _Queue:
        k = self._keys
        if name == LEGACY_QUEUE_MEMBER:
            return _Queue(
                name,
                self._stores.legacy,
                k.legacy_queue,
                k.legacy_claiming,
                k.legacy_claim_times,
                k.legacy_queue_seq,
            )
        return _Queue(
            name, self._stores.new, k.queue(name), k.claiming(name), k.claim_times(name), k.queue_seq(name)
        )

    def _lua_of(self, queue: _Queue) -> LuaScripts:
        return self._legacy_lua if queue.is_legacy else self._lua

    async def claim(self) -> Record | None:
        """The head of the next queue in the rotation, now running; None when no queue holds work."""
        k = self._keys
        tried: set[str] = set()
        for _ in range(CLAIM_ATTEMPTS):
            picked = await self._lua.call(ROTATE, keys=[k.ready, k.ready_seq])
            if not picked:
                return None
            name = picked[0].decode()
            queue = self._queue(name)
            if not queue.is_legacy and not is_workspace_id(name):
                await self._lua.call(DROP_READY, keys=[k.ready, k.ready_seq], args=[name, 1 << 62])
                continue
            entry, seq, claiming = await self._lua_of(queue).call(
                TAKE,
                keys=[queue.pending, queue.claiming, queue.claim_times, queue.seq],
                args=[self._timeout, CLAIMS_RECOVERED_PER_CALL],
            )
            if not entry:
                dropped = int(claiming) == 0 and await self._lua.call(
                    DROP_READY, keys=[k.ready, k.ready_seq], args=[name, int(seq)]
                )
                if not dropped:
                    tried.add(name)  # still in the rotation, and empty for now
                if await self._every_queue_tried(tried):
                    return None
                continue
            record = await self._mark(queue, entry)
            if record is not None:
                return record
        return None

    async def _every_queue_tried(self, tried: set[str]) -> bool:
        return await self._stores.new.zcard(self._keys.ready) <= len(tried)

    async def _mark(self, queue: _Queue, entry: bytes) -> Record | None:
        """Mark the job behind a taken entry running, if it is still pending; then forget the entry."""
        text = entry.decode("utf-8", "replace")
        if queue.is_legacy:
            job_id = text
            workspace_id = await self._legacy_workspace_of(job_id)
        else:
            # Entries of older Relays' queues carried their workspace: <workspace_id>:<job_id>.
            workspace_id, job_id = queue.name, text.rpartition(":")[2]
        if not is_workspace_id(workspace_id) or not is_job_id(job_id):
            await self._forget(queue, entry)
            log.warning("dropped a queue entry with no valid job behind it")
            return None
        stage = self._stages.for_workspace(workspace_id).stage
        if self._split is None:
            raw = await self._lua_of(queue).call(
                CLAIM,
                keys=[
                    queue.claiming,
                    queue.claim_times,
                    self._keys.legacy_job(job_id),
                    self._keys.new_job(workspace_id, job_id),
                ],
                args=[entry, workspace_id, codec.now_iso(), *_layout_flags(stage)],
            )
            if raw[0] == b"1":
                note_foreign(self._metrics, job_id)  # not claimable here, left untouched
            raw = raw[1:]
            return codec.decode(dict(zip(raw[::2], raw[1::2], strict=True))) if raw else None
        now = codec.now_iso()

        def start(truth: Record) -> dict[str, str] | None:
            if truth.get("status") != "pending":
                return None
            return {"status": "running", "started_at": now}

        try:
            record = await self._split.update(workspace_id, job_id, stage, start)
        except NotFound:
            record = None
        await self._forget(queue, entry)
        return record

    async def _legacy_workspace_of(self, job_id: str) -> str:
        try:
            raw = await self._stores.legacy.hget(self._keys.legacy_job(job_id), "workspace_id")
        except Exception as exc:  # the legacy key is not a hash
            if "WRONGTYPE" in str(exc):
                return ""
            raise
        return (raw or b"").decode("utf-8", "replace")

    async def _forget(self, queue: _Queue, entry: bytes) -> None:
        await self._lua_of(queue).call(FORGET_CLAIM, keys=[queue.claiming, queue.claim_times], args=[entry])


def _layout_flags(stage: Stage) -> list[str]:
    """ARGV of UPDATE_STATUS and CLAIM: the layouts the stage uses, and which one its reads prefer."""
    return ["1" if flag else "0" for flag in (stage.reads_legacy, stage.reads_new, stage.prefers_new)]
