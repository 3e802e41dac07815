"""relayctl jobs execute | get | list."""

from __future__ import annotations

import json

import click
from google.protobuf import struct_pb2

from relay.clients.cli_common import call, connection, json_option, print_json, run
from relay.core import codec
from relay.v1 import job_service_pb2 as pb

STATUS_CHOICES = ["pending", "running", "completed", "failed"]


@click.group("jobs", help="Enqueue, read and list jobs.")
def jobs() -> None:
    pass


@jobs.command("execute", help="Enqueue one action and print its job id.")
@click.option("--provider", required=True)
@click.option("--action", "action_name", required=True)
@click.option("--params", default="{}", help="A JSON object.")
@click.option("--client-request-id", default="", help="Replays with the same id return the original job.")
@click.option("--actor", default="", help="actor_id recorded on the job.")
@run
async def execute(
    ctx: click.Context, provider: str, action_name: str, params: str, client_request_id: str, actor: str
) -> int:
    try:
        value = json.loads(params)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--params")
    struct = struct_pb2.Struct()
    struct.update(value)
    action = pb.Action(
        provider=provider, action=action_name, params=struct, client_request_id=client_request_id
    )
    request = pb.ExecuteRequest(actions=[action], actor_id=actor)
    # Retried on UNAVAILABLE only with a client_request_id: the server answers a repeat with the same job.
    reply = await call(ctx, "Execute", request, jobs=True, retry_execute=bool(client_request_id))
    click.echo(f"job_id: {reply.job_ids[0]}\nqueue_depth: {reply.queue_depth}")
    return 0


@jobs.command("get", help="Print one job as JSON.")
@click.argument("job_id")
@run
async def get(ctx: click.Context, job_id: str) -> int:
    reply = await call(ctx, "GetJob", pb.GetJobRequest(job_id=job_id), jobs=True)
    print_json(reply.job)
    return 0


@jobs.command("list", help="List jobs, newest first.")
@click.option("--status", type=click.Choice(STATUS_CHOICES), default=None)
@click.option("--page-size", type=int, default=20)
@click.option("--page-token", default="")
@click.option("--all", "all_pages", is_flag=True, help="Follow next_page_token to the end.")
@json_option("One JSON object per job.")
@run
async def list_jobs(
    ctx: click.Context, status: str | None, page_size: int, page_token: str, all_pages: bool, as_json: bool
) -> int:
    conn = connection(ctx)
    request = pb.ListJobsRequest(page_size=page_size, page_token=page_token)
    if status:
        request.status = codec.STATUS_TO_PROTO[status]
    async with conn.channel() as channel:
        stub = conn.jobs(channel)
        if not as_json:
            click.echo(f"{'JOB ID':<36}  {'STATUS':<9}  {'PROVIDER/ACTION':<28}  ENQUEUED")
        while True:
            reply = await stub.ListJobs(request, metadata=conn.metadata)
            for job in reply.jobs:
                if as_json:
                    print_json(job)
                else:
                    status_name = codec.STATUS_FROM_PROTO.get(job.status, "?")
                    what = f"{job.action_provider}/{job.action_name}"[:28]
                    when = job.enqueue_time.ToJsonString() if job.HasField("enqueue_time") else "-"
                    click.echo(f"{job.job_id:<36}  {status_name:<9}  {what:<28}  {when}")
            if not (all_pages and reply.next_page_token):
                break
            request.page_token = reply.next_page_token
    if reply.next_page_token and not all_pages:
        click.echo(f"next page: --page-token {reply.next_page_token}", err=True)
    return 0
