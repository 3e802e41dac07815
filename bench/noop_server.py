"""The no-op baseline: a JobService on the same server stack as ``relay serve jobs``, minus the store.

The same grpc.aio server (``relay.server.grpc_server``: options and interceptors, i.e. request ids,
RPC metrics, the access log and the malformed-request guard), health and reflection services, api-key
authentication (the same KeyRing and key file), scope and workspace checks and the same ``@rpc_method``
error mapping; then, instead of touching Redis, each method returns a canned response of the same shape
and size as the real one (one job id per action, a job, a page of 50 jobs). The ratio real/no-op is
therefore the cost of the job store itself: Redis round trips, Lua, decoding and record conversion.

Run as ``python -m bench.noop_server`` with RELAY_LISTEN and RELAY_API_KEYS_FILE (REDIS_URL is used only
for api keys that are not in the file, exactly as the real service does).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from bench import workload
from relay.core import codec, event_loop, logs
from relay.core.auth import SCOPE_EXECUTE, SCOPE_PREVIEW, KeyRing, load_key_file
from relay.core.config import Settings
from relay.core.page_token import PageTokenCodec
from relay.core.rpc_errors import rpc_method
from relay.core.telemetry import build_metrics
from relay.server import grpc_server
from relay.services.listing_cursor import ListingCursor
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc as pb_grpc

CANNED_IDS = [str(uuid.uuid4()) for _ in range(100)]


def canned_job(workspace_id: str) -> pb.Job:
    record = codec.new_record(
        job_id=str(uuid.uuid4()),
        workspace_id=workspace_id,
        provider=workload.PROVIDER,
        action=workload.ACTION,
        params_json=codec.struct_json(workload.params_struct()),
        actor_id=workload.ACTOR_ID,
        enqueued_at=codec.now_iso(),
    )
    return codec.to_proto(record)


def canned_token(job: pb.Job) -> str:
    """A next_page_token as the real service makes it in the middle of the benchmark's listing (index
    phase, no filter), so that both responses weigh the same on the wire."""
    member = codec.index_member(job.job_id, codec.now_iso())
    state = ListingCursor.first(0, legacy_phase=False).index_after(member).to_state()
    return PageTokenCodec(secrets.token_hex(32).encode()).encode(workload.READ_WORKSPACE, "status=", state)


class NoopJobServicer(pb_grpc.JobServiceServicer):
    def __init__(self, keyring: KeyRing):
        self._keyring = keyring
        job = canned_job(workload.READ_WORKSPACE)
        self._get = pb.GetJobResponse(job=job)
        self._page = pb.ListJobsResponse(jobs=[job] * workload.PAGE_SIZE, next_page_token=canned_token(job))

    async def _workspace(self, context: grpc.aio.ServicerContext, scope: str, requested: str = "") -> str:
        principal = await self._keyring.authorize(context.invocation_metadata(), scope)
        return principal.workspace(requested)

    @rpc_method
    async def Execute(
        self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteResponse:
        await self._workspace(context, SCOPE_EXECUTE, request.workspace_id)
        return pb.ExecuteResponse(job_ids=CANNED_IDS[: len(request.actions)], queue_depth=1)

    @rpc_method
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        await self._workspace(context, SCOPE_PREVIEW)
        return self._get

    @rpc_method
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        await self._workspace(context, SCOPE_PREVIEW, request.workspace_id)
        return self._page


async def serve(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")  # never connects for file keys
    keyring = KeyRing(redis, load_key_file(settings.api_keys_file), settings.api_key_cache_seconds)
    server = grpc_server(build_metrics(settings.metric_workspaces, settings.metric_workspace_top_n))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    pb_grpc.add_JobServiceServicer_to_server(NoopJobServicer(keyring), server)
    name = pb.DESCRIPTOR.services_by_name["JobService"].full_name
    reflection.enable_server_reflection([reflection.SERVICE_NAME, health.SERVICE_NAME, name], server)
    if server.add_insecure_port(settings.listen) == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"no-op JobService listening on {settings.listen}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(2)
    await redis.aclose()


def main() -> None:
    settings = Settings.from_env()
    if not settings.api_keys_file:
        raise SystemExit("RELAY_API_KEYS_FILE is required")
    logs.configure(settings.log_level, settings.log_format)  # the access log costs the same as the real one's
    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(serve(settings))


if __name__ == "__main__":
    main()
