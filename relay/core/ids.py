"""Validation of every identifier that becomes part of a Redis key."""

from __future__ import annotations

import re
import uuid

from relay.core.errors import InvalidArgument

WORKSPACE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Ids from outside never carry key separators, glob characters, hash-tag braces, whitespace or controls.
EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9._~@+=-]{1,128}$")


def is_workspace_id(value: str) -> bool:
    return bool(WORKSPACE_ID_RE.fullmatch(value))


def check_workspace_id(value: str, field: str = "workspace_id") -> str:
    if not is_workspace_id(value):
        raise InvalidArgument(field, "must match ^[a-z0-9][a-z0-9_-]{0,31}$")
    return value


def is_job_id(value: str) -> bool:
    return bool(EXTERNAL_ID_RE.fullmatch(value))


def check_job_id(value: str, field: str = "job_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not is_job_id(value):
        raise InvalidArgument(field, "must be 1-128 characters of letters, digits and ._~@+=-")
    return value


def check_client_request_id(value: str, field: str) -> str:
    if value and not EXTERNAL_ID_RE.fullmatch(value):
        raise InvalidArgument(field, "must be 1-128 characters of letters, digits and ._~@+=-")
    return value


def new_job_id() -> str:
    return str(uuid.uuid4())
