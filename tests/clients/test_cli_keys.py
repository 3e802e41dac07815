"""relayctl keys: a key created through the CLI is printed once and works; revoked, it stops working."""

from __future__ import annotations

from tests.migration_testkit import relayctl


async def test_a_created_key_works_until_it_is_revoked_and_revoking_twice_finds_no_key(relay, keys):
    admin = keys.raw["admin"]
    code, out, _ = await relayctl(
        relay.target, admin, "keys", "create", "--workspace", "ws-a", "--scope", "actions:preview"
    )
    assert code == 0
    created = dict(line.split(":", 1) for line in out.strip().splitlines())
    api_key, digest = created["api_key"].strip(), created["digest"].strip()
    assert digest.startswith("sha256:")

    code, _, err = await relayctl(relay.target, api_key, "jobs", "get", "no-such-job")
    assert code == 3 and "NOT_FOUND" in err  # authenticated: only the job is missing

    assert (await relayctl(relay.target, admin, "keys", "revoke", digest))[:2] == (0, "revoked\n")
    code, _, err = await relayctl(relay.target, api_key, "jobs", "get", "no-such-job")
    assert code == 4 and "UNAUTHENTICATED" in err
    assert (await relayctl(relay.target, admin, "keys", "revoke", digest))[:2] == (3, "no such key\n")
