"""Identifiers that become part of Redis keys: only what cannot break a key pattern or reach another key."""

from __future__ import annotations

import uuid

import pytest

from relay.core.errors import InvalidArgument
from relay.core.ids import (
    check_client_request_id,
    check_job_id,
    check_workspace_id,
    is_job_id,
    is_workspace_id,
    new_job_id,
)

KEY_BREAKERS = [":", "*", "?", "[", "]", "{", "}", " ", "\n", "\t", "\x00", "/", "\\", "\u00e9", "\U0001f600"]


@pytest.mark.parametrize("good", ["a", "0", "ws-a", "ws_a-1", "a" * 32, "9lives"])
def test_valid_workspace_ids(good):
    assert is_workspace_id(good) and check_workspace_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "A", "Ws-a", "-ws", "_ws", "a" * 33, "ws.a", "ws a", "ws-a\n", *("ws" + c for c in KEY_BREAKERS)],
)
def test_invalid_workspace_ids(bad):
    assert not is_workspace_id(bad)
    with pytest.raises(InvalidArgument) as refused:
        check_workspace_id(bad)
    assert refused.value.field == "workspace_id"


@pytest.mark.parametrize("good", [str(uuid.uuid4()), "old-ws-a-17", "a", "j" * 128, "A.b_c~d@e+f=g-h"])
def test_valid_job_ids(good):
    assert is_job_id(good) and check_job_id(good) == good


@pytest.mark.parametrize("bad", ["j" * 129, "job\n", *("job" + c for c in KEY_BREAKERS), *KEY_BREAKERS])
def test_job_ids_that_could_break_or_reach_another_key_are_refused(bad):
    assert not is_job_id(bad)
    with pytest.raises(InvalidArgument) as refused:
        check_job_id(bad)
    assert refused.value.field == "job_id"


def test_an_empty_job_id_is_missing():
    with pytest.raises(InvalidArgument) as refused:
        check_job_id("")
    assert refused.value.message == "job_id is required"


def test_a_client_request_id_is_optional_but_never_a_key_breaker():
    assert check_client_request_id("", "actions[0].client_request_id") == ""
    assert check_client_request_id("retry-1", "f") == "retry-1"
    for c in KEY_BREAKERS:
        with pytest.raises(InvalidArgument) as refused:
            check_client_request_id("id" + c, "actions[2].client_request_id")
        assert refused.value.field == "actions[2].client_request_id"


def test_new_job_ids_are_unique_uuids_that_pass_validation():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_job_id(i) and uuid.UUID(i).version == 4 for i in ids)
