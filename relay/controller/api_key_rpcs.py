"""CreateApiKey and RevokeApiKey."""

from __future__ import annotations

import time

from relay.controller.base import ControllerBase, admin_rpc, stamp
from relay.core.errors import InvalidArgument
from relay.v1 import migration_controller_pb2 as pb


class ApiKeyRpcs(ControllerBase):
    @admin_rpc
    async def CreateApiKey(self, request: pb.CreateApiKeyRequest) -> pb.CreateApiKeyResponse:
        raw, digest = await self.parts.keyring.create(
            request.workspace_id, list(request.scopes), request.description
        )
        response = pb.CreateApiKeyResponse(api_key=raw, key_digest=f"sha256:{digest}")
        stamp(response.create_time, time.time())
        return response

    @admin_rpc
    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest) -> pb.RevokeApiKeyResponse:
        digest = request.key_digest.removeprefix("sha256:").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument("key_digest", "must be sha256:<64 hex digits>")
        return pb.RevokeApiKeyResponse(revoked=await self.parts.keyring.revoke(digest))
