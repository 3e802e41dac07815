"""The console's only way to the controller: relay.v1.MigrationController stubs over one grpc.aio channel.

Every call carries the signed-in user's api key as ``authorization: Bearer`` metadata, exactly as
``relayctl`` sends it, so the controller decides what each user may do; the console never reads Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from relay.clients.connection import Connection
from relay.core.rpc_errors import error_info
from relay.v1 import backfill_pb2, cleanup_pb2, migration_controller_pb2_grpc, stage_pb2, verification_pb2

#: Unary calls never hang a page: the controller is local, so this is generous.
CALL_TIMEOUT = 10.0


@dataclass
class RpcFailure(Exception):
    """A refused or failed controller call, in the words relayctl prints."""

    code: grpc.StatusCode
    reason: str
    details: str

    @classmethod
    def of(cls, exc: grpc.aio.AioRpcError) -> RpcFailure:
        info = error_info(exc)
        return cls(exc.code(), info.reason if info else "", exc.details() or "")

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.details}"


class Controller:
    """One channel to the local controller; each method takes the caller's api key."""

    def __init__(self, target: str):
        self.target = target
        self._channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> migration_controller_pb2_grpc.MigrationControllerStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        return migration_controller_pb2_grpc.MigrationControllerStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _md(self, api_key: str) -> tuple[tuple[str, str], ...]:
        return Connection(self.target, api_key).metadata  # relayctl's metadata, exactly

    async def _unary(self, method: str, request: object, api_key: str) -> object:
        try:
            return await getattr(self.stub, method)(request, metadata=self._md(api_key), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise RpcFailure.of(exc) from None

    async def get_stage(self, api_key: str, workspace_id: str = "") -> stage_pb2.StageSetting:
        reply = await self._unary("GetStage", stage_pb2.GetStageRequest(workspace_id=workspace_id), api_key)
        return reply.setting  # type: ignore[attr-defined]

    async def set_stage(self, api_key: str, request: stage_pb2.SetStageRequest) -> stage_pb2.SetStageResponse:
        return await self._unary("SetStage", request, api_key)  # type: ignore[return-value]

    async def get_backfill(self, api_key: str, backfill_id: str = "") -> backfill_pb2.Backfill | None:
        """The backfill, or None when none has run yet."""
        try:
            return await self._unary(  # type: ignore[return-value]
                "GetBackfill", backfill_pb2.GetBackfillRequest(backfill_id=backfill_id), api_key
            )
        except RpcFailure as failure:
            if failure.code is grpc.StatusCode.NOT_FOUND and not backfill_id:
                return None
            raise

    async def get_verification(self, api_key: str) -> verification_pb2.Verification | None:
        try:
            return await self._unary(  # type: ignore[return-value]
                "GetVerification", verification_pb2.GetVerificationRequest(), api_key
            )
        except RpcFailure as failure:
            if failure.code is grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def backfill_control(self, api_key: str, method: str, backfill_id: str) -> backfill_pb2.Backfill:
        requests = {
            "PauseBackfill": backfill_pb2.PauseBackfillRequest,
            "ResumeBackfill": backfill_pb2.ResumeBackfillRequest,
            "CancelBackfill": backfill_pb2.CancelBackfillRequest,
        }
        return await self._unary(method, requests[method](backfill_id=backfill_id), api_key)  # type: ignore[return-value]

    async def update_backfill(
        self, api_key: str, backfill_id: str, rate_limit: float
    ) -> backfill_pb2.Backfill:
        request = backfill_pb2.UpdateBackfillRequest(
            backfill_id=backfill_id, rate_limit=rate_limit, update_rate_limit=True
        )
        return await self._unary("UpdateBackfill", request, api_key)  # type: ignore[return-value]

    async def can_administer(self, api_key: str) -> bool:
        """Whether the key has migration:admin, asked without changing anything: UpdateBackfill with no
        backfill id is refused for a missing scope (PERMISSION_DENIED) before its id is checked
        (INVALID_ARGUMENT). Only decides which buttons a page shows: the controller checks every call."""
        try:
            await self._unary("UpdateBackfill", backfill_pb2.UpdateBackfillRequest(), api_key)
        except RpcFailure as failure:
            return failure.code is grpc.StatusCode.INVALID_ARGUMENT
        return False

    # Streams: the caller iterates; a failure before or during the stream raises RpcFailure.

    async def _stream(self, method: str, request: object, api_key: str) -> AsyncIterator[object]:
        call = getattr(self.stub, method)(request, metadata=self._md(api_key))
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise RpcFailure.of(exc) from None
        finally:
            call.cancel()

    def start_backfill(
        self, api_key: str, request: backfill_pb2.StartBackfillRequest
    ) -> AsyncIterator[backfill_pb2.BackfillEvent]:
        return self._stream("StartBackfill", request, api_key)  # type: ignore[return-value]

    def watch_backfill(
        self, api_key: str, backfill_id: str = ""
    ) -> AsyncIterator[backfill_pb2.BackfillEvent]:
        request = backfill_pb2.WatchBackfillRequest(backfill_id=backfill_id)
        return self._stream("WatchBackfill", request, api_key)  # type: ignore[return-value]

    def verify(
        self, api_key: str, request: verification_pb2.VerifyMigrationRequest
    ) -> AsyncIterator[verification_pb2.VerificationEvent]:
        return self._stream("VerifyMigration", request, api_key)  # type: ignore[return-value]

    def cleanup(
        self, api_key: str, request: cleanup_pb2.CleanupLegacyRequest
    ) -> AsyncIterator[cleanup_pb2.CleanupEvent]:
        return self._stream("CleanupLegacy", request, api_key)  # type: ignore[return-value]

    def reverse_copy(
        self, api_key: str, request: cleanup_pb2.ReverseCopyRequest
    ) -> AsyncIterator[cleanup_pb2.CleanupEvent]:
        return self._stream("ReverseCopy", request, api_key)  # type: ignore[return-value]
