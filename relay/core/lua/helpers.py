"""Lua helpers shared by the scripts that read job records (prepended to their texts)."""

from __future__ import annotations

RECORD_HELPERS = """
local function is_hash(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end
-- A legacy record counts for a workspace only when its own workspace_id says so.
local function legacy_in_workspace(key, workspace_id)
  return is_hash(key) and redis.call('HGET', key, 'workspace_id') == workspace_id
end
-- HSET the field/value pairs t[first..last] (all of t by default) 1,000 values per call: Lua's unpack
-- fails past about 8,000 values ("too many results to unpack"), and a record may hold thousands of fields.
local function hset_chunked(key, t, first, last)
  first, last = first or 1, last or #t
  for s = first, last, 1000 do
    redis.call('HSET', key, unpack(t, s, math.min(s + 999, last)))
  end
end
-- A new-layout record counts for a workspace unless its workspace_id names another one: the key names
-- the workspace, and a record there of another workspace (a bad restore, a buggy tool) is no copy of it.
local function new_in_workspace(key, workspace_id)
  if not is_hash(key) then return false end
  local owner = redis.call('HGET', key, 'workspace_id')
  return not owner or owner == workspace_id
end
local function rev_of(key)
  return tonumber(redis.call('HGET', key, 'rev') or '0') or 0
end
-- Replace a legacy record whole by the field/value pairs t[first..last] (all of t by default). JobService
-- finds a legacy record's workspace through its workspace_id field, so both ids are set where t lacks them.
local function put_legacy(key, workspace_id, job_id, t, first, last)
  redis.call('DEL', key)
  hset_chunked(key, t, first, last)
  redis.call('HSETNX', key, 'workspace_id', workspace_id)
  redis.call('HSETNX', key, 'job_id', job_id)
end
"""

# What a copy of a legacy record of revision ``mine`` does at ``new_key``: 'm' with act 1 (missing) or 2
# (an older copy there, replaced whole); 'e' (the same rev) or 'n' (newer) with act 3, which indexes it and
# writes nothing; 'x' with no act when the new key holds another type. Never overwriting a newer record
# is this comparison: every copying script decides through it.
COPY_DECISION = """
local function copy_decision(new_key, mine)
  if redis.call('EXISTS', new_key) == 0 then return 'm', 1 end
  local theirs = redis.pcall('HGET', new_key, 'rev')
  if type(theirs) == 'table' then return 'x', nil end
  theirs = tonumber(theirs or '0') or 0
  if theirs < mine then return 'm', 2 elseif theirs == mine then return 'e', 3 end
  return 'n', 3
end
"""
