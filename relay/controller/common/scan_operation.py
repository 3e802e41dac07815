"""The loop every long operation over the keyspace runs on: verification, cleanup and reverse copy.

A run handles one batch of its current phase at a time, phase after phase, and is checkpointed after every
batch under its kind's ``current`` key (``resume`` continues from there, also after its controller died);
a completed run is stored under its ``last`` key. An execute run holds the operation lease; a dry run
takes none and writes nothing, so it cannot be resumed. Between batches a run stops when its lease is
lost or when its kind says so (``stop_reason``). A SCAN cursor does not survive a Redis restart (Redis
seeds its hash function anew at every start): a run that straddles one fails instead of reporting what
it cannot know, and its resume begins again from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, TypeVar

from redis.asyncio import Redis

from relay.controller.backfill.state import check_batch_size, check_rate_limit
from relay.controller.common.lease import Lease
from relay.controller.common.operation import new_operation_id, take_operation_lease
from relay.controller.common.redis_run import redis_run_id
from relay.controller.common.throttle import TokenBucket
from relay.controller.stages.facts import redis_now
from relay.core.errors import FailedPrecondition, InvalidArgument
from relay.core.keys import KeyLayout
from relay.core.rpc_errors import TRANSIENT_STORE_ERRORS

DEFAULT_BATCH = 1000
#: The values every operation's lifecycle stores for the states the loop moves a run through.
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"
LEASE_LOST = "lost the operation lease; resume to continue"

log = logging.getLogger("relay.migration")


@dataclass(kw_only=True)
class ScanRun:
    """What the loop keeps of every run; a kind's run adds its id (the first field) and its counts."""

    #: The options it was started with (a resume may change the pace).
    dry_run: bool = False
    workspace_id: str = ""
    rate_limit: float = 0.0
    batch_size: int = DEFAULT_BATCH
    #: Where its scan stands, on which Redis run (INFO server run_id): a cursor does not survive a restart.
    phase: str = ""
    cursor: int = 0
    run_id: str = ""
    started_at: float = 0.0
    total_estimate: int = 0
    #: How it went: ``rate`` counts keys examined per second since it (or its resume) started.
    state: str = RUNNING
    reason: str = ""
    rate: float = 0.0
    ended_at: float = 0.0

    #: The field holding the operation id (the lease holder's name; what the logs call the run).
    id_field: ClassVar[str]
    #: The counts of keys examined so far, measured against ``total_estimate``.
    examined_fields: ClassVar[tuple[str, ...]]

    @property
    def ident(self) -> str:
        return str(getattr(self, self.id_field))

    @property
    def examined(self) -> int:
        return sum(getattr(self, name) for name in self.examined_fields)

    @property
    def percent_done(self) -> float:
        if self.state == COMPLETED:
            return 100.0
        if self.total_estimate <= 0:
            return 0.0
        return min(99.9, 100.0 * self.examined / self.total_estimate)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls: type[R], text: str | bytes) -> R:
        return cls(**cls.fields_of(json.loads(text)))

    @classmethod
    def fields_of(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The constructor's arguments from the stored JSON (a kind with nested counts rebuilds them)."""
        return data


R = TypeVar("R", bound=ScanRun)


def check_pace(rate_limit: float, batch_size: int) -> None:
    check_rate_limit(rate_limit)
    check_batch_size(batch_size)


class ScanOperation(Generic[R]):
    """One kind of operation; a subclass names its keys, phases and states and handles one batch."""

    kind = "operation"
    #: What messages call a run of this kind (its kind when empty).
    noun = ""
    run_type: ClassVar[type[ScanRun]]
    phases: tuple[str, ...] = ("",)
    #: The state and event of a run that stopped between batches (resume continues it).
    stopped: ClassVar[tuple[str, str]]
    #: The state of a run whose caller went away (resume continues it).
    went_away: ClassVar[str]
    #: The reason of a run that failed because Redis restarted under it.
    restarted: ClassVar[str]

    def __init__(self, redis: Redis, keys: KeyLayout, *, current_key: str, last_key: str):
        self._redis = redis
        self._keys = keys
        #: Where an unfinished run is checkpointed, and where a completed one is stored.
        self.current_key = current_key
        self.last_key = last_key

    # --- what a subclass provides -------------------------------------------------------------
    async def preconditions(self, run: R) -> None:
        """Raise FailedPrecondition when an execute may not start."""

    async def stop_reason(self, run: R) -> str:
        """Checked between the batches of an execute run: a reason to stop, or ''."""
        return ""

    async def step(self, run: R) -> int:
        """Handle one batch of the current phase; advance ``run.phase`` when it is over. Returns keys seen."""
        raise NotImplementedError

    async def begin_again(self, run: R) -> None:
        """Put the checkpoint back at the start of the first phase, for a pass on the current Redis run."""
        raise NotImplementedError

    async def finished(self, run: R) -> None:
        """Record what a completed execute run establishes."""

    def summary(self, run: R) -> str:
        """What the log says of a completed run."""
        return ""

    async def _run_id(self) -> str:
        """The run of the Redis whose SCAN cursor the checkpoint holds."""
        return await redis_run_id(self._redis)

    async def _key_count(self) -> int:
        return await self._redis.dbsize()

    # --- starting and resuming ----------------------------------------------------------------
    async def _load(self, key: str) -> R | None:
        raw = await self._redis.get(key)
        return self.run_type.from_json(raw) if raw else None  # type: ignore[return-value]

    async def _prepare(
        self, *, workspace_id: str, rate_limit: float, batch_size: int, resume: bool, **fresh: Any
    ) -> R:
        """A new run with these (validated) options and ``fresh`` fields, or the unfinished one resumed."""
        if not resume:
            return self.run_type(  # type: ignore[return-value]
                new_operation_id(self.kind),
                workspace_id=workspace_id,
                rate_limit=rate_limit,
                batch_size=batch_size or DEFAULT_BATCH,
                phase=self.phases[0],
                started_at=await redis_now(self._redis),
                total_estimate=await self._key_count(),
                run_id=await self._run_id(),
                **fresh,
            )
        run = await self._load(self.current_key)
        if run is None:
            raise FailedPrecondition(
                f"there is no unfinished {self.noun or self.kind} to resume", reason="NOTHING_TO_RESUME"
            )
        if workspace_id and workspace_id != run.workspace_id:
            raise InvalidArgument("workspace_id", f"must be empty or {run.workspace_id!r} to resume")
        run.rate_limit = rate_limit or run.rate_limit
        run.batch_size = batch_size or run.batch_size
        run.reason = ""
        return run

    # --- the loop ----------------------------------------------------------------------------
    async def loop(self, run: R) -> AsyncIterator[tuple[str, R]]:
        """Yields ("started" | "progress" | "completed" | "stopped" | "failed", the run's state)."""
        lease = await self._take_lease(run)
        name = f"{self.kind} {run.ident}"
        try:
            run.state = RUNNING
            current = await self._run_id()
            if run.run_id and current != run.run_id:
                await self.begin_again(run)  # resumed after a Redis restart: its cursor means nothing now
            run.run_id = current
            await self._save(run)
            log.info(f"{name} started", extra={"reason": "dry run" * run.dry_run})
            yield "started", run
            bucket = TokenBucket(run.rate_limit)
            began, examined_before = time.monotonic(), run.examined
            while run.phase != "done":
                reason = await self._stop_reason(run, lease)
                if reason:
                    (run.state, event), run.reason = self.stopped, reason
                    await self._save(run)
                    log.info(f"{name} stopped", extra={"reason": reason})
                    yield event, run
                    return
                seen = await self._step(run)
                if await self._run_id() != run.run_id:
                    # Keys the old cursor had not reached are unknown: never report such a run complete.
                    await self.begin_again(run)
                    run.state, run.reason = FAILED, self.restarted
                    await self._save(run)
                    log.warning(f"{name} failed: Redis restarted")
                    yield "failed", run
                    return
                await bucket.take(seen)
                run.rate = (run.examined - examined_before) / max(time.monotonic() - began, 1e-6)
                await self._save(run)
                yield "progress", run
            await self._complete(run)
            log.info(f"{name} completed: {self.summary(run)}")
            yield "completed", run
        except (asyncio.CancelledError, GeneratorExit):
            run.state, run.reason = self.went_away, "the caller went away; resume to continue"
            with contextlib.suppress(Exception):
                await self._save(run)
            raise
        except Exception as exc:
            run.state, run.reason = FAILED, f"{type(exc).__name__}; resume to continue"
            with contextlib.suppress(Exception):
                await self._save(run)
            raise
        finally:
            if lease is not None:
                await lease.release()

    async def _take_lease(self, run: R) -> Lease | None:
        """The operation lease of an execute run; a dry run takes none and only reports a refusal."""
        if not run.dry_run:
            await self.preconditions(run)
            return await take_operation_lease(self._redis, run.ident)
        try:
            await self.preconditions(run)
        except FailedPrecondition as refusal:
            run.reason = f"dry run; an execute would be refused now: {refusal.message}"
        return None

    async def _stop_reason(self, run: R, lease: Lease | None) -> str:
        if lease is None:
            return ""
        if lease.lost.is_set():
            return LEASE_LOST
        return await self.stop_reason(run)

    async def _step(self, run: R) -> int:
        try:
            return await self.step(run)
        except TRANSIENT_STORE_ERRORS:
            # A restart closes every connection: the step's own failure says nothing until the run id
            # tells whether Redis restarted (then the loop fails the run as restarted).
            if await self._run_id_after_failure() == run.run_id:
                raise
            return 0

    async def _run_id_after_failure(self) -> str:
        """The store's run id, asked again on fresh connections for a few seconds ("" if it stays away)."""
        for _ in range(20):
            try:
                return await self._run_id()
            except TRANSIENT_STORE_ERRORS:
                await asyncio.sleep(0.25)
        return ""

    async def _complete(self, run: R) -> None:
        run.state, run.ended_at = COMPLETED, await redis_now(self._redis)
        if run.dry_run:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.last_key, run.to_json())
        pipe.delete(self.current_key)
        await pipe.execute()
        await self.finished(run)

    async def _save(self, run: R) -> None:
        if not run.dry_run:
            await self._redis.set(self.current_key, run.to_json())
