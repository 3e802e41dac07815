"""CreateApiKey and RevokeApiKey."""

from __future__ import annotations

import time

import grpc

from relay.controller.base import ControllerBase, stamp
from relay.core.errors import InvalidArgument
from relay.core.rpc_errors import rpc_method
from relay.v1 import migration_controller_pb2 as pb


class ApiKeyRpcs(ControllerBase):
    @rpc_method
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        await self._admin(context)
        raw, digest = await self.parts.keyring.create(
            request.workspace_id, list(request.scopes), request.description
        )
        response = pb.CreateApiKeyResponse(api_key=raw, key_digest=f"sha256:{digest}")
        stamp(response.create_time, time.time())
        return response

    @rpc_method
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        await self._admin(context)
        digest = request.key_digest.removeprefix("sha256:").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument("key_digest", "must be sha256:<64 hex digits>")
        return pb.RevokeApiKeyResponse(revoked=await self.parts.keyring.revoke(digest))
