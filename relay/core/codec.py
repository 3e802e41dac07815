"""The job record as stored in a Redis hash, in either layout, and its protobuf form.

Both layouts hold the same fields. The old system wrote ``job_id``, ``status``, ``action_provider``,
``action_name``, ``params`` (JSON text), ``workspace_id``, ``actor_id``, ``result`` ("" or JSON text),
``enqueued_at`` and, once set, ``started_at`` and ``finished_at`` (ISO-8601, UTC). Relay adds ``error``
and ``rev`` (a revision that grows with every change). Old records may lack any field or hold text that
is not JSON: decoding never fails, it serves what it can and the raw text beside it.

Relay also keeps, beside the params and result texts, their encoded protobuf forms (``params_pb``,
``result_pb``: the CRC-32 of the text they encode, then the base64 of the ``Struct``/``Value`` bytes), so
that serving a record needs no JSON parse and no Struct built in Python (measured: 176 µs to 15 µs per
record). An encoded form counts only while its CRC matches the text: a record the old system rewrote
after Relay encoded it is served from its text, which always wins.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from relay.v1 import job_service_pb2 as pb

Record = dict[str, str]

STATUSES = ("pending", "running", "completed", "failed")
STATUS_TO_PROTO = {
    "pending": pb.JOB_STATUS_PENDING,
    "running": pb.JOB_STATUS_RUNNING,
    "completed": pb.JOB_STATUS_COMPLETED,
    "failed": pb.JOB_STATUS_FAILED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}

# Fields compared by shadow reads and verification; ``rev`` is bookkeeping, not data.
DATA_FIELDS = (
    "job_id",
    "status",
    "action_provider",
    "action_name",
    "params",
    "workspace_id",
    "actor_id",
    "result",
    "error",
    "enqueued_at",
    "started_at",
    "finished_at",
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def index_member(job_id: str, enqueued_at: str | None) -> str:
    """The job's member in its workspace index: fixed-width enqueue micros, so that lex order is time order.

    Records without a readable ``enqueued_at`` sort as the oldest.
    """
    moment = parse_time(enqueued_at)
    micros = int(moment.timestamp() * 1_000_000) if moment else 0
    return f"{max(micros, 0):016d}|{job_id}"


def job_id_of_member(member: str) -> str:
    return member.partition("|")[2]


def new_record(
    *,
    job_id: str,
    workspace_id: str,
    provider: str,
    action: str,
    params_json: str,
    actor_id: str,
    enqueued_at: str,
    params_pb: str = "",
) -> Record:
    record = {
        "job_id": job_id,
        "status": "pending",
        "action_provider": provider,
        "action_name": action,
        "params": params_json,
        "workspace_id": workspace_id,
        "actor_id": actor_id,
        "result": "",
        "error": "",
        "enqueued_at": enqueued_at,
        "rev": "1",
    }
    if params_pb:
        record["params_pb"] = params_pb
    return record


def encoded(text: str, message: struct_pb2.Struct | struct_pb2.Value) -> str:
    """The encoded form kept beside ``text`` (the JSON of ``message``), bound to it by its CRC-32."""
    crc = zlib.crc32(text.encode())
    return f"{crc:08x}:{base64.b64encode(message.SerializeToString()).decode('ascii')}"


def _encoded_bytes(text: str, form: str) -> bytes | None:
    """The bytes of an encoded form that still encodes ``text``; None when absent, stale or damaged."""
    if len(form) < 9 or form[8] != ":":
        return None
    try:
        if int(form[:8], 16) != zlib.crc32(text.encode()):
            return None
        return binascii.a2b_base64(form[9:], strict_mode=True)  # what b64decode(validate=True) checks
    except ValueError:  # binascii.Error among them
        return None


def decode(raw: dict[bytes, bytes] | dict[str, str]) -> Record:
    return {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        )
        for k, v in raw.items()
    }


def decode_flat(flat: list[bytes]) -> Record:
    """A hash as Redis returns it from a script (field, value, field, value, ...) as a record."""
    pairs = iter(flat)
    return {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in zip(pairs, pairs, strict=True)
    }


def revision(record: Record) -> int:
    try:
        return int(record.get("rev", "0") or 0)
    except ValueError:
        return 0


#: JSON nesting carried as Struct/Value at most. Each level costs protobuf two message levels and parsers
#: stop at 100, so deeper params are refused on the way in and served as text on the way out.
MAX_JSON_DEPTH = 32


class NotStorableJson(ValueError):
    """A Struct or Value that cannot be stored as JSON text; the message says why."""


def struct_json(value: struct_pb2.Struct) -> str:
    """The JSON text stored for params."""
    return _storable_json(value)


def value_json(value: struct_pb2.Value) -> str:
    """The JSON text stored for a result."""
    return _storable_json(value)


def _storable_json(value: struct_pb2.Struct | struct_pb2.Value) -> str:
    if isinstance(value, struct_pb2.Struct):
        data: Any = _struct_data(value, 1)
    else:
        data = _value_data(value, 0)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


# The Struct's data as JSON values, walked directly: protobuf's json_format does the same walk through its
# generic field machinery at four times the cost (16 µs for the benchmark's params), and Execute pays it
# for every action. Same result: an unset Value is null, whole numbers up to 2**53 become integers, NaN
# and infinities are refused, and nesting beyond MAX_JSON_DEPTH is refused.
def _struct_data(struct: struct_pb2.Struct, depth: int) -> dict[str, Any]:
    if depth > MAX_JSON_DEPTH:
        raise NotStorableJson(f"must nest at most {MAX_JSON_DEPTH} levels deep")
    return {key: _value_data(item, depth) for key, item in struct.fields.items()}


def _value_data(value: struct_pb2.Value, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number != number or number in (math.inf, -math.inf):
            raise NotStorableJson("must not hold NaN or Infinity")
        return int(number) if number.is_integer() and abs(number) <= _EXACT_INTEGERS else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct_data(value.struct_value, depth + 1)
    if kind == "list_value":
        if depth + 1 > MAX_JSON_DEPTH:
            raise NotStorableJson(f"must nest at most {MAX_JSON_DEPTH} levels deep")
        return [_value_data(item, depth + 1) for item in value.list_value.values]
    return None  # null_value, or no kind set


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a decoded JSON value (0 for a scalar); without recursion."""
    depth, level = 0, [value]
    while True:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            return depth
        depth += 1
        level = [item for c in containers for item in (c.values() if isinstance(c, dict) else c)]


#: Doubles up to this magnitude hold every integer exactly.
_EXACT_INTEGERS = 2**53


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


#: A Struct or Value whose protobuf encoding would pass this is served as its JSON text instead: a page
#: of jobs must fit a default client's 4 MiB receive limit, and JSON of small numbers grows up to 5.5
#: times in protobuf (a 1 MiB result of ``[0,0,...]`` would be 5.5 MiB). The text is never larger.
MAX_STRUCT_WIRE_BYTES = 1024 * 1024 + 64 * 1024


def _struct_of(text: str, target: struct_pb2.Struct | struct_pb2.Value, is_params: bool) -> bool:
    """Fill ``target`` from JSON ``text``; False when protobuf cannot carry it (the caller serves text)."""
    ok, value = _loads(text)
    if not ok or json_depth(value) > MAX_JSON_DEPTH or (is_params and not isinstance(value, dict)):
        return False
    try:
        if is_params:
            target.update(value)  # type: ignore[union-attr]
        else:
            json_format.ParseDict(value, target)
    except (json_format.ParseError, ValueError, TypeError, OverflowError, RecursionError):
        # OverflowError: an integer of hundreds of digits is no double.
        return False
    return target.ByteSize() <= MAX_STRUCT_WIRE_BYTES


#: The JSON payloads of a record: (field, its encoded form's field, the Job's text field, is params).
_PAYLOADS = (("params", "params_pb", "params_text", True), ("result", "result_pb", "result_text", False))


def to_proto(record: Record, lossy: Callable[[str], None] | None = None, into: Any = None) -> pb.Job:
    """The record as a Job. Never raises on stored data (DESIGN.md, invariant 9): params or a result that
    protobuf cannot carry are served as ``params_text``/``result_text``, a time out of Timestamp's range is
    left unset; ``lossy`` is told the field of each such case (to count it).

    With ``into`` (a repeated Job field, such as a page's), the Job is made as its next element: a Job
    made apart and added later would be copied whole."""

    def note(field: str) -> None:
        if lossy is not None:
            lossy(field)

    get = record.get
    fields = {
        "job_id": get("job_id", ""),
        "workspace_id": get("workspace_id", ""),
        "status": STATUS_TO_PROTO.get(get("status", ""), pb.JOB_STATUS_UNSPECIFIED),
        "action_provider": get("action_provider", ""),
        "action_name": get("action_name", ""),
        "error": get("error", ""),
        "actor_id": get("actor_id", ""),
        "revision": revision(record),
    }
    job = pb.Job(**fields) if into is None else into.add(**fields)
    for field, form_field, text_field, is_params in _PAYLOADS:
        text = get(field, "")
        if not text:
            continue
        target = getattr(job, field)
        if _from_encoded(target, text, get(form_field, "")) or _struct_of(text, target, is_params):
            continue
        job.ClearField(field)
        setattr(job, text_field, text)
        note(field)
    for field, time_field in _TIMES:
        text = get(field)
        if not text:
            continue
        micros = _epoch_micros(parse_time(text))
        if micros is None:
            # Unreadable, or out of Timestamp's range (such as 9999-12-31T23:59:59-05:00, after the end
            # of year 9999 in UTC): left unset, and counted.
            note(field)
            continue
        # Set directly: FromDatetime costs three times as much per field, FromMicroseconds twice.
        target = getattr(job, time_field)
        target.seconds, micros_left = divmod(micros, 1_000_000)
        target.nanos = micros_left * 1000
    return job


#: The record's times and the Job's Timestamp fields they become.
_TIMES = (("enqueued_at", "enqueue_time"), ("started_at", "start_time"), ("finished_at", "finish_time"))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: What a protobuf Timestamp can carry: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z.
_MIN_MICROS, _MAX_MICROS = -62_135_596_800_000_000, 253_402_300_799_999_999


def _epoch_micros(moment: datetime | None) -> int | None:
    """Microseconds since the epoch, exactly; None when absent or beyond what a Timestamp carries."""
    if moment is None:
        return None
    micros = (moment - _EPOCH) // _MICROSECOND
    return micros if _MIN_MICROS <= micros <= _MAX_MICROS else None


def _from_encoded(target: struct_pb2.Struct | struct_pb2.Value, text: str, form: str) -> bool:
    """Fill ``target`` from the encoded form of ``text``, if it has a valid one."""
    if not form:
        return False
    data = _encoded_bytes(text, form)
    if data is None:
        return False
    try:
        target.ParseFromString(data)
    except Exception:  # protobuf's DecodeError: damaged bytes are served from the text instead
        target.Clear()
        return False
    return True


def differing_fields(a: Record, b: Record) -> list[str]:
    return [f for f in DATA_FIELDS if a.get(f, "") != b.get(f, "")]
