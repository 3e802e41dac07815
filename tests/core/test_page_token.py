"""Page tokens are opaque and signed: only the exact token issued, in its workspace, with its filters."""

from __future__ import annotations

import fakeredis
import pytest

from relay.core.errors import InvalidArgument
from relay.core.page_token import PageTokenCodec

STATE = {"p": "legacy", "c": 1234, "k": "ai:jobs:abc"}


@pytest.fixture
def codec() -> PageTokenCodec:
    return PageTokenCodec(b"s" * 32)


def _reason(codec: PageTokenCodec, token: str, workspace: str = "ws-a", filters: str = "status=") -> str:
    with pytest.raises(InvalidArgument) as refused:
        codec.decode(token, workspace, filters)
    assert refused.value.field == "page_token"
    return refused.value.reason


def test_a_token_carries_its_state_back(codec):
    token = codec.encode("ws-a", "status=", STATE)
    assert codec.decode(token, "ws-a", "status=") == STATE


def test_a_token_is_opaque_url_safe_text(codec):
    token = codec.encode("ws-a", "status=", STATE)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert "ws-a" not in token


def test_a_token_of_another_workspace_is_invalid(codec):
    assert _reason(codec, codec.encode("ws-b", "status=", STATE)) == "PAGE_TOKEN_INVALID"


def test_a_token_used_with_other_filters_says_so(codec):
    token = codec.encode("ws-a", "status=", STATE)
    assert _reason(codec, token, filters="status=completed") == "PAGE_TOKEN_FILTERS"


def test_a_token_signed_with_another_secret_is_invalid(codec):
    assert _reason(codec, PageTokenCodec(b"t" * 32).encode("ws-a", "status=", STATE)) == "PAGE_TOKEN_INVALID"


def test_every_truncation_is_invalid(codec):
    token = codec.encode("ws-a", "status=", STATE)
    for n in range(len(token)):
        assert _reason(codec, token[:n]) == "PAGE_TOKEN_INVALID", n


def test_every_single_bit_flip_is_invalid(codec):
    """Including flips of the bits base64 ignores in a last character: only the issued text is a token."""
    token = codec.encode("ws-a", "status=", STATE)
    for n in range(len(token)):
        for bit in range(8):
            flipped = token[:n] + chr(ord(token[n]) ^ (1 << bit)) + token[n + 1 :]
            assert _reason(codec, flipped) == "PAGE_TOKEN_INVALID", (n, bit)


@pytest.mark.parametrize(
    "forged",
    ["", ".", "a.b", "....", "e30.", "e30.AAAAAAAAAAAAAAAAAAAAAA", "\u00e9.\u00e9", "x" * 5000, "a\x00.b"],
)
def test_forged_tokens_are_invalid(codec, forged):
    assert _reason(codec, forged) == "PAGE_TOKEN_INVALID"


async def test_every_replica_shares_one_secret_through_redis():
    redis = fakeredis.FakeAsyncRedis()
    first = await PageTokenCodec.shared(redis)
    second = await PageTokenCodec.shared(redis)
    token = first.encode("ws-a", "status=", STATE)
    assert second.decode(token, "ws-a", "status=") == STATE
    await redis.flushall()
    third = await PageTokenCodec.shared(redis)
    assert _reason(third, token) == "PAGE_TOKEN_INVALID"
    await redis.aclose()
