"""The Lua scripts that make each RPC's Redis mutations one atomic step.

Every key a script touches arrives in KEYS (so a Redis Cluster layout can route them); every ARGV is
named at the top of its script. Scripts never trust a legacy key to be a hash: messy data is reported,
never an error inside Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

# Shared helpers, prepended to scripts that read job records.
_RECORD_HELPERS = """
local function is_hash(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end
-- A legacy record counts for a workspace only when its own workspace_id says so.
local function legacy_in_workspace(key, workspace_id)
  return is_hash(key) and redis.call('HGET', key, 'workspace_id') == workspace_id
end
local function rev_of(key)
  return tonumber(redis.call('HGET', key, 'rev') or '0') or 0
end
"""

ENQUEUE = """
-- Enqueue a batch of jobs for one workspace, with the idempotency check inside the same step.
-- KEYS[1]            the workspace's job index (sorted set, lexicographic)
-- KEYS[2]            the legacy pending queue (job ids)
-- KEYS[3]            the new pending queue (<workspace_id>:<job_id>)
-- KEYS[4 + 3(i-1)]   action i's idempotency key (untouched when it has no client_request_id)
-- KEYS[5 + 3(i-1)]   action i's legacy job key
-- KEYS[6 + 3(i-1)]   action i's new job key
local write_legacy = ARGV[1] == '1'   -- the stage writes the legacy layout
local write_new = ARGV[2] == '1'      -- the stage writes the new layout
local idempotency_ttl = ARGV[3]       -- seconds an idempotency key lives
local workspace_id = ARGV[4]
-- then for action i, at ARGV[5 + 4(i-1)] onwards:
--   job_id, has_client_request_id ('1'/'0'), index_member, record (JSON array field, value, ...)
local ids = {}
local n = (#KEYS - 3) / 3
for i = 1, n do
  local k = 4 + 3 * (i - 1)
  local a = 5 + 4 * (i - 1)
  local job_id, has_crid, member = ARGV[a], ARGV[a + 1] == '1', ARGV[a + 2]
  local original = has_crid and redis.call('GET', KEYS[k])
  if original then
    ids[i] = original
  else
    local record = cjson.decode(ARGV[a + 3])
    if has_crid then
      redis.call('SET', KEYS[k], job_id, 'EX', idempotency_ttl)
    end
    if write_legacy then
      redis.call('HSET', KEYS[k + 1], unpack(record))
    end
    if write_new then
      redis.call('HSET', KEYS[k + 2], unpack(record))
      redis.call('RPUSH', KEYS[3], workspace_id .. ':' .. job_id)
    else
      redis.call('RPUSH', KEYS[2], job_id)
    end
    redis.call('ZADD', KEYS[1], 0, member)
    ids[i] = job_id
  end
end
local depth = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
table.insert(ids, 1, depth)
return ids
"""

UPDATE_STATUS = (
    """
-- Set a job's status on every copy that exists; never create a copy.
-- KEYS[1]  the legacy job key
-- KEYS[2]  the new job key
local workspace_id = ARGV[1]
local status = ARGV[2]           -- running | completed | failed
local now = ARGV[3]              -- ISO-8601 UTC
local result_set = ARGV[4] == '1'
local result = ARGV[5]           -- JSON text
local error_set = ARGV[6] == '1'
local error_text = ARGV[7]
-- Returns {'OK', revision}, {'NOT_FOUND'} or {'TERMINAL', current status}.
"""
    + _RECORD_HELPERS
    + """
local copies = {}
if legacy_in_workspace(KEYS[1], workspace_id) then table.insert(copies, KEYS[1]) end
if is_hash(KEYS[2]) then table.insert(copies, KEYS[2]) end
if #copies == 0 then return {'NOT_FOUND'} end
-- The copy with the highest revision is the truth (new wins a tie).
local truth, rev = copies[#copies], -1
for _, key in ipairs(copies) do
  local r = rev_of(key)
  if r > rev or (r == rev and key == KEYS[2]) then truth, rev = key, r end
end
local current = redis.call('HGET', truth, 'status')
if current == 'completed' or current == 'failed' then return {'TERMINAL', current} end
local fields = {'status', status, 'rev', tostring(rev + 1)}
if status == 'running' then
  if not redis.call('HGET', truth, 'started_at') then
    table.insert(fields, 'started_at'); table.insert(fields, now)
  end
else
  table.insert(fields, 'finished_at'); table.insert(fields, now)
  if not redis.call('HGET', truth, 'started_at') then
    table.insert(fields, 'started_at'); table.insert(fields, now)
  end
end
if result_set then table.insert(fields, 'result'); table.insert(fields, result) end
if error_set then table.insert(fields, 'error'); table.insert(fields, error_text) end
for _, key in ipairs(copies) do redis.call('HSET', key, unpack(fields)) end
return {'OK', tostring(rev + 1)}
"""
)

CLAIM = (
    """
-- Mark a job taken from a queue as running, if it is still pending, and forget the claiming entry.
-- KEYS[1]  the claiming list
-- KEYS[2]  the legacy job key
-- KEYS[3]  the new job key
local entry = ARGV[1]            -- the entry as it stands in the claiming list
local workspace_id = ARGV[2]
local now = ARGV[3]              -- ISO-8601 UTC
-- Returns the claimed record as a flat field/value array, or an empty array when it is not claimable.
"""
    + _RECORD_HELPERS
    + """
redis.call('LREM', KEYS[1], 1, entry)
local copies = {}
if legacy_in_workspace(KEYS[2], workspace_id) then table.insert(copies, KEYS[2]) end
if is_hash(KEYS[3]) then table.insert(copies, KEYS[3]) end
if #copies == 0 then return {} end
local truth, rev = copies[#copies], -1
for _, key in ipairs(copies) do
  local r = rev_of(key)
  if r > rev or (r == rev and key == KEYS[3]) then truth, rev = key, r end
end
if redis.call('HGET', truth, 'status') ~= 'pending' then return {} end
for _, key in ipairs(copies) do
  redis.call('HSET', key, 'status', 'running', 'started_at', now, 'rev', tostring(rev + 1))
end
return redis.call('HGETALL', truth)
"""
)


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client (EVALSHA, falling back to EVAL after a Redis restart)."""

    enqueue: AsyncScript
    update_status: AsyncScript
    claim: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        return cls(
            enqueue=redis.register_script(ENQUEUE),
            update_status=redis.register_script(UPDATE_STATUS),
            claim=redis.register_script(CLAIM),
        )

RENEW_LEASE = """
-- Extend a lease only while this holder still owns it.
-- KEYS[1]  the lease key
local holder = ARGV[1]   -- the owner's id, the lease key's value
local ttl_ms = ARGV[2]
if redis.call('GET', KEYS[1]) == holder then
  return redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return 0
"""

RELEASE_LEASE = """
-- Delete a lease only while this holder still owns it.
-- KEYS[1]  the lease key
local holder = ARGV[1]   -- the owner's id, the lease key's value
if redis.call('GET', KEYS[1]) == holder then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
