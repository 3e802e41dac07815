"""Domain errors. Each names an AIP-193 reason; ``relay.core.rpc_errors`` maps them to gRPC statuses."""

from __future__ import annotations


class RelayError(Exception):
    """A failure the caller can act on. ``reason`` is UPPER_SNAKE_CASE and stable, for ErrorInfo."""

    reason: str = "RELAY_ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(RelayError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str, *, reason: str | None = None):
        super().__init__(f"{field} {problem}", reason=reason, metadata={"field": field})
        self.field = field


class Unauthenticated(RelayError):
    reason = "API_KEY_INVALID"


class PermissionDenied(RelayError):
    reason = "PERMISSION_DENIED"


class NotFound(RelayError):
    reason = "NOT_FOUND"


class AlreadyExists(RelayError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(RelayError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(RelayError):
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(RelayError):
    reason = "STORE_UNAVAILABLE"
