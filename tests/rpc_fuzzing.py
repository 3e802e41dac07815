"""Tools for fuzzing the RPCs: hostile values, arbitrary messages, raw calls and a digest of Redis.

Used by tests/test_fuzz_rpcs.py. Every RPC is reached through its full method path with bytes in and
bytes out, so that malformed bytes can be sent as easily as well-formed messages.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message, message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import strategies as st
from redis.asyncio import Redis

from relay.v1 import job_service_pb2, migration_controller_pb2

CALL_TIMEOUT = 5.0
#: Statuses that say precisely what the caller did wrong (DESIGN.md invariant 7).
PRECISE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


# --- the RPCs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: type[message.Message]
    streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    def __repr__(self) -> str:
        return self.name


def _rpcs(service: descriptor.ServiceDescriptor) -> list[Rpc]:
    return [
        Rpc(service.full_name, m.name, message_factory.GetMessageClass(m.input_type), m.server_streaming)
        for m in service.methods
    ]


JOB_RPCS = _rpcs(job_service_pb2.DESCRIPTOR.services_by_name["JobService"])
CONTROLLER_RPCS = _rpcs(migration_controller_pb2.DESCRIPTOR.services_by_name["MigrationController"])
ALL_RPCS = JOB_RPCS + CONTROLLER_RPCS
RPC = {rpc.name: rpc for rpc in ALL_RPCS}

#: The scope each RPC requires (the contract's comments).
REQUIRED_SCOPE = {
    "Execute": "actions:execute",
    "GetJob": "actions:preview",
    "ListJobs": "actions:preview",
    "ClaimJob": "jobs:work",
    "UpdateJobStatus": "jobs:work",
} | {rpc.name: "migration:admin" for rpc in CONTROLLER_RPCS}

READ_ONLY_RPCS = ("GetJob", "ListJobs", "GetBackfill", "WatchBackfill", "GetStage", "GetVerification")


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    replies: list[bytes]
    error: grpc.aio.AioRpcError | None = None


async def call_raw(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    body: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    max_replies: int = 3,
) -> Outcome:
    """Send ``body`` as the request of ``rpc``; a stream is read for at most ``max_replies`` replies."""
    replies: list[bytes] = []
    try:
        if rpc.streaming:
            call = channel.unary_stream(rpc.path)(body, metadata=tuple(metadata), timeout=CALL_TIMEOUT)
            async for reply in call:
                replies.append(reply)
                if len(replies) >= max_replies:
                    call.cancel()
                    return Outcome(grpc.StatusCode.OK, "", replies)
        else:
            reply = await channel.unary_unary(rpc.path)(body, metadata=tuple(metadata), timeout=CALL_TIMEOUT)
            replies.append(reply)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error.details() or "", replies, error)
    return Outcome(grpc.StatusCode.OK, "", replies)


_RPC_BY_REQUEST = {rpc.request.DESCRIPTOR.full_name: rpc for rpc in ALL_RPCS}


async def call(
    channel: grpc.aio.Channel, request: message.Message, metadata: Sequence[tuple[str, str]] = ()
) -> Outcome:
    """Call the RPC whose request type ``request`` is (each request type belongs to one RPC)."""
    rpc = _RPC_BY_REQUEST[request.DESCRIPTOR.full_name]
    return await call_raw(channel, rpc, request.SerializeToString(), metadata)


# --- Redis, before and after ---------------------------------------------------------------------
async def keyspace_digest(redis: Redis) -> str:
    """A digest of every key, its type, whether it expires, and its whole content."""
    keys = sorted([key async for key in redis.scan_iter(count=1000)])
    if not keys:
        return hashlib.sha256(b"empty").hexdigest()
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    meta = await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    types = [t.decode() if isinstance(t, bytes) else t for t in meta[::2]]
    for key, kind in zip(keys, types, strict=True):
        if kind == "string":
            pipe.get(key)
        elif kind == "hash":
            pipe.hgetall(key)
        elif kind == "list":
            pipe.lrange(key, 0, -1)
        elif kind == "set":
            pipe.smembers(key)
        elif kind == "zset":
            pipe.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            pipe.xrange(key)
        else:
            pipe.exists(key)
    contents = await pipe.execute()
    h = hashlib.sha256()
    for key, kind, ttl, content in zip(keys, types, meta[1::2], contents, strict=True):
        if isinstance(content, dict):
            content = sorted(content.items())
        elif isinstance(content, set):
            content = sorted(content)
        h.update(repr((key, kind, ttl > 0, content)).encode())
    return h.hexdigest()


# --- hostile values -------------------------------------------------------------------------------
SAFE_ID_CHARS = string.ascii_letters + string.digits + "._-"
#: Characters no id that becomes part of a Redis key may hold: separators, globs, hash-tag braces,
#: whitespace and controls.
KEY_BREAKERS = [":", "*", "?", "[", "]", "{", "}", "\x00", " ", "\t", "\n", "\r", "\x1b", "\\", "/", '"']
PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))

safe_ids = st.text(alphabet=SAFE_ID_CHARS, min_size=1, max_size=24)

hostile_ids: st.SearchStrategy[str] = st.one_of(
    # a key breaker somewhere in an otherwise harmless id
    st.builds(
        lambda a, c, b: a + c + b,
        st.text(alphabet=SAFE_ID_CHARS, max_size=12),
        st.sampled_from(KEY_BREAKERS),
        st.text(alphabet=SAFE_ID_CHARS, max_size=12),
    ),
    # non-ASCII text
    st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), min_size=1, max_size=12),
    # far too long
    st.integers(129, 200_000).map(lambda n: "a" * n),
    # ids that try to reach other keys
    st.sampled_from(
        [
            "*",
            "ai:jobs:*",
            "ws-b:x",
            "{ws-b}",
            "{ws-b}:x",
            "../ws-b",
            "x\x00y",
            "ai:relay:stage",
            "ws-b*",
            "[a-z]*",
            "?",
            "\u202e",
            "\U0001f600",
        ]
    ),
)


def is_workspace_id(value: str) -> bool:
    """The contract's rule, written independently of the implementation."""
    ok_first = value[:1].isascii() and (value[:1].islower() or value[:1].isdigit())
    rest = all(c in string.ascii_lowercase + string.digits + "_-" for c in value[1:])
    return 1 <= len(value) <= 32 and ok_first and rest


hostile_workspaces = st.one_of(
    hostile_ids,
    st.sampled_from(["WS-A", "-ws", "_ws", "a" * 33, "ws.a", "ws a", "ws-a\n", "ws-\u0430"]),
).filter(lambda w: w != "" and not is_workspace_id(w))

#: Text with control characters or beyond every limit of a name.
control_text = st.builds(
    lambda a, c, b: a + c + b,
    st.text(alphabet=string.ascii_letters, max_size=8),
    st.sampled_from(["\x00", "\x01", "\x07", "\x1b", "\x1f", "\r", "\x0b", "\x0c"]),
    st.text(alphabet=string.ascii_letters, max_size=8),
)


def unknown_enum_values(enum: Any) -> st.SearchStrategy[int]:
    """Numbers an open proto3 enum carries on the wire but does not define."""
    highest = max(v.number for v in enum.DESCRIPTOR.values)
    return st.one_of(st.integers(highest + 1, 2**31 - 1), st.integers(-(2**31), -1))


bad_counts = st.integers(-(2**31), -1)
bad_rates = st.one_of(st.floats(max_value=-1e-9, allow_nan=False), st.just(math.nan), st.just(-math.inf))


def bad_credentials(valid_key: str) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Metadata that must not authenticate anybody."""

    def md(value: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", value),)

    return st.one_of(
        st.just(()),
        st.just((("x-api-key", valid_key),)),
        st.text(alphabet=PRINTABLE_ASCII, min_size=1, max_size=80)
        .filter(lambda t: t.strip() != valid_key)
        .map(lambda t: md("Bearer " + t)),
        st.sampled_from(
            [
                md("Bearer"),
                md(valid_key),
                md("Basic " + valid_key),
                md("Token " + valid_key),
                md("Bearer " + valid_key[:-1]),
                md("Bearer " + valid_key + "x"),
                md("Bearer " + valid_key.upper()),
                md("Bearer sha256:" + hashlib.sha256(valid_key.encode()).hexdigest()),
                md("Bearer " + hashlib.sha256(valid_key.encode()).hexdigest()),
            ]
        ),
    )


# --- arbitrary messages ---------------------------------------------------------------------------
_SKIPPED_MESSAGES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}

_any_text = st.one_of(
    st.text(max_size=40),
    hostile_ids,
    safe_ids,
    st.sampled_from(["", "ws-a", "ws-b"]),
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _any_text
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if t == FieldDescriptor.TYPE_DOUBLE else 32)
    if t == FieldDescriptor.TYPE_ENUM:
        highest = max(v.number for v in field.enum_type.values)
        unknown = st.one_of(st.integers(highest + 1, 2**31 - 1), st.integers(-(2**31), -1))
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), unknown)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.integers(-(2**63), 2**63 - 1)


def arbitrary_message(cls: type[message.Message], depth: int = 0) -> st.SearchStrategy[message.Message]:
    """Any message of ``cls``: every field may be set to any value of its type, hostile ones included."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name in _SKIPPED_MESSAGES or depth >= 2:
                continue
            inner = arbitrary_message(message_factory.GetMessageClass(field.message_type), depth + 1)
            value = st.lists(inner, max_size=3) if _repeated(field) else inner
        else:
            value = st.lists(_scalar(field), max_size=4) if _repeated(field) else _scalar(field)
        fields[field.name] = value

    def build(values: dict[str, Any]) -> message.Message:
        msg = cls()
        for name, value in values.items():
            field = cls.DESCRIPTOR.fields_by_name[name]
            if _repeated(field):
                getattr(msg, name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


# --- malformed bytes ------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    return varint((field_number << 3) | 2) + varint(len(payload)) + payload


def deeply_nested_params(depth: int) -> bytes:
    """The bytes of an ExecuteRequest whose one action's params nest ``depth`` Structs deep.

    A protobuf client library refuses to build such a message, a hostile client just sends the bytes.
    """
    struct = b""
    for _ in range(depth):
        value = length_delimited(5, struct)  # Value.struct_value
        struct = length_delimited(1, length_delimited(1, b"a") + length_delimited(2, value))
    action = length_delimited(1, b"openai") + length_delimited(2, b"chat") + length_delimited(3, struct)
    return length_delimited(1, action)


#: Bytes that are no valid message of any request type.
undecodable_bodies = st.one_of(
    st.sampled_from(
        [
            b"\xff\xff\xff\xff",  # a tag beyond every field number with a bad wire type
            b"\x0a\x05ab",  # a length running past the end
            b"\x00",  # field number 0
            b"\x0f",  # wire type 7 does not exist
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint over ten bytes
        ]
    ),
    st.binary(min_size=1, max_size=30).map(lambda b: b"\x0a" + varint(len(b) + 5) + b),  # truncated
)
