"""Api keys: who is calling, for which workspace, with which scopes.

Keys come from the JSON file named by RELAY_API_KEYS_FILE (raw keys or ``sha256:<hex>`` digests) and from
Redis (created by ``relayctl keys create``; only the digest is stored). The workspace always comes from
the key, never from a request.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from relay.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from relay.core.ids import is_workspace_id
from relay.core.keys import KEYS
from relay.core.stores import repeatable

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

SCOPE_EXECUTE = "actions:execute"
SCOPE_PREVIEW = "actions:preview"
SCOPE_WORK = "jobs:work"
SCOPE_ADMIN = "migration:admin"
#: Read-only access to the controller: its Get* and Watch* RPCs (the migration console's viewers).
SCOPE_VIEW = "migration:view"
ALL_SCOPES = (SCOPE_EXECUTE, SCOPE_PREVIEW, SCOPE_WORK, SCOPE_ADMIN, SCOPE_VIEW)
WORKSPACE_SCOPES = (SCOPE_EXECUTE, SCOPE_PREVIEW)


@dataclass(frozen=True, slots=True)
class Principal:
    digest: str
    workspace_id: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(f"the api key lacks the {scope} scope", metadata={"scope": scope})

    def workspace(self, requested: str = "") -> str:
        """The caller's workspace; a request naming another one is refused, not redirected."""
        if not self.workspace_id:
            raise PermissionDenied("the api key belongs to no workspace")
        if requested and requested != self.workspace_id:
            raise PermissionDenied(
                "the api key does not grant access to that workspace", metadata={"field": "workspace_id"}
            )
        return self.workspace_id


def digest_of(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def new_raw_key() -> str:
    return "rk_" + secrets.token_urlsafe(32)


def check_key_spec(workspace_id: str, scopes: Sequence[str]) -> frozenset[str]:
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if not scopes or unknown:
        raise InvalidArgument("scopes", f"must be a non-empty subset of {', '.join(ALL_SCOPES)}")
    needs_workspace = any(s in WORKSPACE_SCOPES for s in scopes)
    if needs_workspace and not is_workspace_id(workspace_id):
        raise InvalidArgument("workspace_id", "is required for actions:* scopes and must be a valid id")
    if workspace_id and not is_workspace_id(workspace_id):
        raise InvalidArgument("workspace_id", "must match ^[a-z0-9][a-z0-9_-]{0,31}$")
    return frozenset(scopes)


def load_key_file(path: str | Path) -> dict[str, Principal]:
    """Principals by key digest. A malformed file stops start-up: running with half the keys is worse."""
    try:
        entries = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of keys")
    principals: dict[str, Principal] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {n} is not an object")
        key = str(entry.get("key") or "")
        if not key:
            raise ValueError(f"{path}: entry {n} has no key")
        digest = key.removeprefix("sha256:").lower() if key.startswith("sha256:") else digest_of(key)
        if not _SHA256_HEX.fullmatch(digest):
            raise ValueError(f"{path}: entry {n}: a sha256: key must be 64 hex digits")
        if digest in principals:
            raise ValueError(f"{path}: entry {n} repeats the key of an earlier entry")
        workspace_id = str(entry.get("workspace_id") or "")
        scopes = entry.get("scopes")
        try:
            if not isinstance(scopes, list):
                raise InvalidArgument("scopes", "must be a list")
            scope_set = check_key_spec(workspace_id, [str(s) for s in scopes])
        except InvalidArgument as exc:
            raise ValueError(f"{path}: entry {n}: {exc.message}") from None
        principals[digest] = Principal(digest, workspace_id, scope_set)
    return principals


class KeyRing:
    """Resolves bearer tokens to principals: the key file first, then Redis (cached briefly)."""

    def __init__(self, redis: Redis, static: dict[str, Principal], cache_seconds: float = 5.0):
        self._redis = redis
        self._static = static
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        #: Digest of each key presented lately: a caller sends the same key with every RPC, so it is
        #: hashed once, not per call (bounded; valid or not, a digest is a pure function of the key).
        self._digests: dict[str, str] = {}
        self._cache_seconds = cache_seconds

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        token = ""
        for name, value in metadata or ():
            if name == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer":
                    token = ""
                break
        token = token.strip()
        if not token:
            raise Unauthenticated(
                "missing 'authorization: Bearer <api key>' metadata", reason="API_KEY_MISSING"
            )
        digest = self._digests.get(token)
        if digest is None:
            if len(self._digests) >= 10_000:
                self._digests.clear()
            digest = self._digests[token] = digest_of(token)
        principal = self._static.get(digest) or await self._lookup(digest)
        if principal is None:
            raise Unauthenticated("the api key is not valid")
        return principal

    async def authorize(self, metadata: Iterable[tuple[str, str | bytes]] | None, scope: str) -> Principal:
        """The caller's principal, refused (PERMISSION_DENIED) unless its key holds ``scope``."""
        principal = await self.authenticate(metadata)
        principal.require(scope)
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        raw = await repeatable(lambda: self._redis.hgetall(KEYS.api_key(digest)))  # a read
        principal = None
        if raw:
            data = {k.decode(): v.decode() for k, v in raw.items()}
            principal = Principal(digest, data.get("workspace_id", ""), frozenset(json.loads(data["scopes"])))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._cache_seconds, principal)
        return principal

    async def create(self, workspace_id: str, scopes: Sequence[str], description: str) -> tuple[str, str]:
        """A new key stored in Redis: (raw key, digest). The raw key is never stored."""
        scope_set = check_key_spec(workspace_id, scopes)
        raw = new_raw_key()
        digest = digest_of(raw)
        await self._redis.hset(
            KEYS.api_key(digest),
            mapping={
                "workspace_id": workspace_id,
                "scopes": json.dumps(sorted(scope_set)),
                "description": description[:200],
                "created_at": str(time.time()),
            },
        )
        return raw, digest

    async def revoke(self, digest: str) -> bool:
        self._cache.pop(digest, None)
        return bool(await self._redis.delete(KEYS.api_key(digest)))

    async def any_stored(self) -> bool:
        async for _ in self._redis.scan_iter(match=KEYS.api_key_pattern, count=1000):
            return True
        return False
