"""VerifyMigration and GetVerification."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from relay.controller.base import ControllerBase, admin_rpc, mirror, operation_event, stamp, viewer_rpc
from relay.controller.verify.split_verifier import verifier_of
from relay.controller.verify.verifier import VerificationRun, Verifier
from relay.core.errors import NotFound
from relay.core.ids import check_workspace_id
from relay.v1 import verification_pb2 as pb


def verification_proto(run: VerificationRun) -> pb.Verification:
    message = mirror(
        pb.Verification, run, state=pb.VerificationState.Value(f"VERIFICATION_STATE_{run.state.upper()}")
    )
    for workspace_id in sorted(run.workspaces):
        counts = run.workspaces[workspace_id]
        diff = mirror(
            pb.WorkspaceDiff,
            counts,
            workspace_id=workspace_id,
            differing_fields=counts.fields,
            sample_job_ids=counts.samples,
        )
        message.workspaces.append(diff)
    stamp(message.start_time, run.started_at)
    stamp(message.end_time, run.ended_at)
    return message


class VerifyRpcs(ControllerBase):
    @functools.cached_property
    def verifier(self) -> Verifier:
        assert self.parts.stores is not None
        return verifier_of(self.parts.stores, metrics=self.parts.metrics)

    @admin_rpc
    async def VerifyMigration(
        self, request: pb.VerifyMigrationRequest
    ) -> AsyncIterator[pb.VerificationEvent]:
        workspace_id = check_workspace_id(request.workspace_id) if request.workspace_id else ""
        async for kind, run in self.verifier.run(
            workspace_id, request.rate_limit, request.batch_size, request.resume
        ):
            yield operation_event(
                pb.VerificationEvent,
                kind,
                verification_id=run.verification_id,
                verification=verification_proto(run),
            )

    @viewer_rpc
    async def GetVerification(self, request: pb.GetVerificationRequest) -> pb.Verification:
        run = await self.verifier.last()
        if run is None:
            raise NotFound(
                "no verification has run yet; start one with VerifyMigration", reason="NO_VERIFICATION"
            )
        return verification_proto(run)
