"""The requests the JobService benchmark sends, shared by the load generator, the seeding and the baseline."""

from __future__ import annotations

from google.protobuf import struct_pb2

from relay.v1 import job_service_pb2 as pb

PROVIDER = "openai"
ACTION = "chat.completions"
ACTOR_ID = "bench-caller"
PAGE_SIZE = 50
#: A realistic small action payload (about 150 bytes of JSON).
PARAMS = {
    "model": "gpt-4o-mini",
    "prompt": "Summarise the attached support ticket in two sentences for the on-call engineer.",
    "max_tokens": 256,
    "temperature": 0.2,
}

#: Workspaces of the benchmark: Execute writes to one, GetJob and ListJobs read another.
EXEC_WORKSPACE = "bench-exec"
READ_WORKSPACE = "bench-read"
WORKSPACES = (EXEC_WORKSPACE, READ_WORKSPACE)


def params_struct() -> struct_pb2.Struct:
    params = struct_pb2.Struct()
    params.update(PARAMS)
    return params


def execute_request(client_request_ids: list[str]) -> pb.ExecuteRequest:
    params = params_struct()
    return pb.ExecuteRequest(
        actions=[
            pb.Action(provider=PROVIDER, action=ACTION, params=params, client_request_id=crid)
            for crid in client_request_ids
        ],
        actor_id=ACTOR_ID,
    )


def key_file_entries(raw_keys: dict[str, str]) -> list[dict[str, object]]:
    """The api key file both servers load: one key per benchmark workspace, with both caller scopes."""
    return [
        {"key": raw_keys[ws], "workspace_id": ws, "scopes": ["actions:execute", "actions:preview"]}
        for ws in WORKSPACES
    ]
