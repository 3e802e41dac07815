"""The limits that keep load bounded (DESIGN.md, invariant 10): concurrent RPCs, Redis connections, message
sizes and page bytes, each derived from the contract it must admit, read once from the environment.

How the limits fit together, for one process:

- gRPC runs at most ``max_concurrent_rpcs`` calls at once; one more is refused at once with
  RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded"), before its request is read or parsed.
- The calls that run share one pool of ``redis_pool_size`` connections per store. A call waits for a free
  connection (a blocking pool) at most ``redis_pool_timeout_seconds`` (2 s: below the deadlines callers
  should set, 5 s and more, so the caller hears why), and then fails RESOURCE_EXHAUSTED (STORE_BUSY),
  never UNAVAILABLE: the store is up, this process is only busy. A Redis call takes well under a
  millisecond, so 64 connections serve thousands of calls a second and a burst of 500 waits briefly.
  On a single Redis the job service's own commands share one pipelined connection instead
  (``relay.core.pipelined_connection``), with the same bounds: at most ``redis_pool_size`` commands in
  flight, a wait of at most ``redis_pool_timeout_seconds`` for a place, then STORE_BUSY.
- Stage refresh and lease renewal have their own small pool (``CONTROL_POOL_SIZE``): a flood of callers
  never delays a stage change or makes a controller lose its lease.
- A request larger than ``max_receive_bytes`` is refused by gRPC (RESOURCE_EXHAUSTED) without being
  parsed; every valid request fits (see :func:`max_valid_request_bytes`: about 34.5 MiB, since JSON of
  small numbers grows 5.5 times in protobuf). Params and results too large as JSON are refused before
  they are converted (their wire size already says so), and freed memory is given back to the system
  (:func:`trim_freed_memory`), so that floods of refused large requests leave RSS flat.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from relay.core.env_fields import env_field, read_env

#: The contract's bounds (protos/relay/v1/job_service.proto, mirrored by Settings).
MAX_PARAMS_JSON_BYTES = 64 * 1024
MAX_RESULT_JSON_BYTES = 1024 * 1024
MAX_ACTIONS_PER_CALL = 100
MAX_NAME_CHARS = 128
MAX_ACTOR_CHARS = 256
MAX_ERROR_CHARS = 4096
MAX_CLIENT_REQUEST_ID_CHARS = 128
MAX_ID_CHARS = 128

#: A Struct's protobuf encoding is larger than its JSON text by at most this factor: the worst case is a
#: list of one-digit numbers, 2 bytes of JSON each (``0,``) and 11 bytes of protobuf (a ListValue entry:
#: tag, length, and a Value of tag and an 8-byte double). Strings, names, nulls and booleans cost less.
WIRE_PER_JSON_BYTE = 5.5
#: Tags, length prefixes and nesting of one message beyond its fields' own bytes, generously.
ENVELOPE_BYTES = 4096

#: ListJobs stops a page before its encoded jobs pass this many bytes (and returns a next_page_token):
#: half of gRPC's default 4 MiB receive limit, so any default client accepts every page.
PAGE_BYTE_BUDGET = 2 * 1024 * 1024

#: Connections of the separate pool for stage refresh and lease renewal, per store.
CONTROL_POOL_SIZE = 4


def _utf8_max(chars: int) -> int:
    return 4 * chars


def max_execute_request_bytes(
    params_bytes: int = MAX_PARAMS_JSON_BYTES, actions: int = MAX_ACTIONS_PER_CALL
) -> int:
    """The largest valid ExecuteRequest on the wire: ``actions`` actions whose params are at the limit
    in the costliest encoding, with every name, id and the actor at their own limits."""
    per_action = (
        int(params_bytes * WIRE_PER_JSON_BYTE)
        + 2 * _utf8_max(MAX_NAME_CHARS)
        + _utf8_max(MAX_CLIENT_REQUEST_ID_CHARS)
        + 64  # tags and length prefixes of the action and its fields
    )
    return actions * per_action + _utf8_max(MAX_ACTOR_CHARS) + MAX_ID_CHARS + ENVELOPE_BYTES


def max_update_request_bytes(result_bytes: int = MAX_RESULT_JSON_BYTES) -> int:
    """The largest valid UpdateJobStatusRequest on the wire."""
    wire_result = int(result_bytes * WIRE_PER_JSON_BYTE)
    return wire_result + _utf8_max(MAX_ERROR_CHARS) + 2 * MAX_ID_CHARS + ENVELOPE_BYTES


def max_valid_request_bytes(
    params_bytes: int = MAX_PARAMS_JSON_BYTES,
    result_bytes: int = MAX_RESULT_JSON_BYTES,
    actions: int = MAX_ACTIONS_PER_CALL,
) -> int:
    """The largest request of any RPC that the contract accepts (the controller's requests are small)."""
    return max(max_execute_request_bytes(params_bytes, actions), max_update_request_bytes(result_bytes))


@dataclass(frozen=True, slots=True)
class Limits:
    #: Calls the server runs at once; beyond, RESOURCE_EXHAUSTED at once.
    max_concurrent_rpcs: int = env_field("RELAY_MAX_CONCURRENT_RPCS", 1024)
    #: Connections per store and process.
    redis_pool_size: int = env_field("RELAY_REDIS_POOL_SIZE", 64)
    #: Seconds a call waits for a connection before RESOURCE_EXHAUSTED.
    redis_pool_timeout_seconds: float = env_field("RELAY_REDIS_POOL_TIMEOUT_SECONDS", 2.0)
    #: Requests larger are refused unread (default: the largest valid one).
    max_receive_bytes: int = env_field("RELAY_MAX_RECEIVE_BYTES", 0)

    @property
    def receive_bytes(self) -> int:
        # Just above the largest valid request, rounded up to a KiB.
        return self.max_receive_bytes or (max_valid_request_bytes() // 1024 + 1) * 1024

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Limits:
        return cls(**read_env(cls, os.environ if env is None else env))


#: How often a server gives the memory freed by large requests back to the system.
TRIM_EVERY_SECONDS = 2.0


def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


async def trim_freed_memory(every: float = TRIM_EVERY_SECONDS) -> None:
    """Give freed heap memory back to the system every ``every`` seconds (glibc's malloc_trim), for good.

    glibc keeps the memory of freed buffers of a few megabytes in its heap: a flood of refused 5 MB
    requests left a server at 1.2 GB of RSS for good (with the limits here, about 270 MB). Trimming
    returns it within seconds; it costs a walk of the heap (about a millisecond at a few hundred MB).
    Nothing happens where there is no glibc.
    """
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(every)
        trim(0)
