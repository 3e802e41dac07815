"""relayctl jobs execute | get | list, against a running Relay: output and exit codes.

Exit codes (relay/clients/cli_common.py): 0 ok, 2 usage, 3 refused (NOT_FOUND, INVALID_ARGUMENT, ...),
4 authentication or permission, 5 unreachable.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner, Result

from harness.ports import free_port
from relay.clients.relayctl import cli
from tests.job_testkit import write_legacy_job


@pytest.fixture(autouse=True)
def no_saved_credentials(tmp_path, monkeypatch):
    """relayctl must use the options given, never a developer's saved key or environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("RELAY_TARGET", "RELAY_API_KEY", "RELAY_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


async def relayctl(target: str, api_key: str, *args: str) -> Result:
    # relayctl runs its own event loop (asyncio.run); the server runs on this one, so the CLI gets a thread.
    return await asyncio.to_thread(
        CliRunner().invoke, cli, ["--target", target, "--api-key", api_key, *args], catch_exceptions=False
    )


async def test_execute_then_get_prints_the_job(relay, keys):
    key = keys.raw["ws_a"]
    done = await relayctl(
        relay.target,
        key,
        "jobs",
        "execute",
        "--provider",
        "openai",
        "--action",
        "chat",
        "--params",
        '{"prompt": "hi", "max_tokens": 5}',
        "--actor",
        "me",
    )
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].startswith("job_id: ") and lines[1] == "queue_depth: 1"
    job_id = lines[0].removeprefix("job_id: ")

    shown = await relayctl(relay.target, key, "jobs", "get", job_id)
    assert shown.exit_code == 0
    job = json.loads(shown.stdout)
    assert (job["job_id"], job["workspace_id"], job["status"]) == (job_id, "ws-a", "JOB_STATUS_PENDING")
    assert job["params"] == {"prompt": "hi", "max_tokens": 5}
    assert (job["action_provider"], job["action_name"], job["actor_id"]) == ("openai", "chat", "me")


async def test_execute_with_a_client_request_id_twice_prints_the_same_job(relay, keys):
    args = ("jobs", "execute", "--provider", "openai", "--action", "chat", "--client-request-id", "once-1")
    first = await relayctl(relay.target, keys.raw["ws_a"], *args)
    again = await relayctl(relay.target, keys.raw["ws_a"], *args)
    assert first.stdout.splitlines()[0] == again.stdout.splitlines()[0]


async def test_getting_a_missing_job_exits_3_with_the_reason(relay, keys):
    result = await relayctl(relay.target, keys.raw["ws_a"], "jobs", "get", "no-such-job")
    assert result.exit_code == 3
    assert result.stderr.strip() == "error: NOT_FOUND [JOB_NOT_FOUND]: job not found"
    assert result.stdout == ""


async def test_another_workspaces_job_is_missing_for_the_cli_too(relay, redis, keys):
    job_id = await write_legacy_job(redis, "ws-b")
    result = await relayctl(relay.target, keys.raw["ws_a"], "jobs", "get", job_id)
    assert result.exit_code == 3 and "NOT_FOUND" in result.stderr


async def test_a_malformed_job_id_exits_3_as_invalid(relay, keys):
    result = await relayctl(relay.target, keys.raw["ws_a"], "jobs", "get", "ai:jobs:*")
    assert result.exit_code == 3 and result.stderr.startswith(
        "error: INVALID_ARGUMENT [INVALID_ARGUMENT]: job_id"
    )


async def test_list_prints_a_table_newest_first_and_hints_at_the_next_page(relay, keys):
    key = keys.raw["ws_a"]
    ids = []
    for n in range(3):
        done = await relayctl(
            relay.target, key, "jobs", "execute", "--provider", "openai", "--action", f"a{n}"
        )
        ids.append(done.stdout.splitlines()[0].removeprefix("job_id: "))
    listed = await relayctl(relay.target, key, "jobs", "list", "--page-size", "2")
    assert listed.exit_code == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["JOB", "ID", "STATUS", "PROVIDER/ACTION", "ENQUEUED"]
    assert [row.split()[0] for row in rows] == [ids[2], ids[1]]
    assert rows[0].split()[1:3] == ["pending", "openai/a2"]
    assert listed.stderr.startswith("next page: --page-token ")
    token = listed.stderr.split()[-1]
    rest = await relayctl(relay.target, key, "jobs", "list", "--page-size", "2", "--page-token", token)
    assert [row.split()[0] for row in rest.stdout.splitlines()[1:]] == [ids[0]]
    assert rest.stderr == ""


async def test_list_all_as_json_follows_every_page(relay, redis, keys):
    key = keys.raw["ws_a"]
    legacy = [await write_legacy_job(redis, "ws-a", status="completed") for _ in range(3)]
    await relayctl(relay.target, key, "jobs", "execute", "--provider", "openai", "--action", "chat")
    listed = await relayctl(relay.target, key, "jobs", "list", "--all", "--json", "--page-size", "1")
    jobs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(jobs) == 4 and listed.stderr == ""
    completed = await relayctl(relay.target, key, "jobs", "list", "--all", "--json", "--status", "completed")
    assert sorted(json.loads(line)["job_id"] for line in completed.stdout.splitlines()) == sorted(legacy)


@pytest.mark.parametrize(
    "key,args",
    [
        ("nobody", ("jobs", "list")),
        ("ws_a_preview", ("jobs", "execute", "--provider", "openai", "--action", "chat")),
        ("worker", ("jobs", "get", "some-job")),
    ],
    ids=["unknown-key", "missing-scope", "worker-reads"],
)
async def test_a_bad_or_insufficient_key_exits_4(relay, keys, key, args):
    result = await relayctl(relay.target, keys.raw.get(key, "not-a-key"), *args)
    assert result.exit_code == 4
    assert result.stderr.startswith(("error: UNAUTHENTICATED", "error: PERMISSION_DENIED"))


async def test_an_unreachable_server_exits_5(keys):
    result = await relayctl(f"127.0.0.1:{free_port()}", keys.raw["ws_a"], "jobs", "get", "some-job")
    assert result.exit_code == 5
    assert result.stderr.startswith("error: UNAVAILABLE")


@pytest.mark.parametrize("params", ["not json", "[1, 2]", '"text"'])
async def test_params_that_are_not_a_json_object_are_a_usage_error(relay, keys, params):
    result = await relayctl(
        relay.target,
        keys.raw["ws_a"],
        "jobs",
        "execute",
        "--provider",
        "p",
        "--action",
        "a",
        "--params",
        params,
    )
    assert result.exit_code == 2 and "--params" in result.stderr


async def test_server_side_validation_errors_exit_3(relay, keys):
    result = await relayctl(
        relay.target, keys.raw["ws_a"], "jobs", "execute", "--provider", " ", "--action", "a"
    )
    assert result.exit_code == 3
    assert "actions[0].provider is required" in result.stderr
