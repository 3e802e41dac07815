"""relay.v1.JobService: authenticate, validate, call the job store, convert to protobuf."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import grpc

from relay.core import codec
from relay.core.auth import SCOPE_EXECUTE, SCOPE_PREVIEW, SCOPE_WORK, KeyRing
from relay.core.config import Settings
from relay.core.errors import InvalidArgument
from relay.core.ids import check_client_request_id, check_job_id, check_workspace_id
from relay.core.limits import WIRE_PER_JSON_BYTE
from relay.core.rpc_errors import rpc_method
from relay.services.job_store import JobStore, NewAction
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_NAME_CHARS = 128
MAX_ACTOR_CHARS = 256
MAX_ERROR_CHARS = 4096
T = TypeVar("T")
#: Control characters a name or text must not hold: all below U+0020 but tab and newline.
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b-\x1f]")
WORKER_STATUSES = {
    pb.JOB_STATUS_RUNNING: "running",
    pb.JOB_STATUS_COMPLETED: "completed",
    pb.JOB_STATUS_FAILED: "failed",
}


class JobServicer(pb_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, keyring: KeyRing, settings: Settings):
        self._store = store
        self._keyring = keyring
        self._settings = settings

    @rpc_method
    async def Execute(
        self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteResponse:
        workspace_id = await self._workspace(context, SCOPE_EXECUTE, request.workspace_id)
        actions = self._actions(request)
        actor_id = _bounded_text(request.actor_id, "actor_id", MAX_ACTOR_CHARS)
        job_ids, depth = await self._store.execute(workspace_id, actions, actor_id)
        return pb.ExecuteResponse(job_ids=job_ids, queue_depth=depth)

    async def _workspace(self, context: grpc.aio.ServicerContext, scope: str, requested: str = "") -> str:
        """The caller's workspace, once its key is known to hold ``scope``; a request naming another
        workspace is refused."""
        principal = await self._keyring.authorize(context.invocation_metadata(), scope)
        return principal.workspace(_optional_workspace_id(requested))

    def _actions(self, request: pb.ExecuteRequest) -> list[NewAction]:
        if not request.actions:
            raise InvalidArgument("actions", "must hold at least one action")
        if len(request.actions) > self._settings.max_actions_per_call:
            raise InvalidArgument(
                "actions", f"must hold at most {self._settings.max_actions_per_call} actions"
            )
        actions = []
        for n, action in enumerate(request.actions):
            field = f"actions[{n}]"
            provider = _required_name(action.provider, f"{field}.provider")
            name = _required_name(action.action, f"{field}.action")
            # Refused before it is converted when even its wire size says it is too large: JSON is never
            # smaller than 1/WIRE_PER_JSON_BYTE of it (a 5 MB Struct would cost ~50 MB as Python dicts).
            too_large = action.params.ByteSize() > self._settings.max_params_bytes * WIRE_PER_JSON_BYTE
            params_json = "" if too_large else _json_of(codec.struct_json, action.params, f"{field}.params")
            if too_large or len(params_json.encode()) > self._settings.max_params_bytes:
                raise InvalidArgument(
                    f"{field}.params", f"must be at most {self._settings.max_params_bytes} bytes as JSON"
                )
            crid = check_client_request_id(action.client_request_id, f"{field}.client_request_id")
            actions.append(
                NewAction(provider, name, params_json, crid, codec.encoded(params_json, action.params))
            )
        return actions

    @rpc_method
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        workspace_id = await self._workspace(context, SCOPE_PREVIEW)
        record = await self._store.get(workspace_id, check_job_id(request.job_id))
        return pb.GetJobResponse(job=self._store.to_proto(record))

    @rpc_method
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        workspace_id = await self._workspace(context, SCOPE_PREVIEW, request.workspace_id)
        if request.page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        status = ""
        if request.status != pb.JOB_STATUS_UNSPECIFIED:
            if request.status not in codec.STATUS_FROM_PROTO:
                raise InvalidArgument("status", "is not a known JobStatus")
            status = codec.STATUS_FROM_PROTO[request.status]
        page = await self._store.list(workspace_id, page_size, request.page_token, status)
        return page.response

    @rpc_method
    async def ClaimJob(
        self, request: pb.ClaimJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimJobResponse:
        await self._keyring.authorize(context.invocation_metadata(), SCOPE_WORK)
        _bounded_text(request.worker_id, "worker_id", MAX_NAME_CHARS)
        record = await self._store.claim()
        return pb.ClaimJobResponse(job=self._store.to_proto(record)) if record else pb.ClaimJobResponse()

    @rpc_method
    async def UpdateJobStatus(
        self, request: pb.UpdateJobStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateJobStatusResponse:
        await self._keyring.authorize(context.invocation_metadata(), SCOPE_WORK)
        workspace_id = check_workspace_id(request.workspace_id)
        job_id = check_job_id(request.job_id)
        status = WORKER_STATUSES.get(request.status)
        if status is None:
            raise InvalidArgument("status", "must be RUNNING, COMPLETED or FAILED")
        too_large = request.result.ByteSize() > self._settings.max_result_bytes * WIRE_PER_JSON_BYTE
        result_json = (
            _json_of(codec.value_json, request.result, "result")
            if request.HasField("result") and not too_large
            else None
        )
        if too_large or (
            result_json is not None and len(result_json.encode()) > self._settings.max_result_bytes
        ):
            raise InvalidArgument(
                "result", f"must be at most {self._settings.max_result_bytes} bytes as JSON"
            )
        error = _bounded_text(request.error, "error", MAX_ERROR_CHARS) if request.error else None
        result_pb = codec.encoded(result_json, request.result) if result_json is not None else ""
        record = await self._store.update_status(workspace_id, job_id, status, result_json, error, result_pb)
        return pb.UpdateJobStatusResponse(job=self._store.to_proto(record))


def _optional_workspace_id(value: str) -> str:
    """A workspace_id a request may name; a malformed one is INVALID_ARGUMENT, not PERMISSION_DENIED."""
    return check_workspace_id(value) if value else ""


def _json_of(encode: Callable[[T], str], value: T, field: str) -> str:
    try:
        return encode(value)
    except codec.NotStorableJson as exc:
        raise InvalidArgument(field, str(exc)) from None


def _required_name(value: str, field: str) -> str:
    if not value.strip():
        raise InvalidArgument(field, "is required")
    return _bounded_text(value, field, MAX_NAME_CHARS)


def _bounded_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"must be at most {limit} characters")
    if _CONTROL_CHARACTER.search(value):
        raise InvalidArgument(field, "must not hold control characters")
    return value
