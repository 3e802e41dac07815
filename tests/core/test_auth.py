"""Api keys: the key file (raw keys or sha256 digests), bearer tokens, scopes and the caller's workspace."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fakeredis
import pytest

from relay.core.auth import (
    SCOPE_ADMIN,
    SCOPE_EXECUTE,
    SCOPE_PREVIEW,
    SCOPE_WORK,
    KeyRing,
    load_key_file,
)
from relay.core.errors import PermissionDenied, Unauthenticated


def _file(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def ring(tmp_path: Path) -> KeyRing:
    digest = hashlib.sha256(b"hashed-key").hexdigest()
    path = _file(
        tmp_path,
        [
            {"key": "raw-key", "workspace_id": "ws-a", "scopes": [SCOPE_EXECUTE, SCOPE_PREVIEW]},
            {"key": f"sha256:{digest.upper()}", "workspace_id": "ws-b", "scopes": [SCOPE_PREVIEW]},
            {"key": "worker-key", "scopes": [SCOPE_WORK]},
            {"key": "admin-key", "workspace_id": None, "scopes": [SCOPE_ADMIN]},
        ],
    )
    return KeyRing(fakeredis.FakeAsyncRedis(), load_key_file(path))


async def test_a_raw_key_from_the_file_names_its_workspace_and_scopes(ring):
    principal = await ring.authenticate(_bearer("raw-key"))
    assert principal.workspace() == "ws-a"
    assert principal.scopes == {SCOPE_EXECUTE, SCOPE_PREVIEW}


async def test_a_digest_in_the_file_matches_its_raw_key_in_either_hex_case(ring):
    assert (await ring.authenticate(_bearer("hashed-key"))).workspace() == "ws-b"
    with pytest.raises(Unauthenticated):
        await ring.authenticate(_bearer(f"sha256:{hashlib.sha256(b'hashed-key').hexdigest()}"))


async def test_worker_and_admin_keys_belong_to_no_workspace(ring):
    for raw in ("worker-key", "admin-key"):
        principal = await ring.authenticate(_bearer(raw))
        with pytest.raises(PermissionDenied):
            principal.workspace()


async def test_a_scope_the_key_lacks_is_permission_denied_naming_the_scope(ring):
    principal = await ring.authenticate(_bearer("hashed-key"))
    principal.require(SCOPE_PREVIEW)
    with pytest.raises(PermissionDenied) as denied:
        principal.require(SCOPE_EXECUTE)
    assert denied.value.metadata == {"scope": SCOPE_EXECUTE}


async def test_naming_another_workspace_is_refused_not_redirected(ring):
    principal = await ring.authenticate(_bearer("raw-key"))
    assert principal.workspace("ws-a") == "ws-a"
    with pytest.raises(PermissionDenied):
        principal.workspace("ws-b")


@pytest.mark.parametrize(
    "metadata,reason",
    [
        ((), "API_KEY_MISSING"),
        (None, "API_KEY_MISSING"),
        ((("authorization", ""),), "API_KEY_MISSING"),
        ((("authorization", "Bearer"),), "API_KEY_MISSING"),
        ((("authorization", "Bearer    "),), "API_KEY_MISSING"),
        ((("authorization", "Token raw-key"),), "API_KEY_MISSING"),
        ((("authorization", "raw-key"),), "API_KEY_MISSING"),
        ((("x-api-key", "raw-key"),), "API_KEY_MISSING"),
        ((("authorization", "Bearer wrong"),), "API_KEY_INVALID"),
        ((("authorization", "Bearer raw-key2"),), "API_KEY_INVALID"),
    ],
)
async def test_a_missing_malformed_or_unknown_bearer_token_is_unauthenticated(ring, metadata, reason):
    with pytest.raises(Unauthenticated) as refused:
        await ring.authenticate(metadata)
    assert refused.value.reason == reason


async def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_key_do_not_matter(ring):
    assert (await ring.authenticate((("authorization", "bearer  raw-key "),))).workspace() == "ws-a"


async def test_keys_created_in_redis_authenticate_until_revoked(ring):
    raw, digest = await ring.create("ws-c", [SCOPE_PREVIEW], "a test key")
    assert (await ring.authenticate(_bearer(raw))).workspace() == "ws-c"
    assert await ring.revoke(digest)
    with pytest.raises(Unauthenticated):
        await ring.authenticate(_bearer(raw))


@pytest.mark.parametrize(
    "entries,problem",
    [
        ("not json", "keys.json"),
        ({"key": "k"}, "a JSON list"),
        (["k"], "entry 0"),
        ([{"workspace_id": "ws-a", "scopes": [SCOPE_PREVIEW]}], "entry 0 has no key"),
        ([{"key": "k", "workspace_id": "ws-a", "scopes": []}], "entry 0"),
        ([{"key": "k", "workspace_id": "ws-a", "scopes": ["jobs:everything"]}], "entry 0"),
        ([{"key": "k", "workspace_id": "ws-a", "scopes": SCOPE_PREVIEW}], "entry 0"),
        ([{"key": "k", "scopes": [SCOPE_EXECUTE]}], "entry 0"),
        ([{"key": "k", "workspace_id": "WS A", "scopes": [SCOPE_PREVIEW]}], "entry 0"),
        (
            [
                {"key": "k", "workspace_id": "ws-a", "scopes": [SCOPE_PREVIEW]},
                {"key": "sha256:abc", "scopes": [SCOPE_WORK]},
            ],
            "entry 1",
        ),
        ([{"key": "k", "scopes": [SCOPE_WORK]}, {"key": "k", "scopes": [SCOPE_ADMIN]}], "entry 1"),
    ],
    ids=[
        "not-json",
        "not-a-list",
        "entry-not-object",
        "no-key",
        "no-scopes",
        "unknown-scope",
        "scopes-not-list",
        "actions-scope-without-workspace",
        "bad-workspace",
        "digest-not-hex",
        "duplicate-key",
    ],
)
def test_a_malformed_key_file_stops_start_up_saying_where(tmp_path, entries, problem):
    path = _file(tmp_path, entries)
    with pytest.raises(ValueError) as refused:
        load_key_file(path)
    assert problem in str(refused.value)
    assert "keys.json" in str(refused.value)
