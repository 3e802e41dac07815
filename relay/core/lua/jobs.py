"""JobService's scripts for the shared topology: enqueue, status updates, claims, record reads.

Each RPC of JobService is one of these scripts (one atomic step); every key it touches arrives in KEYS so a
Redis Cluster layout can route them, and every ARGV is named at the top of the script.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.core.keys import KeyLayout
from relay.core.lua.helpers import RECORD_HELPERS as _RECORD_HELPERS
from relay.core.stages import Stage

ENQUEUE = """
-- Enqueue a batch of jobs for one workspace, with the idempotency check inside the same step (the shared
-- topology: both layouts, the queues and the claim rotation on one Redis).
-- KEYS[1]            the workspace's job index (sorted set, lexicographic)
-- KEYS[2]            the legacy pending queue (job ids)
-- KEYS[3]            the workspace's pending queue (job ids)
-- KEYS[4]            the workspace queue's sequence (pushes ever made)
-- KEYS[5]            the claim rotation (sorted set of queues that may hold work)
-- KEYS[6]            the claim rotation's sequences (hash)
-- KEYS[7 + 4(i-1)]   action i's legacy idempotency key (untouched when it has no client_request_id)
-- KEYS[8 + 4(i-1)]   action i's new-layout idempotency key (likewise)
-- KEYS[9 + 4(i-1)]   action i's legacy job key
-- KEYS[10 + 4(i-1)]  action i's new job key
local write_legacy = ARGV[1] == '1'   -- the stage writes the legacy layout
local write_new = ARGV[2] == '1'      -- the stage writes the new layout
local idempotency_ttl = ARGV[3]       -- seconds an idempotency key lives
local workspace_id = ARGV[4]
-- then for action i, at ARGV[5 + 4(i-1)] onwards:
--   job_id, has_client_request_id ('1'/'0'), index_member, record (JSON array field, value, ...)
-- Returns {queue depth (legacy queue and the workspace's), job id per action}.
local ids = {}
local n = (#KEYS - 6) / 4
local pushed = false
for i = 1, n do
  local k = 7 + 4 * (i - 1)
  local a = 5 + 4 * (i - 1)
  local job_id, has_crid, member = ARGV[a], ARGV[a + 1] == '1', ARGV[a + 2]
  -- A replay finds its original in either layout's key, whichever stage wrote it.
  local original = has_crid and (redis.call('GET', KEYS[k]) or redis.call('GET', KEYS[k + 1]))
  if original then
    ids[i] = original
  else
    local record = cjson.decode(ARGV[a + 3])
    if write_legacy then
      if has_crid then redis.call('SET', KEYS[k], job_id, 'EX', idempotency_ttl) end
      for s = 1, #record, 1000 do
        redis.call('HSET', KEYS[k + 2], unpack(record, s, math.min(s + 999, #record)))
      end
    end
    if write_new then
      if has_crid then redis.call('SET', KEYS[k + 1], job_id, 'EX', idempotency_ttl) end
      for s = 1, #record, 1000 do
        redis.call('HSET', KEYS[k + 3], unpack(record, s, math.min(s + 999, #record)))
      end
      redis.call('RPUSH', KEYS[3], job_id)
      redis.call('INCR', KEYS[4])
      pushed = true
    else
      redis.call('RPUSH', KEYS[2], job_id)
    end
    redis.call('ZADD', KEYS[1], 0, member)
    ids[i] = job_id
  end
end
if pushed then
  redis.call('ZADD', KEYS[5], 'NX', 0, workspace_id)
  redis.call('HSET', KEYS[6], workspace_id, redis.call('GET', KEYS[4]))
end
local depth = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
table.insert(ids, 1, depth)
return ids
"""


@dataclass(frozen=True)
class EnqueuedJob:
    """One action of an Execute call, as ENQUEUE takes it."""

    job_id: str
    client_request_id: str  # "" when the caller sent none: no idempotency key is checked or set
    index_member: str
    record: dict[str, str]


def enqueue_call(
    keys: KeyLayout, workspace_id: str, stage: Stage, ttl: int, jobs: Sequence[EnqueuedJob]
) -> tuple[list[str], list[Any]]:
    """ENQUEUE's KEYS and ARGV, in the layout its header documents."""
    script_keys = [
        keys.job_index(workspace_id),
        keys.legacy_queue,
        keys.queue(workspace_id),
        keys.queue_seq(workspace_id),
        keys.ready,
        keys.ready_seq,
    ]
    args: list[Any] = [
        "1" if stage.writes_legacy else "0",
        "1" if stage.writes_new else "0",
        ttl,
        workspace_id,
    ]
    for job in jobs:
        crid = job.client_request_id or "-"  # a placeholder key, never read or written without one
        script_keys += [
            keys.idempotency(workspace_id, crid),
            keys.new_idempotency(workspace_id, crid),
            keys.legacy_job(job.job_id),
            keys.new_job(workspace_id, job.job_id),
        ]
        flat = [item for pair in job.record.items() for item in pair]
        args += [job.job_id, "1" if job.client_request_id else "0", job.index_member, json.dumps(flat)]
    return script_keys, args


# Shared by UPDATE_STATUS and CLAIM: the copies of one job a stage uses, and the one that is the truth.
_LIVE_COPIES = """
-- The job's copies in the layouts the stage uses, each only when it is this workspace's: a legacy record
-- by its workspace_id; a new-layout one unless its workspace_id names another workspace (a bad restore,
-- a buggy tool), which is no copy of this job at all. Also returns whether such a foreign record was met.
local function live_copies(legacy, new, workspace_id, use_legacy, use_new)
  local copies, foreign = {}, false
  if use_legacy and legacy_in_workspace(legacy, workspace_id) then table.insert(copies, legacy) end
  if use_new and is_hash(new) then
    local owner = redis.call('HGET', new, 'workspace_id')
    if owner and owner ~= workspace_id then foreign = true else table.insert(copies, new) end
  end
  return copies, foreign
end
-- The copy with the highest revision is the latest acknowledged write; a tie goes to the layout the
-- stage's reads prefer, so a change starts from what readers see.
local function truth_of(copies, new, prefer_new)
  local truth, rev = nil, -1
  for _, key in ipairs(copies) do
    local r = rev_of(key)
    if r > rev or (r == rev and (key == new) == prefer_new) then truth, rev = key, r end
  end
  return truth, rev
end
-- Write the truth with ``changes`` applied to every copy: a copy that fell behind (updates made while a
-- stage used only the other layout) catches up whole, not only in the changed fields. Only copies that
-- exist are written: a change never creates a partial record.
local function write_copies(copies, truth, changes)
  local fields = redis.call('HGETALL', truth)
  for _, v in ipairs(changes) do table.insert(fields, v) end
  for _, key in ipairs(copies) do hset_chunked(key, fields) end
end
"""

UPDATE_STATUS = (
    """
-- Set a job's status on each copy that exists in the layouts the stage uses; never create a copy.
-- KEYS[1]  the legacy job key
-- KEYS[2]  the new job key
local workspace_id = ARGV[1]
local status = ARGV[2]           -- running | completed | failed
local now = ARGV[3]              -- ISO-8601 UTC
local result_set = ARGV[4] == '1'
local result = ARGV[5]           -- JSON text
local error_set = ARGV[6] == '1'
local error_text = ARGV[7]
local use_legacy = ARGV[8] == '1' -- the stage reads and writes the legacy layout
local use_new = ARGV[9] == '1'    -- the stage reads and writes the new layout
local prefer_new = ARGV[10] == '1'
local result_pb = ARGV[11]       -- the result's encoded form beside its text ('' when none)
-- Returns {'OK', revision, foreign}, {'NOT_FOUND', foreign} or {'TERMINAL', current status, foreign}, where
-- foreign is '1' when the new-layout key held another workspace's record (left untouched), else '0'.
"""
    + _RECORD_HELPERS
    + _LIVE_COPIES
    + """
local copies, foreign = live_copies(KEYS[1], KEYS[2], workspace_id, use_legacy, use_new)
local foreign_flag = foreign and '1' or '0'
if #copies == 0 then return {'NOT_FOUND', foreign_flag} end
local truth, rev = truth_of(copies, KEYS[2], prefer_new)
local current = redis.call('HGET', truth, 'status')
if current == 'completed' or current == 'failed' then return {'TERMINAL', current, foreign_flag} end
local changes = {'status', status, 'rev', tostring(rev + 1)}
if status ~= 'running' then
  table.insert(changes, 'finished_at'); table.insert(changes, now)
end
if not redis.call('HGET', truth, 'started_at') then
  table.insert(changes, 'started_at'); table.insert(changes, now)
end
if result_set then
  table.insert(changes, 'result'); table.insert(changes, result)
  table.insert(changes, 'result_pb'); table.insert(changes, result_pb)
end
if error_set then table.insert(changes, 'error'); table.insert(changes, error_text) end
write_copies(copies, truth, changes)
return {'OK', tostring(rev + 1), foreign_flag}
"""
)

CLAIM = (
    """
-- Mark a job taken from a queue as running, if it is still pending, and forget the claiming entry.
-- KEYS[1]  the claiming list
-- KEYS[2]  the claim times hash
-- KEYS[3]  the legacy job key
-- KEYS[4]  the new job key
local entry = ARGV[1]            -- the entry as it stands in the claiming list
local workspace_id = ARGV[2]
local now = ARGV[3]              -- ISO-8601 UTC
local use_legacy = ARGV[4] == '1' -- the stage reads and writes the legacy layout
local use_new = ARGV[5] == '1'    -- the stage reads and writes the new layout
local prefer_new = ARGV[6] == '1'
-- Returns {foreign, the claimed record as flat field/value pairs...}, or {foreign} alone when it is not
-- claimable; foreign is '1' when the new-layout key held another workspace's record (left untouched).
-- The claiming entry is forgotten last: a script that fails part-way (Redis keeps the writes made before
-- the error) leaves the entry in the claiming list, where the claim timeout puts it back in the queue.
"""
    + _RECORD_HELPERS
    + _LIVE_COPIES
    + """
local function forget()
  redis.call('LREM', KEYS[1], 1, entry)
  redis.call('HDEL', KEYS[2], entry)
end
local copies, foreign = live_copies(KEYS[3], KEYS[4], workspace_id, use_legacy, use_new)
local foreign_flag = foreign and '1' or '0'
if #copies == 0 then forget(); return {foreign_flag} end
local truth, rev = truth_of(copies, KEYS[4], prefer_new)
if redis.call('HGET', truth, 'status') ~= 'pending' then forget(); return {foreign_flag} end
write_copies(copies, truth, {'status', 'running', 'started_at', now, 'rev', tostring(rev + 1)})
forget()
local record = redis.call('HGETALL', truth)
table.insert(record, 1, foreign_flag)
return record
"""
)

LEGACY_KEYS_OF_WORKSPACE = """
-- Read-only: which of one SCAN step's legacy keys hold a record of the workspace (with the status, when
-- one is given). One short reply instead of a pipeline of HMGETs, one reply per key, which costs the
-- caller ten times the CPU (measured: 11-14 ms against 1 ms for 500 keys). Keys that are not hashes
-- are skipped, not errors.
-- KEYS  legacy job keys
local workspace_id = ARGV[1]
local status = ARGV[2]            -- '' for any status
-- Returns three values per matching key: its position in KEYS (from 1), its job_id and its enqueued_at
-- ('' when missing), which name its index entry.
local out = {}
for i, key in ipairs(KEYS) do
  local r = redis.pcall('HMGET', key, 'workspace_id', 'status', 'job_id', 'enqueued_at')
  if type(r) == 'table' and r.err == nil and r[1] == workspace_id and (status == '' or r[2] == status) then
    out[#out + 1] = i
    out[#out + 1] = r[3] or ''
    out[#out + 1] = r[4] or ''
  end
end
return out
"""

# One reply for a page of records instead of one per key. Measured for 100 keys (bench/): a pipeline of
# HGETALLs costs the client 2.1 ms of CPU (redis-py handles each reply separately) and Redis 0.2 ms; this
# script 0.4 ms and 0.6 ms. Worth it for a page (and the read is one consistent snapshot of every copy);
# not for hundreds of keys at once, which would hold Redis for milliseconds.
NOW = """
-- Read-only: the clock of the node that serves KEYS[1]'s slot (Redis TIME, micros), so that a listing's
-- start and the backfill's late-index scores come from the same clock.
-- KEYS[1]  any key of the workspace's slot
local t = redis.call('TIME')
return tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

READ_RECORDS = """
-- Read job records in one step: for each key, its hash as a flat field/value list, or an empty list when
-- the key is missing or is not a hash (messy legacy data is no error).
-- KEYS[i]  a job key, in either layout
local out = {}
for i, key in ipairs(KEYS) do
  local reply = redis.pcall('HGETALL', key)
  if type(reply) == 'table' and reply.err == nil then out[i] = reply else out[i] = {} end
end
return out
"""

READ_SERVED = """
-- Read-only: jobs as a stage that reads both layouts (no shadow reads) serves them, in one step, with
-- only the copy served in the reply: half the bytes to send and decode of READ_RECORDS over both keys.
-- The new copy is read whole at once (it is the one served unless the legacy copy is newer), the legacy
-- copy's workspace_id and rev beside it: two calls per job, not three (measured: 15% less Redis time
-- per page of 50).
-- The choice is the caller's own (relay.services.job_store): a legacy copy counts when its workspace_id
-- is this workspace's, a new one unless its workspace_id names another; of two, the higher revision,
-- a tie to the layout the stage prefers.
-- KEYS[2i-1]  job i's new-layout key
-- KEYS[2i]    job i's legacy key
local workspace_id = ARGV[1]
local prefer_new = ARGV[2] == '1'
-- Returns per job {kind, foreign, record}: kind 'n' (the new copy), 'o' (the legacy copy) or 'm' (none,
-- record empty); foreign '1' when the new key held another workspace's record. A revision that is not
-- plain digits (which the caller reads its own way) gives {'b', '0', new, legacy}: both, for the caller.
local function hash_of(key)
  local reply = redis.pcall('HGETALL', key)
  if type(reply) == 'table' and reply.err == nil then return reply end
  return {}
end
-- A field of a hash read whole (field, value, field, value, ...); false where absent.
local function field_of(flat, name)
  for j = 1, #flat, 2 do
    if flat[j] == name then return flat[j + 1] end
  end
  return false
end
local function plain_rev(text)
  if not text or text == '' then return 0 end
  if #text <= 15 and string.find(text, '^%d+$') then return tonumber(text) end
  return nil
end
local out = {}
for i = 1, #KEYS, 2 do
  local new = hash_of(KEYS[i])
  if #new == 0 then new = nil end  -- no key, or a key that holds no hash
  local legacy = redis.pcall('HMGET', KEYS[i + 1], 'workspace_id', 'rev')
  local foreign = '0'
  if new then
    local owner = field_of(new, 'workspace_id')
    if owner and owner ~= workspace_id then foreign = '1'; new = nil end
  end
  if type(legacy) ~= 'table' or legacy.err ~= nil or legacy[1] ~= workspace_id then legacy = nil end
  local entry
  if new and legacy then
    local rn, rl = plain_rev(field_of(new, 'rev')), plain_rev(legacy[2])
    if rn == nil or rl == nil then
      entry = {'b', '0', new, hash_of(KEYS[i + 1])}
    elseif rn > rl or (rn == rl and prefer_new) then
      entry = {'n', foreign, new}
    else
      entry = {'o', foreign, hash_of(KEYS[i + 1])}
    end
  elseif new then
    entry = {'n', foreign, new}
  elseif legacy then
    entry = {'o', foreign, hash_of(KEYS[i + 1])}
  else
    entry = {'m', foreign, {}}
  end
  out[#out + 1] = entry
end
return out
"""
