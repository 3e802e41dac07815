"""Fast seeding of other workspaces' jobs, in both layouts, so listing can be measured beside them.

Half of the seeded keys are new-layout records ``ai:job:<ws>:<id>`` with their entries in that workspace's
index, half are legacy-only records ``ai:jobs:<id>`` (the old system's fields, no revision), spread over
``WORKSPACES`` workspaces. A Lua loop writes a batch per call, so a million keys take seconds, not minutes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis as sync_redis

from relay.core import codec
from relay.core.keys import KEYS

WORKSPACES = 200
BATCH = 5000

# A benchmark-only mass insert into a private single Redis: the record keys are built inside the script
# from prefixes made by relay.core.keys (not passed in KEYS, which the service's scripts must do for Redis
# Cluster), and the index member format is checked against codec.index_member after seeding.
SEED_OTHER_JOBS = """
-- KEYS[1]  the workspace's job index
local new_prefix = ARGV[1]      -- KEYS.new_job(workspace_id, '')
local legacy_prefix = ARGV[2]   -- KEYS.legacy_job('')
local workspace_id = ARGV[3]
local ws_number = tonumber(ARGV[4])
local first = tonumber(ARGV[5]) -- the first job number (unique across the whole seeding)
local new_count = tonumber(ARGV[6])
local legacy_count = tonumber(ARGV[7])
local enqueued_at = ARGV[8]     -- ISO-8601, shared by the batch
local micros = ARGV[9]          -- the same moment as zero-padded enqueue micros
local params = ARGV[10]
for i = 0, new_count + legacy_count - 1 do
  local n = first + i
  local job_id = string.format('%08x-0000-4000-8000-%012x', ws_number, n)
  local status = (n % 3 == 0) and 'pending' or 'completed'
  local result = (status == 'completed') and '{"ok":true}' or ''
  if i < new_count then
    redis.call('HSET', new_prefix .. job_id, 'job_id', job_id, 'status', status,
      'action_provider', 'openai', 'action_name', 'chat.completions', 'params', params,
      'workspace_id', workspace_id, 'actor_id', 'seed', 'result', result, 'error', '',
      'enqueued_at', enqueued_at, 'rev', '1')
    redis.call('ZADD', KEYS[1], 0, micros .. '|' .. job_id)
  else
    redis.call('HSET', legacy_prefix .. job_id, 'job_id', job_id, 'status', status,
      'action_provider', 'openai', 'action_name', 'chat.completions', 'params', params,
      'workspace_id', workspace_id, 'actor_id', 'seed', 'result', result, 'enqueued_at', enqueued_at)
  end
end
return new_count + legacy_count
"""


def other_workspace(number: int) -> str:
    return f"other-{number:03d}"


def seed_other_jobs(client: sync_redis.Redis, first: int, count: int) -> int:
    """Write ``count`` other-workspace job keys numbered from ``first``; returns the next free number."""
    script = client.register_script(SEED_OTHER_JOBS)
    params = json.dumps({"prompt": "seeded job of another workspace", "max_tokens": 64})
    base = datetime.now(UTC) - timedelta(days=1)
    n, end = first, first + count
    while n < end:
        size = min(BATCH, end - n)
        ws_number = (n // BATCH) % WORKSPACES
        workspace_id = other_workspace(ws_number)
        moment = base - timedelta(seconds=n // BATCH)
        enqueued_at = moment.isoformat()
        micros = codec.index_member("", enqueued_at).partition("|")[0]
        new_count = size // 2
        script(
            keys=[KEYS.job_index(workspace_id)],
            args=[
                KEYS.new_job(workspace_id, ""),
                KEYS.legacy_job(""),
                workspace_id,
                ws_number,
                n,
                new_count,
                size - new_count,
                enqueued_at,
                micros,
                params,
            ],
        )
        n += size
    _check_index_format(client, other_workspace((first // BATCH) % WORKSPACES))
    return end


def _check_index_format(client: sync_redis.Redis, workspace_id: str) -> None:
    """The seeded index members must be what the service itself would write."""
    members = client.zrange(KEYS.job_index(workspace_id), 0, 0)
    if not members:
        return
    member = members[0].decode()
    job_id = codec.job_id_of_member(member)
    enqueued_at = client.hget(KEYS.new_job(workspace_id, job_id), "enqueued_at")
    expected = codec.index_member(job_id, enqueued_at.decode() if enqueued_at else None)
    if member != expected:
        raise RuntimeError(f"seeded index member {member!r} differs from the service's {expected!r}")
