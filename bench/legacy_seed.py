"""Legacy data as the old system left it, messy records included, for the load and chaos runs.

Valid records (``ai:jobs:<id>`` hashes with the old system's fields and no revision): most finished,
some pending in the legacy queue ``ai:queue:pending`` for the workers to claim, some stuck running; a few
with non-JSON params or missing optional fields (the migration must copy them verbatim). Invalid ones
the backfill must count and skip: keys that are not hashes, hashes without a workspace_id or with one
that is not a valid id.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis as sync_redis

from relay.core.keys import KEYS

BATCH = 2000


@dataclass
class SeedManifest:
    #: job id -> the hash as written (valid records only)
    valid: dict[str, dict[str, str]] = field(default_factory=dict)
    invalid_keys: list[str] = field(default_factory=list)
    queued: int = 0

    @property
    def total(self) -> int:
        return len(self.valid) + len(self.invalid_keys)

    def to_json(self) -> dict[str, object]:
        return {"valid": self.valid, "invalid_keys": self.invalid_keys, "queued": self.queued}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SeedManifest:
        return cls(dict(data["valid"]), list(data["invalid_keys"]), int(data["queued"]))  # type: ignore[arg-type]


def _record(rng: random.Random, job_id: str, workspace_id: str, moment: datetime) -> dict[str, str]:
    roll = rng.random()
    status = (
        "completed" if roll < 0.65 else "failed" if roll < 0.75 else "pending" if roll < 0.95 else "running"
    )
    record = {
        "job_id": job_id,
        "status": status,
        "action_provider": rng.choice(["openai", "anthropic", "local"]),
        "action_name": rng.choice(["chat", "embed", "summarise"]),
        "params": json.dumps({"prompt": f"legacy prompt {rng.randrange(10**6)}", "ws": workspace_id}),
        "workspace_id": workspace_id,
        "actor_id": f"user-{rng.randrange(1000)}",
        "result": json.dumps({"answer": rng.randrange(10**6)}) if status == "completed" else "",
        "enqueued_at": moment.isoformat(),
    }
    if status != "pending":
        record["started_at"] = (moment + timedelta(seconds=1)).isoformat()
    if status in ("completed", "failed"):
        record["finished_at"] = (moment + timedelta(seconds=3)).isoformat()
    mess = rng.random()
    if mess < 0.02:
        record["params"] = "not json {" + str(rng.randrange(10**6))
    elif mess < 0.04:
        del record["actor_id"]
        del record["enqueued_at"]
    return record


def seed_legacy(client: sync_redis.Redis, workspaces: list[str], count: int, seed: int = 7) -> SeedManifest:
    """Write ``count`` legacy keys (about 1.5% of them invalid) spread over ``workspaces``."""
    rng = random.Random(seed)
    manifest = SeedManifest()
    start = datetime.now(UTC) - timedelta(days=30)
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        key = KEYS.legacy_job(job_id)
        moment = start + timedelta(seconds=n)
        kind = rng.random()
        if kind < 0.005:
            pipe.set(key, "a string where a job hash should be")
            manifest.invalid_keys.append(key)
        elif kind < 0.01:
            record = _record(rng, job_id, "x", moment)
            del record["workspace_id"]
            pipe.hset(key, mapping=record)
            manifest.invalid_keys.append(key)
        elif kind < 0.015:
            pipe.hset(key, mapping=_record(rng, job_id, "Not A Workspace!", moment))
            manifest.invalid_keys.append(key)
        else:
            record = _record(rng, job_id, rng.choice(workspaces), moment)
            pipe.hset(key, mapping=record)
            manifest.valid[job_id] = record
            if record["status"] == "pending":
                pipe.rpush(KEYS.legacy_queue, job_id)
                manifest.queued += 1
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()
    return manifest
