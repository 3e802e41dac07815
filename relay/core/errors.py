"""Domain errors. Each names an AIP-193 reason; ``relay.core.rpc_errors`` maps them to gRPC statuses."""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    """A failure the caller can act on. ``reason`` is UPPER_SNAKE_CASE and stable, for ErrorInfo.

    A kind of error states its reason where it is declared (``class NotFound(RelayError,
    reason="NOT_FOUND")``); one raise may name a narrower one (``reason="JOB_NOT_FOUND"``).
    """

    reason: str = "RELAY_ERROR"

    def __init_subclass__(cls, reason: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if reason is not None:
            cls.reason = reason

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(RelayError, reason="INVALID_ARGUMENT"):
    """A request field is missing or malformed; ``field`` names it."""

    def __init__(self, field: str, problem: str, *, reason: str | None = None):
        super().__init__(f"{field} {problem}", reason=reason, metadata={"field": field})
        self.field = field


class Unauthenticated(RelayError, reason="API_KEY_INVALID"):
    """The call carries no api key, or one Relay does not know."""


class PermissionDenied(RelayError, reason="PERMISSION_DENIED"):
    """The api key is valid but lacks the scope or the workspace the call needs."""


class NotFound(RelayError, reason="NOT_FOUND"):
    """The job, backfill or other resource named does not exist."""


class AlreadyExists(RelayError, reason="ALREADY_EXISTS"):
    """The resource to be created exists already."""


class FailedPrecondition(RelayError, reason="FAILED_PRECONDITION"):
    """The migration or the job is not in the state the call needs; the message says which."""


class ResourceExhausted(RelayError, reason="RESOURCE_EXHAUSTED"):
    """This process is at one of its limits (``relay.core.limits``); retrying later may succeed."""


class Unavailable(RelayError, reason="STORE_UNAVAILABLE"):
    """The store, or a race inside it, kept the call from completing; it is safe to retry."""
