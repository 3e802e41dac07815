"""relay.v1.MigrationController, composed of one small mixin per concern.

Each mixin's methods are declared ``@admin_rpc`` or ``@viewer_rpc`` (``base``), which authenticate the
caller and apply the error table of ``relay.core.rpc_errors``; a method validates, calls its engine and
converts to protobuf (in its family's ``rpcs`` module only).
"""

from __future__ import annotations

from relay.controller.api_key_rpcs import ApiKeyRpcs
from relay.controller.backfill.rpcs import BackfillRpcs
from relay.controller.base import ControllerBase
from relay.controller.stages.rpcs import StageRpcs
from relay.controller.sweep.rpcs import CleanupRpcs
from relay.controller.verify.rpcs import VerifyRpcs
from relay.v1 import migration_controller_pb2_grpc as pb_grpc


class ControllerServicer(
    BackfillRpcs,
    StageRpcs,
    VerifyRpcs,
    CleanupRpcs,
    ApiKeyRpcs,
    ControllerBase,
    pb_grpc.MigrationControllerServicer,
):
    pass
