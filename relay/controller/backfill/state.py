"""A backfill's state: its options, counts and checkpoint, as one Redis hash.

An execute backfill's state lives in ``KEYS.backfill(id)``; its runner updates counts and checkpoint in
the same Lua step that copies each batch (``scripts.COPY_BATCH``), so what Redis holds is always exactly
what was done. A dry run keeps the same record in its controller's memory only: it writes nothing.
``rpcs`` converts options from protobuf and records to it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from relay.core import codec
from relay.core.errors import InvalidArgument

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
#: Invalid legacy records listed by id, at most.
INVALID_IDS_KEPT = 100


class BackfillState(StrEnum):
    """The lifecycle of a backfill, as stored in Redis (the value) and shown (``rpcs.STATE_TO_PROTO``)."""

    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    ORPHANED = "ORPHANED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


RUNNING, PAUSED, ORPHANED = BackfillState.RUNNING, BackfillState.PAUSED, BackfillState.ORPHANED
COMPLETED, FAILED, CANCELLED = BackfillState.COMPLETED, BackfillState.FAILED, BackfillState.CANCELLED
UNFINISHED = frozenset({RUNNING, PAUSED, ORPHANED})
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
#: The outcome letters of ``COPY_BATCH``, the count each one adds to, and the metric's skip reason.
COUNT_OF_OUTCOME = {
    "m": "migrated",
    "e": "skipped_exists",
    "n": "skipped_newer",
    "i": "skipped_invalid",
    "v": "skipped_vanished",
    "x": "errors",
}
SKIP_REASON_OF_OUTCOME = {"e": "exists", "n": "newer", "i": "invalid", "v": "vanished"}

BACKFILL_ID_RE = re.compile(r"^bf-[A-Za-z0-9-]{1,64}$")


def new_backfill_id() -> str:
    return f"bf-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_backfill_id(value: str, field_name: str = "backfill_id", required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidArgument(field_name, "is required")
        return value
    if not BACKFILL_ID_RE.fullmatch(value):
        raise InvalidArgument(field_name, "is not a backfill id (bf-...)")
    return value


def check_rate_limit(value: float, field_name: str = "rate_limit") -> float:
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise InvalidArgument(field_name, "must be a finite number of keys per second, 0 or more")
    return value


def check_batch_size(value: int, field_name: str = "batch_size") -> int:
    if value < 0 or value > MAX_BATCH_SIZE:
        raise InvalidArgument(field_name, f"must be between 0 (the default, {DEFAULT_BATCH_SIZE}) and 10000")
    return value


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    dry_run: bool = False
    workspace_id: str = ""
    rate_limit: float = 0.0
    batch_size: int = DEFAULT_BATCH_SIZE
    max_keys: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {f.name: getattr(self, f.name) for f in fields(self)}, separators=(",", ":"), sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> BackfillOptions:
        data = json.loads(text) if text else {}
        return cls(
            dry_run=bool(data.get("dry_run", False)),
            workspace_id=str(data.get("workspace_id", "")),
            rate_limit=float(data.get("rate_limit", 0.0)),
            batch_size=int(data.get("batch_size", DEFAULT_BATCH_SIZE)),
            max_keys=int(data.get("max_keys", 0)),
        )


@dataclass(slots=True)
class Counts:
    """Every legacy key scanned is counted once: migrated, skipped (by reason) or an error."""

    scanned: int = 0
    migrated: int = 0
    skipped_exists: int = 0
    skipped_newer: int = 0
    skipped_invalid: int = 0
    skipped_vanished: int = 0
    errors: int = 0
    filtered_out: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_exists + self.skipped_newer + self.skipped_invalid + self.skipped_vanished

    def add_outcomes(self, letters: str, filtered: int) -> None:
        self.scanned += len(letters)
        self.filtered_out += filtered
        for letter in letters:
            name = COUNT_OF_OUTCOME[letter]
            setattr(self, name, getattr(self, name) + 1)


COUNT_FIELDS = tuple(f.name for f in fields(Counts))
#: The hash fields a new pass sets (``BackfillRecord.new_pass``); run_id and rescans are set by the store.
NEW_PASS_FIELDS = (
    "cursor",
    "scan_done",
    "start_cursor",
    "skip_keys",
    "skip_until",
    "covers_scope",
    "max_keys_reached",
    "resume_cursor",
    "resume_skip",
    "resume_skip_until",
    "scan_started",
    "update_time",
    "throttle_seq",
    "throttle_reason",
    "migrated_in_earlier_passes",
    *COUNT_FIELDS,
)


@dataclass(slots=True)
class BackfillRecord:
    """The whole state of one backfill. Times are ISO-8601 UTC text, as stored."""

    backfill_id: str
    options: BackfillOptions
    state: str = RUNNING
    counts: Counts = field(default_factory=Counts)
    #: The SCAN cursor after the last recorded batch, and how many batches were recorded.
    cursor: str = "0"
    batches: int = 0
    #: The scan reached the end of the keyspace (cursor "0" again) or max_keys.
    scan_done: bool = False
    #: Where the scan began: "0", or where a previous backfill stopped at max_keys.
    start_cursor: str = "0"
    #: Keys the backfill this one continues handled in the SCAN step where it stopped, and the cursor
    #: after that step: until the scan passes it, a SCAN step may return those keys again (when keys
    #: were added since, the same cursor covers fewer buckets per step).
    skip_keys: list[str] = field(default_factory=list)
    skip_until: str = "0"
    #: This scan, with the ones it continues, covers every legacy key of its scope (it started at "0").
    covers_scope: bool = True
    continued_from: str = ""
    #: When the first scan of that chain started (ISO-8601).
    scan_started: str = ""
    create_time: str = ""
    update_time: str = ""
    end_time: str = ""
    reason: str = ""
    owner: str = ""
    #: The fencing token of the run that owns it: every batch checks it inside Redis.
    token: str = ""
    rate: float = 0.0
    total_estimate: int = 0
    #: The live rate and batch size (UpdateBackfill changes them), and the operator's pending request.
    rate_limit_now: float = 0.0
    batch_size_now: int = DEFAULT_BATCH_SIZE
    control: str = ""
    throttle_seq: int = 0
    throttle_reason: str = ""
    #: Set when max_keys stopped it: where the next execute backfill with the same filter continues.
    max_keys_reached: bool = False
    resume_cursor: str = ""
    resume_skip: list[str] = field(default_factory=list)
    resume_skip_until: str = "0"
    resumes: int = 0
    #: The Redis run (INFO server run_id) the cursor belongs to: a SCAN cursor means nothing to another
    #: run (Redis picks a new hash seed at every start), so the scan begins again when it changes.
    run_id: str = ""
    #: Times the scan began again from "0" because Redis restarted; the counts are the last pass's.
    rescans: int = 0
    #: Records migrated by the passes a rescan discarded (the last pass counts them as "exists").
    migrated_earlier: int = 0
    invalid_ids: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, backfill_id: str, options: BackfillOptions, owner: str, token: str) -> BackfillRecord:
        now = codec.now_iso()
        return cls(
            backfill_id=backfill_id,
            options=options,
            create_time=now,
            update_time=now,
            owner=owner,
            token=token,
            rate_limit_now=options.rate_limit,
            batch_size_now=options.batch_size,
            scan_started=now,
        )

    def copy(self) -> BackfillRecord:
        return replace(
            self,
            counts=replace(self.counts),
            skip_keys=list(self.skip_keys),
            resume_skip=list(self.resume_skip),
            invalid_ids=list(self.invalid_ids),
        )

    def new_pass(self, run_id: str, reason: str, now: str) -> BackfillRecord:
        """This record once its scan begins again from cursor "0" on Redis run ``run_id`` (a copy)."""
        nxt = self.copy()
        nxt.run_id, nxt.rescans = run_id, self.rescans + 1
        nxt.cursor, nxt.scan_done, nxt.start_cursor, nxt.covers_scope = "0", False, "0", True
        nxt.skip_keys, nxt.skip_until = [], "0"
        nxt.max_keys_reached, nxt.resume_cursor, nxt.resume_skip, nxt.resume_skip_until = False, "", [], "0"
        nxt.scan_started = nxt.update_time = now
        nxt.throttle_seq, nxt.throttle_reason = self.throttle_seq + 1, reason
        nxt.migrated_earlier = self.migrated_earlier + self.counts.migrated
        nxt.counts = Counts()
        nxt.invalid_ids = []
        return nxt

    def adopt(self, other: BackfillRecord) -> None:
        """Take every field of ``other``, keeping this object (watchers hold it)."""
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))

    # --- the Redis hash ----------------------------------------------------------------------
    def to_hash(self) -> dict[str, str]:
        out = {
            "backfill_id": self.backfill_id,
            "options": self.options.to_json(),
            "state": self.state,
            "cursor": self.cursor,
            "batches": str(self.batches),
            "scan_done": _flag(self.scan_done),
            "start_cursor": self.start_cursor,
            "skip_keys": json.dumps(self.skip_keys),
            "skip_until": self.skip_until,
            "covers_scope": _flag(self.covers_scope),
            "continued_from": self.continued_from,
            "scan_started": self.scan_started,
            "create_time": self.create_time,
            "update_time": self.update_time,
            "end_time": self.end_time,
            "reason": self.reason,
            "owner": self.owner,
            "token": self.token,
            "rate": repr(self.rate),
            "total_estimate": str(self.total_estimate),
            "rate_limit_now": repr(self.rate_limit_now),
            "batch_size_now": str(self.batch_size_now),
            "control": self.control,
            "throttle_seq": str(self.throttle_seq),
            "throttle_reason": self.throttle_reason,
            "max_keys_reached": _flag(self.max_keys_reached),
            "resume_cursor": self.resume_cursor,
            "resume_skip": json.dumps(self.resume_skip),
            "resume_skip_until": self.resume_skip_until,
            "resumes": str(self.resumes),
            "run_id": self.run_id,
            "rescans": str(self.rescans),
            "migrated_in_earlier_passes": str(self.migrated_earlier),
        }
        out.update({name: str(getattr(self.counts, name)) for name in COUNT_FIELDS})
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes] | dict[str, str], invalid_ids: list[Any]) -> BackfillRecord:
        h = codec.decode(raw)
        options = BackfillOptions.from_json(h.get("options", ""))
        return cls(
            backfill_id=h.get("backfill_id", ""),
            options=options,
            state=h.get("state", RUNNING),
            counts=Counts(**{name: _int(h.get(name)) for name in COUNT_FIELDS}),
            cursor=h.get("cursor", "0"),
            batches=_int(h.get("batches")),
            scan_done=h.get("scan_done") == "1",
            start_cursor=h.get("start_cursor", "0"),
            skip_keys=_json_list(h.get("skip_keys")),
            skip_until=h.get("skip_until", "0"),
            covers_scope=h.get("covers_scope") == "1",
            continued_from=h.get("continued_from", ""),
            scan_started=h.get("scan_started", ""),
            create_time=h.get("create_time", ""),
            update_time=h.get("update_time", ""),
            end_time=h.get("end_time", ""),
            reason=h.get("reason", ""),
            owner=h.get("owner", ""),
            token=h.get("token", ""),
            rate=_float(h.get("rate")),
            total_estimate=_int(h.get("total_estimate")),
            rate_limit_now=_float(h.get("rate_limit_now"), options.rate_limit),
            batch_size_now=_int(h.get("batch_size_now")) or options.batch_size,
            control=h.get("control", ""),
            throttle_seq=_int(h.get("throttle_seq")),
            throttle_reason=h.get("throttle_reason", ""),
            max_keys_reached=h.get("max_keys_reached") == "1",
            resume_cursor=h.get("resume_cursor", ""),
            resume_skip=_json_list(h.get("resume_skip")),
            resume_skip_until=h.get("resume_skip_until", "0"),
            resumes=_int(h.get("resumes")),
            run_id=h.get("run_id", ""),
            rescans=_int(h.get("rescans")),
            migrated_earlier=_int(h.get("migrated_in_earlier_passes")),
            invalid_ids=[
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in invalid_ids
            ],
        )

    # --- progress ----------------------------------------------------------------------------
    @property
    def target(self) -> int:
        """The number of keys the percentage is measured against."""
        estimate = max(self.total_estimate, self.counts.scanned)
        if self.options.max_keys:
            return min(estimate, self.options.max_keys) if estimate else self.options.max_keys
        return estimate

    def percent_done(self) -> float:
        if self.scan_done or self.state == COMPLETED:
            return 100.0
        target = self.target
        return min(99.9, 100.0 * self.counts.scanned / target) if target else 0.0

    def eta_seconds(self) -> float | None:
        if self.state != RUNNING or self.rate <= 0 or self.scan_done:
            return None
        return max(0.0, (self.target - self.counts.scanned) / self.rate)


def scan_position(cursor: str, end: bool = False) -> float:
    """Where ``cursor`` stands in a scan, 0 to 1; "0" is the start, or with ``end`` the end."""
    if end and cursor in ("", "0"):
        return 1.0
    return scan_fraction(cursor)


def scan_fraction(cursor: str) -> float:
    """How much of the keyspace a SCAN has covered at ``cursor``, 0 to 1.

    Redis increments the cursor in reversed bit order, so its bits read backwards grow steadily from 0
    to the table size whatever that size is (and across a resize): reversed over 64 bits, they are the
    fraction of hash buckets visited.
    """
    value = int(cursor or "0")
    return int(f"{value:064b}"[::-1], 2) / 2**64


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _float(text: str | None, default: float = 0.0) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []
