"""The operator's side of the load and chaos runs: walk the migration through the controller's RPCs.

LEGACY_ONLY -> DUAL_WRITE, a backfill, READ_NEW, a verification, NEW_ONLY, a cleanup, LEGACY_CLEANED,
each step as soon as the stage rules allow it. Like a careful operator it survives a controller that
dies under it: a broken stream is re-attached (WatchBackfill) or resumed (ResumeBackfill, or the
verification's and cleanup's ``resume``), and a refusal that only says "not yet" (the settle time after a
stage change, an operation lease left by a dead controller) is retried. Every progress event is kept
with its wall-clock time for the time series.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from bench.relay_cluster import bearer
from relay.core.rpc_errors import error_info
from relay.v1 import backfill_pb2, cleanup_pb2, stage_pb2, verification_pb2
from relay.v1 import migration_controller_pb2_grpc as pb_grpc

TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: Refusals that mean "wait a little": settle time, a lease left behind by a dead controller.
WAIT_REASONS = {"OPERATION_RUNNING", "BACKFILL_RUNNING", "SETTLING"}
GIVE_UP_SECONDS = 180.0
#: Verifications the walk runs at most before a difference counts as a failure, and the pause between.
VERIFICATION_ATTEMPTS = 3
VERIFICATION_RETRY_SECONDS = 3.0
T = TypeVar("T")


class WalkFailed(Exception):
    pass


@dataclass
class Walk:
    target: str
    admin_key: str
    backfill_rate: float = 0.0
    batch_size: int = 0
    call_timeout: float = 10.0
    #: Operations count for the stage rules only if they start this long after the change they follow
    #: (relay's stage_settle_seconds, 2 s, plus a margin).
    settle: float = 2.5
    samples: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    #: (wall time, status code) of every failed operator call, to put them beside the faults
    errors: list[tuple[float, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    backfill: backfill_pb2.Backfill | None = None
    backfill_resumes: int = 0
    backfills_started: int = 0
    verification: verification_pb2.Verification | None = None
    #: Every verification the walk ran (more than one when the first was not clean).
    verifications: list[verification_pb2.Verification] = field(default_factory=list)
    cleanups: list[cleanup_pb2.Cleanup] = field(default_factory=list)
    cleanup_runs: int = 0
    reached: str = "LEGACY_ONLY"

    # --- plumbing --------------------------------------------------------------------------------
    def _md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.admin_key)

    def step(self, what: str, **detail: Any) -> None:
        self.steps.append({"t": time.time(), "step": what, **detail})

    def _note(self, error: grpc.aio.AioRpcError) -> str:
        self.codes[error.code().name] += 1
        self.errors.append((time.time(), error.code().name))
        info = error_info(error)
        reason = info.reason if info else ""
        if error.code() not in TRANSIENT and error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            self.unexpected.append(f"{error.code().name}: {error.details()}")
        return reason

    async def _unary(self, call: Callable[[], Awaitable[T]]) -> T:
        """A unary call, retried while the controller is away."""
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                self._note(error)
                if error.code() not in TRANSIENT or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def _sample(self, op: str, **values: Any) -> None:
        self.samples.append({"t": time.time(), "op": op, **values})

    # --- the walk --------------------------------------------------------------------------------
    async def run(
        self,
        before_backfill: Callable[[], Awaitable[None]] | None = None,
        after_backfill: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.MigrationControllerStub(channel)
            await self.set_stage(stub, stage_pb2.STAGE_DUAL_WRITE)
            await asyncio.sleep(self.settle)
            if before_backfill is not None:
                await before_backfill()
            self.backfill = await self.run_backfill(stub)
            if after_backfill is not None:
                await after_backfill()
            await self.set_stage(stub, stage_pb2.STAGE_READ_NEW)
            # As an operator would after faults: a verification that is not clean is run again (a replica
            # write a fault left owed is repaired within seconds across two stores); a difference that
            # stays is a failure. Every attempt is kept.
            for attempt in range(1, VERIFICATION_ATTEMPTS + 1):
                self.verification = await self.run_verification(stub)
                self.verifications.append(self.verification)
                if self.verification.clean:
                    break
                if attempt == VERIFICATION_ATTEMPTS:
                    raise WalkFailed(
                        f"the verification is not clean ({attempt} attempts): {self.verification}"
                    )
                await asyncio.sleep(VERIFICATION_RETRY_SECONDS)
            await self.set_stage(stub, stage_pb2.STAGE_NEW_ONLY)
            await asyncio.sleep(self.settle)
            await self.run_cleanup(stub)
            await self.set_stage(stub, stage_pb2.STAGE_LEGACY_CLEANED)

    async def set_stage(self, stub: pb_grpc.MigrationControllerStub, stage: int) -> None:
        name = stage_pb2.Stage.Name(stage).removeprefix("STAGE_")
        deadline = time.monotonic() + 60
        while True:
            try:
                await self._unary(
                    lambda: stub.SetStage(
                        stage_pb2.SetStageRequest(stage=stage), metadata=self._md(), timeout=self.call_timeout
                    )
                )
                break
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                    raise WalkFailed(f"SetStage {name}: {error.code().name} {error.details()}") from error
                await asyncio.sleep(0.5)  # the settle time after the previous change, most likely
        self.reached = name
        self.step(f"stage {name}")

    async def _stream(
        self, open_stream: Callable[[], AsyncIterator[Any]], on_event: Callable[[Any], bool]
    ) -> bool:
        """Read a stream until ``on_event`` says it is done (True), or it ends or breaks (False)."""
        try:
            async for event in open_stream():
                if on_event(event):
                    return True
        except grpc.aio.AioRpcError as error:
            reason = self._note(error)
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason not in WAIT_REASONS:
                raise
            await asyncio.sleep(0.5)
        return False

    # --- backfill --------------------------------------------------------------------------------
    async def run_backfill(self, stub: pb_grpc.MigrationControllerStub) -> backfill_pb2.Backfill:
        request = backfill_pb2.StartBackfillRequest(rate_limit=self.backfill_rate, batch_size=self.batch_size)
        state: dict[str, Any] = {"id": "", "final": None}
        kinds = backfill_pb2.BackfillEventKind

        def on_event(event: backfill_pb2.BackfillEvent) -> bool:
            state["id"] = event.backfill_id
            p = event.backfill.progress
            self._sample(
                "backfill",
                kind=kinds.Name(event.kind).removeprefix("BACKFILL_EVENT_KIND_"),
                scanned=p.scanned,
                migrated=p.migrated,
                rate=p.rate,
                percent=p.percent_done,
            )
            if event.kind == backfill_pb2.BACKFILL_EVENT_KIND_COMPLETED:
                state["final"] = event.backfill
                return True
            return event.kind in (
                backfill_pb2.BACKFILL_EVENT_KIND_FAILED,
                backfill_pb2.BACKFILL_EVENT_KIND_CANCELLED,
            )

        self.step("backfill start", rate_limit=self.backfill_rate)
        deadline = time.monotonic() + 3600
        while state["final"] is None:
            if time.monotonic() > deadline:
                raise WalkFailed("the backfill did not complete within an hour")
            if not state["id"]:
                self.backfills_started += 1
                await self._stream(lambda: stub.StartBackfill(request, metadata=self._md()), on_event)
                continue
            current = await self._unary(
                lambda: stub.GetBackfill(
                    backfill_pb2.GetBackfillRequest(backfill_id=state["id"]),
                    metadata=self._md(),
                    timeout=self.call_timeout,
                )
            )
            if current.state == backfill_pb2.BACKFILL_STATE_COMPLETED:
                state["final"] = current
                break
            if current.state in (
                backfill_pb2.BACKFILL_STATE_ORPHANED,
                backfill_pb2.BACKFILL_STATE_PAUSED,
                backfill_pb2.BACKFILL_STATE_FAILED,
            ):
                try:
                    await self._unary(
                        lambda: stub.ResumeBackfill(
                            backfill_pb2.ResumeBackfillRequest(backfill_id=state["id"]),
                            metadata=self._md(),
                            timeout=self.call_timeout,
                        )
                    )
                    self.backfill_resumes += 1
                    self.step("backfill resume", reason=current.reason)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    await asyncio.sleep(0.5)  # another controller took it over first
            elif current.state == backfill_pb2.BACKFILL_STATE_CANCELLED:
                raise WalkFailed(f"backfill {state['id']} was cancelled: {current.reason}")
            await self._stream(
                lambda: stub.WatchBackfill(
                    backfill_pb2.WatchBackfillRequest(backfill_id=state["id"]), metadata=self._md()
                ),
                on_event,
            )
        self.step("backfill completed", backfill_id=state["id"])
        return state["final"]

    # --- verification ----------------------------------------------------------------------------
    async def run_verification(self, stub: pb_grpc.MigrationControllerStub) -> verification_pb2.Verification:
        state: dict[str, Any] = {"final": None, "resume": False}

        def on_event(event: verification_pb2.VerificationEvent) -> bool:
            v = event.verification
            self._sample("verify", scanned=v.scanned_legacy + v.scanned_new, percent=v.percent_done)
            if event.kind == verification_pb2.VERIFICATION_EVENT_KIND_COMPLETED:
                state["final"] = v
                return True
            if event.kind == verification_pb2.VERIFICATION_EVENT_KIND_FAILED:
                state["resume"] = True
                return True
            return False

        self.step("verify start")
        deadline = time.monotonic() + GIVE_UP_SECONDS * 4
        while state["final"] is None:
            if time.monotonic() > deadline:
                raise WalkFailed("the verification did not complete")
            request = verification_pb2.VerifyMigrationRequest(resume=state["resume"])
            try:
                await self._stream(lambda r=request: stub.VerifyMigration(r, metadata=self._md()), on_event)
            except grpc.aio.AioRpcError as error:
                info = error_info(error)
                if info is None or info.reason != "NOTHING_TO_RESUME":
                    raise
                # The run finished (or never began) while its stream was broken.
                last = await self._last_verification(stub)
                if last is not None and last.state == verification_pb2.VERIFICATION_STATE_COMPLETED:
                    state["final"] = last
                    break
                state["resume"] = False
                continue
            state["resume"] = state["final"] is None
        self.step("verify completed", clean=state["final"].clean)
        return state["final"]

    async def _last_verification(
        self, stub: pb_grpc.MigrationControllerStub
    ) -> verification_pb2.Verification | None:
        try:
            return await self._unary(
                lambda: stub.GetVerification(
                    verification_pb2.GetVerificationRequest(), metadata=self._md(), timeout=self.call_timeout
                )
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    # --- cleanup ---------------------------------------------------------------------------------
    async def run_cleanup(self, stub: pb_grpc.MigrationControllerStub) -> None:
        """Cleanups until one keeps no valid record (pending jobs are kept until the workers took them)."""
        deadline = time.monotonic() + GIVE_UP_SECONDS * 4
        while True:
            final = await self._one_cleanup(stub)
            kept = (
                final.kept_missing_new + final.kept_legacy_newer + final.kept_differing + final.kept_pending
            )
            if kept == 0:
                return
            if time.monotonic() > deadline:
                raise WalkFailed(f"cleanups still keep {kept} valid legacy records: {final}")
            self.step("cleanup kept records", kept=kept, pending=final.kept_pending)
            await asyncio.sleep(2.0)

    async def _one_cleanup(self, stub: pb_grpc.MigrationControllerStub) -> cleanup_pb2.Cleanup:
        state: dict[str, Any] = {"final": None, "resume": False}

        def on_event(event: cleanup_pb2.CleanupEvent) -> bool:
            c = event.cleanup
            self._sample("cleanup", run=self.cleanup_runs, scanned=c.scanned, done=c.done, rate=c.rate)
            if event.kind == cleanup_pb2.CLEANUP_EVENT_KIND_COMPLETED:
                self.cleanups.append(c)
                state["final"] = c
                return True
            if event.kind == cleanup_pb2.CLEANUP_EVENT_KIND_FAILED:
                state["resume"] = True
                return True
            return False

        self.step("cleanup start")
        self.cleanup_runs += 1
        deadline = time.monotonic() + GIVE_UP_SECONDS * 4
        while state["final"] is None:
            if time.monotonic() > deadline:
                raise WalkFailed("the cleanup did not complete")
            request = cleanup_pb2.CleanupLegacyRequest(resume=state["resume"])
            try:
                await self._stream(lambda r=request: stub.CleanupLegacy(r, metadata=self._md()), on_event)
            except grpc.aio.AioRpcError as error:
                info = error_info(error)
                if info is None or info.reason != "NOTHING_TO_RESUME":
                    raise
                # The run finished (or never began) while its stream was broken: start a fresh one.
                state["resume"] = False
                continue
            state["resume"] = state["final"] is None
        self.step("cleanup completed")
        return state["final"]
