"""Opaque, signed page tokens (AIP-158).

A token is ``base64url(payload) . base64url(HMAC-SHA256(secret, payload)[:16])``. The payload names the
workspace and a digest of the filters, so a token can be neither forged nor replayed against another
workspace or with other filters. The secret lives in Redis so every replica accepts every token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from redis.asyncio import Redis

from relay.core.errors import InvalidArgument
from relay.core.keys import KEYS


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokenCodec:
    def __init__(self, secret: bytes):
        self._secret = secret

    @classmethod
    async def shared(cls, redis: Redis) -> PageTokenCodec:
        """The codec with the secret every replica uses (created by whichever replica starts first)."""
        await redis.set(KEYS.token_secret, secrets.token_hex(32), nx=True)
        secret = await redis.get(KEYS.token_secret)
        return cls(secret)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def encode(self, workspace_id: str, filters: str, state: dict[str, Any]) -> str:
        payload = json.dumps({"w": workspace_id, "f": _filter_digest(filters), "s": state}).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, token: str, workspace_id: str, filters: str) -> dict[str, Any]:
        bad = InvalidArgument("page_token", "is not a token this service issued", reason="PAGE_TOKEN_INVALID")
        body, dot, signature = token.partition(".")
        if not dot or len(token) > 4096:
            raise bad
        try:
            payload = _unb64(body)
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise bad from None
        # base64 ignores the spare bits of a last character: without this, altered texts would pass.
        if _b64(payload) != body or _b64(given) != signature:
            raise bad
        if not hmac.compare_digest(given, self._sign(payload)):
            raise bad
        data = json.loads(payload)
        if data.get("w") != workspace_id:
            raise bad
        if data.get("f") != _filter_digest(filters):
            raise InvalidArgument(
                "page_token",
                "was issued for other filters; start again without it",
                reason="PAGE_TOKEN_FILTERS",
            )
        state = data.get("s")
        if not isinstance(state, dict):
            raise bad
        return state


def _filter_digest(filters: str) -> str:
    return hashlib.sha256(filters.encode()).hexdigest()[:16]
