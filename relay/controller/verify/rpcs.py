"""VerifyMigration and GetVerification."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator

import grpc

from relay.controller.base import ControllerBase, stamp
from relay.controller.verify.split_verifier import verifier_of
from relay.controller.verify.verifier import VerificationRun, VerificationState, Verifier
from relay.core.errors import NotFound
from relay.core.ids import check_workspace_id
from relay.core.rpc_errors import rpc_method
from relay.v1 import verification_pb2 as pb

STATES = {
    VerificationState.RUNNING: pb.VERIFICATION_STATE_RUNNING,
    VerificationState.COMPLETED: pb.VERIFICATION_STATE_COMPLETED,
    VerificationState.FAILED: pb.VERIFICATION_STATE_FAILED,
    VerificationState.INTERRUPTED: pb.VERIFICATION_STATE_INTERRUPTED,
}
KINDS = {
    "started": pb.VERIFICATION_EVENT_KIND_STARTED,
    "progress": pb.VERIFICATION_EVENT_KIND_PROGRESS,
    "completed": pb.VERIFICATION_EVENT_KIND_COMPLETED,
    "failed": pb.VERIFICATION_EVENT_KIND_FAILED,
}


def verification_proto(run: VerificationRun) -> pb.Verification:
    message = pb.Verification(
        verification_id=run.verification_id,
        state=STATES.get(run.state, pb.VERIFICATION_STATE_UNSPECIFIED),
        workspace_id=run.workspace_id,
        scanned_legacy=run.scanned_legacy,
        scanned_new=run.scanned_new,
        invalid_legacy=run.invalid_legacy,
        clean=run.clean,
        legacy_covered=run.legacy_covered,
        percent_done=run.percent_done,
        reason=run.reason,
        phase=run.phase,
        total_estimate=run.total_estimate,
        outbox_pending=run.outbox_pending,
    )
    for workspace_id in sorted(run.workspaces):
        counts = run.workspaces[workspace_id]
        message.workspaces.append(
            pb.WorkspaceDiff(
                workspace_id=workspace_id,
                matching=counts.matching,
                missing_in_new=counts.missing_in_new,
                differing=counts.differing,
                only_in_new=counts.only_in_new,
                unlisted=counts.unlisted,
                legacy_behind=counts.legacy_behind,
                differing_fields=counts.fields,
                sample_job_ids=counts.samples,
            )
        )
    stamp(message.start_time, run.started_at)
    stamp(message.end_time, run.ended_at)
    return message


class VerifyRpcs(ControllerBase):
    @functools.cached_property
    def verifier(self) -> Verifier:
        assert self.parts.stores is not None
        return verifier_of(self.parts.stores, metrics=self.parts.metrics)

    @rpc_method
    async def VerifyMigration(
        self, request: pb.VerifyMigrationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VerificationEvent]:
        await self._admin(context)
        workspace_id = check_workspace_id(request.workspace_id) if request.workspace_id else ""
        async for kind, run in self.verifier.run(
            workspace_id, request.rate_limit, request.batch_size, request.resume
        ):
            event = pb.VerificationEvent(
                verification_id=run.verification_id, kind=KINDS[kind], verification=verification_proto(run)
            )
            stamp(event.time, time.time())
            yield event

    @rpc_method
    async def GetVerification(
        self, request: pb.GetVerificationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Verification:
        await self._viewer(context)
        run = await self.verifier.last()
        if run is None:
            raise NotFound(
                "no verification has run yet; start one with VerifyMigration", reason="NO_VERIFICATION"
            )
        return verification_proto(run)
