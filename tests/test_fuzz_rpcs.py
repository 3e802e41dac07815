"""Hostile and malformed requests to every RPC: each gets a precise status, changes nothing in Redis, and
no reply ever carries another workspace's data (DESIGN.md invariants 2, 4 and 7).

A running Relay (JobService and MigrationController, read-new stage) serves two workspaces, ws-a and
ws-b, each with jobs in both layouts and one only in the legacy layout. Each property draws requests
that are wrong by construction and checks the exact status, its ErrorInfo, and a digest of the whole
keyspace before and after.
"""

from __future__ import annotations

import base64
import json
import string
import uuid
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from relay.core.keys import KEYS
from relay.core.limits import Limits
from relay.core.rpc_errors import error_info
from relay.v1 import backfill_pb2, cleanup_pb2, migration_controller_pb2, stage_pb2, verification_pb2
from relay.v1 import job_service_pb2 as pb
from tests.rpc_fuzzing import (
    ALL_RPCS,
    CONTROLLER_RPCS,
    JOB_RPCS,
    PRECISE,
    READ_ONLY_RPCS,
    REQUIRED_SCOPE,
    RPC,
    Outcome,
    arbitrary_message,
    bad_counts,
    bad_credentials,
    bad_rates,
    call,
    call_raw,
    control_text,
    deeply_nested_params,
    hostile_ids,
    hostile_workspaces,
    keyspace_digest,
    length_delimited,
    safe_ids,
    undecodable_bodies,
    unknown_enum_values,
)

fuzz = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: name -> scopes, as conftest.KEY_SPECS gives them to the test server.
KEY_SCOPES = {
    "ws_a": {"actions:execute", "actions:preview"},
    "ws_b": {"actions:execute", "actions:preview"},
    "ws_a_preview": {"actions:preview"},
    "ws_a_execute": {"actions:execute"},
    "worker": {"jobs:work"},
    "admin": {"migration:admin"},
}
#: A key that holds each scope, for requests that should get past authentication.
KEY_FOR_SCOPE = {
    "actions:execute": "ws_a",
    "actions:preview": "ws_a",
    "jobs:work": "worker",
    "migration:admin": "admin",
}


@dataclass
class World:
    channel: grpc.aio.Channel
    redis: Redis
    keys: object
    a_jobs: list[str]
    b_jobs: list[str]
    a_token: str
    b_token: str

    def md(self, name: str) -> tuple[tuple[str, str], ...]:
        return self.keys.md(name)  # type: ignore[attr-defined]

    async def digest(self) -> str:
        return await keyspace_digest(self.redis)


async def _seed_legacy(redis: Redis, workspace_id: str, status: str) -> str:
    """A job only the old system wrote: a legacy hash, unindexed, no revision."""
    job_id = str(uuid.uuid4())
    await redis.hset(
        KEYS.legacy_job(job_id),
        mapping={
            "job_id": job_id,
            "status": status,
            "action_provider": "openai",
            "action_name": "chat",
            "params": '{"secret": "' + workspace_id + '"}',
            "workspace_id": workspace_id,
            "actor_id": "legacy",
            "result": "",
            "enqueued_at": "2025-10-01T12:00:00+00:00",
        },
    )
    return job_id


@pytest.fixture
async def world(relay, redis, keys) -> World:
    ids: dict[str, list[str]] = {}
    for name, workspace in (("ws_a", "ws-a"), ("ws_b", "ws-b")):
        actions = [pb.Action(provider="openai", action="chat", params={"n": n}) for n in range(3)]
        reply = await relay.jobs.Execute(
            pb.ExecuteRequest(actions=actions, actor_id="fuzz"), metadata=keys.md(name)
        )
        ids[name] = [*reply.job_ids, await _seed_legacy(redis, workspace, "completed")]
    tokens = {}
    for name in ("ws_a", "ws_b"):
        page = await relay.jobs.ListJobs(pb.ListJobsRequest(page_size=1), metadata=keys.md(name))
        assert page.next_page_token
        tokens[name] = page.next_page_token
    return World(relay.channel, redis, keys, ids["ws_a"], ids["ws_b"], tokens["ws_a"], tokens["ws_b"])


# --- checks ------------------------------------------------------------------------------------------
def assert_refused(outcome: Outcome, code: grpc.StatusCode | set[grpc.StatusCode], field: str = "") -> None:
    """The call failed with exactly ``code``, through the error table (an ErrorInfo naming the field)."""
    codes = {code} if isinstance(code, grpc.StatusCode) else code
    assert outcome.code in codes, f"expected {codes}, got {outcome.code}: {outcome.details}"
    assert outcome.error is not None
    info = error_info(outcome.error)
    assert info is not None, "a refusal carries an ErrorInfo"
    assert info.reason and info.domain
    if field and outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert info.metadata.get("field") == field, (info.metadata, field)


def assert_no_foreign_data(world: World, outcome: Outcome) -> None:
    """Nothing of ws-b in a reply to ws-a: no job id, no workspace name, no params."""
    for reply in outcome.replies:
        for job_id in world.b_jobs:
            assert job_id.encode() not in reply
        assert b"ws-b" not in reply


async def unchanged(world: World, before: str) -> None:
    assert await world.digest() == before, "a refused request changed Redis"


# --- every RPC -----------------------------------------------------------------------------------
@fuzz
@given(data=st.data(), rpc=st.sampled_from(ALL_RPCS))
async def test_every_rpc_refuses_a_caller_without_a_valid_key(world, data, rpc):
    credentials = data.draw(bad_credentials(world.keys.raw["admin"]), label="credentials")
    request = data.draw(arbitrary_message(rpc.request), label="request")
    before = await world.digest()
    outcome = await call_raw(world.channel, rpc, request.SerializeToString(), credentials)
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED)
    await unchanged(world, before)


@fuzz
@given(data=st.data(), rpc=st.sampled_from(ALL_RPCS))
async def test_every_rpc_refuses_a_key_without_its_scope(world, data, rpc):
    lacking = sorted(name for name, scopes in KEY_SCOPES.items() if REQUIRED_SCOPE[rpc.name] not in scopes)
    key = data.draw(st.sampled_from(lacking), label="key")
    request = data.draw(arbitrary_message(rpc.request), label="request")
    before = await world.digest()
    outcome = await call_raw(world.channel, rpc, request.SerializeToString(), world.md(key))
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED)
    await unchanged(world, before)
    assert_no_foreign_data(world, outcome)


@fuzz
@given(rpc=st.sampled_from(ALL_RPCS), body=undecodable_bodies)
async def test_every_rpc_refuses_bytes_that_are_no_message(world, rpc, body):
    before = await world.digest()
    outcome = await call_raw(world.channel, rpc, body, world.md(KEY_FOR_SCOPE[REQUIRED_SCOPE[rpc.name]]))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, field="request")
    await unchanged(world, before)


@pytest.mark.parametrize(
    "rpc",
    [
        r
        for r in ALL_RPCS
        if any(f.type == f.TYPE_STRING and f.number == 1 for f in r.request.DESCRIPTOR.fields)
    ],
    ids=repr,
)
async def test_a_string_that_is_not_utf8_is_invalid_argument(world, rpc):
    before = await world.digest()
    body = length_delimited(1, b"ws\xff\xfe")
    outcome = await call_raw(world.channel, rpc, body, world.md(KEY_FOR_SCOPE[REQUIRED_SCOPE[rpc.name]]))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, field="request")
    await unchanged(world, before)


@fuzz
@given(data=st.data(), rpc=st.sampled_from([RPC[name] for name in READ_ONLY_RPCS]))
async def test_any_read_is_answered_precisely_and_changes_nothing(world, data, rpc):
    request = data.draw(arbitrary_message(rpc.request), label="request")
    before = await world.digest()
    outcome = await call_raw(
        world.channel, rpc, request.SerializeToString(), world.md(KEY_FOR_SCOPE[REQUIRED_SCOPE[rpc.name]])
    )
    assert outcome.code == grpc.StatusCode.OK or outcome.code in PRECISE, (outcome.code, outcome.details)
    await unchanged(world, before)
    if rpc in JOB_RPCS:  # an admin may name any workspace; a workspace key may see only its own
        assert_no_foreign_data(world, outcome)


async def test_a_message_beyond_the_size_limit_is_resource_exhausted(world):
    before = await world.digest()
    request = pb.ExecuteRequest(
        actions=[pb.Action(provider="openai", action="chat")], actor_id="x" * (Limits().receive_bytes + 1)
    )
    outcome = await call(world.channel, request, world.md("ws_a"))
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await unchanged(world, before)


@pytest.mark.parametrize("depth", [34, 60, 5000])
async def test_params_nested_beyond_the_protobuf_limit_are_invalid_argument(world, depth):
    before = await world.digest()
    outcome = await call_raw(world.channel, RPC["Execute"], deeply_nested_params(depth), world.md("ws_a"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, field="request")
    await unchanged(world, before)


async def test_params_nested_within_the_limit_are_stored_and_served(world):
    reply = await call_raw(world.channel, RPC["Execute"], deeply_nested_params(30), world.md("ws_a"))
    assert reply.code == grpc.StatusCode.OK
    job_id = pb.ExecuteResponse.FromString(reply.replies[0]).job_ids[0]
    got = await call(world.channel, pb.GetJobRequest(job_id=job_id), world.md("ws_a"))
    assert got.code == grpc.StatusCode.OK
    params = json_format.MessageToDict(pb.GetJobResponse.FromString(got.replies[0]).job.params)
    depth = 0
    while params:
        params, depth = params["a"], depth + 1
    assert depth == 30


# --- JobService ------------------------------------------------------------------------------------
valid_names = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=24).filter(
    str.strip
)
bad_names = st.one_of(
    st.just(""),
    st.text(" \t\n", min_size=1, max_size=4),
    st.integers(129, 2000).map(lambda n: "p" * n),
    control_text,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


def _action(provider: str, name: str, params: dict, crid: str = "") -> pb.Action:
    action = pb.Action(provider=provider, action=name, client_request_id=crid)
    action.params.update(params)
    return action


valid_actions = st.builds(_action, valid_names, valid_names, json_objects)


@st.composite
def malformed_executes(draw: st.DrawFn) -> tuple[pb.ExecuteRequest, set[grpc.StatusCode], str]:
    """An Execute request with exactly one thing wrong, the status it must get and the field it names."""
    request = pb.ExecuteRequest(
        actions=draw(st.lists(valid_actions, min_size=1, max_size=4)), actor_id="fuzz"
    )
    n = draw(st.integers(0, len(request.actions) - 1))
    action = request.actions[n]
    invalid = {grpc.StatusCode.INVALID_ARGUMENT}
    kind = draw(
        st.sampled_from(["none", "too_many", "provider", "action", "crid", "params", "actor", "workspace"])
    )
    if kind == "none":
        del request.actions[:]
        return request, invalid, "actions"
    if kind == "too_many":
        request.actions.extend([pb.Action(provider="p", action="a")] * 101)
        return request, invalid, "actions"
    if kind == "provider":
        action.provider = draw(bad_names)
        return request, invalid, f"actions[{n}].provider"
    if kind == "action":
        action.action = draw(bad_names)
        return request, invalid, f"actions[{n}].action"
    if kind == "crid":
        action.client_request_id = draw(hostile_ids)
        return request, invalid, f"actions[{n}].client_request_id"
    if kind == "params":
        action.params.update({"blob": "x" * draw(st.integers(64 * 1024, 200 * 1024))})
        return request, invalid, f"actions[{n}].params"
    if kind == "actor":
        request.actor_id = draw(st.one_of(control_text, st.integers(257, 5000).map(lambda k: "a" * k)))
        return request, invalid, "actor_id"
    request.workspace_id = draw(st.one_of(st.just("ws-b"), hostile_workspaces))
    # Naming a workspace other than the key's is refused as a permission matter; a malformed name may
    # also be called out as such.
    return request, {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}, "workspace_id"


@fuzz
@given(case=malformed_executes())
async def test_execute_refuses_a_request_with_anything_wrong_and_enqueues_nothing(world, case):
    request, codes, field = case
    before = await world.digest()
    outcome = await call(world.channel, request, world.md("ws_a"))
    assert_refused(outcome, codes, field)
    await unchanged(world, before)


@fuzz
@given(actions=st.lists(valid_actions, min_size=1, max_size=3), actor=valid_names)
async def test_an_accepted_action_is_stored_exactly_and_only_its_workspace_sees_it(world, actions, actor):
    outcome = await call(world.channel, pb.ExecuteRequest(actions=actions, actor_id=actor), world.md("ws_a"))
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    job_ids = pb.ExecuteResponse.FromString(outcome.replies[0]).job_ids
    assert len(job_ids) == len(actions)
    for job_id, action in zip(job_ids, actions, strict=True):
        got = await call(world.channel, pb.GetJobRequest(job_id=job_id), world.md("ws_a"))
        job = pb.GetJobResponse.FromString(got.replies[0]).job
        assert (job.workspace_id, job.action_provider, job.action_name, job.actor_id) == (
            "ws-a",
            action.provider,
            action.action,
            actor,
        )
        assert json_format.MessageToDict(job.params) == json_format.MessageToDict(action.params)
        foreign = await call(world.channel, pb.GetJobRequest(job_id=job_id), world.md("ws_b"))
        assert_refused(foreign, grpc.StatusCode.NOT_FOUND)


@fuzz
@given(job_id=hostile_ids)
async def test_get_job_refuses_an_id_that_could_break_a_key(world, job_id):
    before = await world.digest()
    outcome = await call(world.channel, pb.GetJobRequest(job_id=job_id), world.md("ws_a"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "job_id")
    await unchanged(world, before)


@fuzz
@given(data=st.data())
async def test_another_workspaces_job_looks_exactly_like_a_missing_one(world, data):
    foreign = data.draw(st.sampled_from(world.b_jobs), label="foreign")
    missing = data.draw(safe_ids.filter(lambda i: i not in world.a_jobs), label="missing")
    before = await world.digest()
    seen = []
    for job_id in (foreign, missing):
        outcome = await call(world.channel, pb.GetJobRequest(job_id=job_id), world.md("ws_a"))
        assert_refused(outcome, grpc.StatusCode.NOT_FOUND)
        assert_no_foreign_data(world, outcome)
        seen.append((outcome.details, error_info(outcome.error)))
    assert seen[0] == seen[1]
    await unchanged(world, before)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@st.composite
def forged_tokens(draw: st.DrawFn, mine: str, theirs: str) -> str:
    """A page token this service never issued to ws-a: altered, truncated, foreign or made up."""
    body, _, signature = mine.partition(".")
    kind = draw(
        st.sampled_from(["truncated", "flipped", "extended", "foreign", "spliced", "made_up", "text"])
    )
    if kind == "truncated":
        return mine[: draw(st.integers(1, len(mine) - 1))]
    if kind == "flipped":
        part = draw(st.sampled_from(["body", "signature"]))
        raw = bytearray(_unb64(body if part == "body" else signature))
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << draw(st.integers(0, 7))
        return f"{_b64(bytes(raw))}.{signature}" if part == "body" else f"{body}.{_b64(bytes(raw))}"
    if kind == "extended":
        return mine + draw(st.text(alphabet=string.ascii_letters + string.digits + "-_.=", min_size=1))
    if kind == "foreign":
        return theirs
    if kind == "spliced":
        return theirs.partition(".")[0] + "." + signature
    if kind == "made_up":
        state = draw(st.sampled_from([{"p": "index", "m": ""}, {"p": "legacy", "c": 0, "o": 0}]))
        payload = json.dumps({"w": draw(st.sampled_from(["ws-a", "ws-b"])), "f": "", "s": state}).encode()
        return f"{_b64(payload)}.{_b64(draw(st.binary(min_size=16, max_size=16)))}"
    return draw(st.text(min_size=1, max_size=300).filter(lambda t: t != mine))


@fuzz
@given(data=st.data())
async def test_list_jobs_refuses_a_forged_page_token(world, data):
    token = data.draw(forged_tokens(world.a_token, world.b_token), label="token")
    before = await world.digest()
    outcome = await call(world.channel, pb.ListJobsRequest(page_size=2, page_token=token), world.md("ws_a"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    await unchanged(world, before)


async def test_list_jobs_refuses_a_token_issued_for_other_filters(world):
    request = pb.ListJobsRequest(page_token=world.a_token, status=pb.JOB_STATUS_PENDING)
    assert_refused(await call(world.channel, request, world.md("ws_a")), grpc.StatusCode.INVALID_ARGUMENT)


@fuzz
@given(
    page_size=st.integers(-(2**31), 2**31 - 1),
    status=st.one_of(st.integers(0, 4), unknown_enum_values(pb.JobStatus)),
)
async def test_list_jobs_answers_any_size_and_status_precisely(world, page_size, status):
    before = await world.digest()
    outcome = await call(
        world.channel, pb.ListJobsRequest(page_size=page_size, status=status), world.md("ws_a")
    )
    if page_size < 0:
        assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "page_size")
    elif status > 4 or status < 0:
        assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "status")
    else:
        assert outcome.code == grpc.StatusCode.OK, outcome.details
        jobs = pb.ListJobsResponse.FromString(outcome.replies[0]).jobs
        assert len(jobs) <= min(page_size or 50, 500)
        assert {j.job_id for j in jobs} <= set(world.a_jobs)
    assert_no_foreign_data(world, outcome)
    await unchanged(world, before)


@fuzz
@given(
    page_size=st.integers(1, 4), status=st.sampled_from([0, pb.JOB_STATUS_PENDING, pb.JOB_STATUS_COMPLETED])
)
async def test_paging_returns_each_of_the_workspaces_jobs_exactly_once(world, page_size, status):
    seen: list[str] = []
    token = ""
    for _ in range(20):
        outcome = await call(
            world.channel,
            pb.ListJobsRequest(page_size=page_size, status=status, page_token=token),
            world.md("ws_a"),
        )
        assert outcome.code == grpc.StatusCode.OK, outcome.details
        assert_no_foreign_data(world, outcome)
        page = pb.ListJobsResponse.FromString(outcome.replies[0])
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert not token, "paging ends"
    expected = {pb.JOB_STATUS_PENDING: world.a_jobs[:3], pb.JOB_STATUS_COMPLETED: world.a_jobs[3:]}
    assert sorted(seen) == sorted(expected.get(status, world.a_jobs))


@fuzz
@given(worker_id=st.one_of(control_text, st.integers(129, 5000).map(lambda n: "w" * n)))
async def test_claim_job_refuses_a_bad_worker_name_and_claims_nothing(world, worker_id):
    before = await world.digest()
    outcome = await call(world.channel, pb.ClaimJobRequest(worker_id=worker_id), world.md("worker"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "worker_id")
    await unchanged(world, before)


@st.composite
def malformed_updates(
    draw: st.DrawFn, world: World
) -> tuple[pb.UpdateJobStatusRequest, grpc.StatusCode, str]:
    request = pb.UpdateJobStatusRequest(
        workspace_id="ws-a",
        job_id=draw(st.sampled_from(world.a_jobs[:3])),
        status=draw(st.sampled_from([pb.JOB_STATUS_RUNNING, pb.JOB_STATUS_COMPLETED, pb.JOB_STATUS_FAILED])),
    )
    kind = draw(st.sampled_from(["workspace", "job_id", "status", "result", "error", "foreign", "missing"]))
    if kind == "workspace":
        request.workspace_id = draw(hostile_workspaces)
        return request, grpc.StatusCode.INVALID_ARGUMENT, "workspace_id"
    if kind == "job_id":
        request.job_id = draw(hostile_ids)
        return request, grpc.StatusCode.INVALID_ARGUMENT, "job_id"
    if kind == "status":
        request.status = draw(
            st.one_of(st.sampled_from([0, pb.JOB_STATUS_PENDING]), unknown_enum_values(pb.JobStatus))
        )
        return request, grpc.StatusCode.INVALID_ARGUMENT, "status"
    if kind == "result":
        request.result.string_value = "r" * draw(st.integers(1 << 20, (1 << 20) + 100))
        return request, grpc.StatusCode.INVALID_ARGUMENT, "result"
    if kind == "error":
        request.error = draw(st.one_of(control_text, st.integers(4097, 20_000).map(lambda n: "e" * n)))
        return request, grpc.StatusCode.INVALID_ARGUMENT, "error"
    if kind == "foreign":
        # the job exists, in another workspace than the one named
        request.workspace_id, request.job_id = draw(
            st.sampled_from([("ws-a", j) for j in world.b_jobs] + [("ws-b", j) for j in world.a_jobs])
        )
        return request, grpc.StatusCode.NOT_FOUND, ""
    request.job_id = draw(safe_ids)
    return request, grpc.StatusCode.NOT_FOUND, ""


@fuzz
@given(data=st.data())
async def test_update_job_status_refuses_anything_wrong_and_changes_no_job(world, data):
    request, code, field = data.draw(malformed_updates(world), label="request")
    before = await world.digest()
    outcome = await call(world.channel, request, world.md("worker"))
    assert_refused(outcome, code, field)
    assert_no_foreign_data(world, outcome)
    await unchanged(world, before)


# --- MigrationController ---------------------------------------------------------------------------
known_scopes = ["actions:execute", "actions:preview", "jobs:work", "migration:admin"]


@st.composite
def malformed_key_specs(draw: st.DrawFn) -> migration_controller_pb2.CreateApiKeyRequest:
    kind = draw(st.sampled_from(["no_scopes", "unknown_scope", "bad_workspace", "missing_workspace"]))
    request = migration_controller_pb2.CreateApiKeyRequest(description=draw(st.text(max_size=50)))
    if kind == "no_scopes":
        request.workspace_id = "ws-a"
    elif kind == "unknown_scope":
        request.workspace_id = "ws-a"
        request.scopes.extend(draw(st.lists(st.sampled_from(known_scopes), max_size=2)))
        request.scopes.append(draw(st.text(max_size=30).filter(lambda s: s not in known_scopes)))
    elif kind == "bad_workspace":
        request.workspace_id = draw(hostile_workspaces)
        request.scopes.extend(draw(st.lists(st.sampled_from(known_scopes), min_size=1, max_size=4)))
    else:
        request.scopes.extend(["actions:preview"])
    return request


@fuzz
@given(request=malformed_key_specs())
async def test_create_api_key_refuses_a_bad_spec_and_stores_no_key(world, request):
    before = await world.digest()
    outcome = await call(world.channel, request, world.md("admin"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT)
    await unchanged(world, before)


def _is_digest(text: str) -> bool:
    hexpart = text.removeprefix("sha256:").lower()
    return len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)


@fuzz
@given(
    digest=st.one_of(
        st.text(max_size=80),
        hostile_ids,
        st.integers(0, 70).map(lambda n: "sha256:" + "a" * n),
        st.just("sha256:" + "g" * 64),
    ).filter(lambda d: not _is_digest(d))
)
async def test_revoke_api_key_refuses_what_is_no_digest(world, digest):
    before = await world.digest()
    outcome = await call(
        world.channel, migration_controller_pb2.RevokeApiKeyRequest(key_digest=digest), world.md("admin")
    )
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "key_digest")
    await unchanged(world, before)


@fuzz
@given(digest=st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()))
async def test_revoking_an_unknown_key_revokes_nothing(world, digest):
    before = await world.digest()
    outcome = await call(
        world.channel, migration_controller_pb2.RevokeApiKeyRequest(key_digest=digest), world.md("admin")
    )
    assert outcome.code == grpc.StatusCode.OK
    assert not migration_controller_pb2.RevokeApiKeyResponse.FromString(outcome.replies[0]).revoked
    await unchanged(world, before)


@st.composite
def malformed_stage_calls(draw: st.DrawFn) -> tuple[object, str]:
    kind = draw(st.sampled_from(["get_workspace", "set_workspace", "set_stage"]))
    if kind == "get_workspace":
        return stage_pb2.GetStageRequest(workspace_id=draw(hostile_workspaces)), "workspace_id"
    if kind == "set_workspace":
        request = stage_pb2.SetStageRequest(
            workspace_id=draw(hostile_workspaces),
            stage=draw(st.integers(1, 5)),
            shadow_reads=draw(st.booleans()),
        )
        return request, "workspace_id"
    request = stage_pb2.SetStageRequest(
        workspace_id=draw(st.sampled_from(["", "ws-a"])),
        stage=draw(st.one_of(st.just(0), unknown_enum_values(stage_pb2.Stage))),
        shadow_reads=draw(st.booleans()),
    )
    return request, "stage"


@fuzz
@given(case=malformed_stage_calls())
async def test_stage_rpcs_refuse_bad_workspaces_and_unknown_stages(world, case):
    request, field = case
    before = await world.digest()
    outcome = await call(world.channel, request, world.md("admin"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, field)
    await unchanged(world, before)


@st.composite
def malformed_operation_starts(draw: st.DrawFn) -> tuple[object, str]:
    """StartBackfill, VerifyMigration, CleanupLegacy or ReverseCopy with one option out of range."""
    rpc = draw(st.sampled_from(["backfill", "verify", "cleanup", "reverse"]))
    options = {
        "backfill": ["workspace_id", "rate_limit", "batch_size", "max_keys"],
        "verify": ["workspace_id", "rate_limit", "batch_size"],
        "cleanup": ["rate_limit", "batch_size", "max_keys"],
        "reverse": ["workspace_id", "rate_limit", "batch_size"],
    }[rpc]
    field = draw(st.sampled_from(options))
    value = {
        "workspace_id": hostile_workspaces,
        "rate_limit": bad_rates,
        "batch_size": bad_counts,
        "max_keys": bad_counts,
    }[field]
    kwargs = {field: draw(value)}
    request = {
        "backfill": lambda: backfill_pb2.StartBackfillRequest(dry_run=True, **kwargs),
        "verify": lambda: verification_pb2.VerifyMigrationRequest(**kwargs),
        "cleanup": lambda: cleanup_pb2.CleanupLegacyRequest(dry_run=True, **kwargs),
        "reverse": lambda: cleanup_pb2.ReverseCopyRequest(dry_run=True, **kwargs),
    }[rpc]()
    return request, field


@fuzz
@given(case=malformed_operation_starts())
async def test_operations_refuse_options_out_of_range_and_start_nothing(world, case):
    request, field = case
    before = await world.digest()
    outcome = await call(world.channel, request, world.md("admin"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, field)
    await unchanged(world, before)


BACKFILL_ID_REQUESTS = [
    backfill_pb2.WatchBackfillRequest,
    backfill_pb2.GetBackfillRequest,
    backfill_pb2.PauseBackfillRequest,
    backfill_pb2.ResumeBackfillRequest,
    backfill_pb2.CancelBackfillRequest,
    backfill_pb2.UpdateBackfillRequest,
]


@fuzz
@given(make=st.sampled_from(BACKFILL_ID_REQUESTS), backfill_id=hostile_ids)
async def test_backfill_rpcs_refuse_an_id_that_could_break_a_key(world, make, backfill_id):
    before = await world.digest()
    outcome = await call(world.channel, make(backfill_id=backfill_id), world.md("admin"))
    assert_refused(outcome, grpc.StatusCode.INVALID_ARGUMENT, "backfill_id")
    await unchanged(world, before)


@fuzz
@given(make=st.sampled_from(BACKFILL_ID_REQUESTS), backfill_id=st.one_of(st.just(""), st.uuids().map(str)))
async def test_backfill_rpcs_report_an_unknown_backfill_as_not_found(world, make, backfill_id):
    before = await world.digest()
    outcome = await call(world.channel, make(backfill_id=backfill_id), world.md("admin"))
    # an id of another shape than the controller's own may be refused as malformed instead
    assert_refused(outcome, {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}, "backfill_id")
    await unchanged(world, before)


@fuzz
@given(
    change=st.one_of(
        st.tuples(bad_rates, st.just(0)),
        st.tuples(st.just(10.0), bad_counts),
        st.tuples(bad_rates, bad_counts),
    )
)
async def test_update_backfill_refuses_a_bad_rate_or_batch(world, change):
    rate, batch = change
    before = await world.digest()
    request = backfill_pb2.UpdateBackfillRequest(
        backfill_id=str(uuid.uuid4()), rate_limit=rate, update_rate_limit=True, batch_size=batch
    )
    outcome = await call(world.channel, request, world.md("admin"))
    assert_refused(outcome, {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
    await unchanged(world, before)


async def test_nothing_verified_yet_is_not_found(world):
    before = await world.digest()
    outcome = await call(world.channel, verification_pb2.GetVerificationRequest(), world.md("admin"))
    assert_refused(outcome, grpc.StatusCode.NOT_FOUND)
    await unchanged(world, before)


async def test_cleanup_before_new_only_is_refused_and_deletes_nothing(world):
    before = await world.digest()
    outcome = await call(world.channel, cleanup_pb2.CleanupLegacyRequest(), world.md("admin"))
    assert_refused(outcome, grpc.StatusCode.FAILED_PRECONDITION)
    await unchanged(world, before)


def test_every_rpc_of_the_contract_is_fuzzed():
    """A new RPC must be added to the scope table (and so to every property above)."""
    assert {r.name for r in JOB_RPCS + CONTROLLER_RPCS} == set(REQUIRED_SCOPE)
