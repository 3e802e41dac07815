"""Backfill scripts: read a batch, copy it with its counts and checkpoint, and the backfill state's writes
(create, write, control, rescan, take over), each refused unless the caller still holds the fencing token.
"""

from __future__ import annotations

from relay.core.lua.helpers import COPY_DECISION as _COPY_DECISION

READ_BATCH = """
-- Read-only: what the backfill needs of each legacy key of one SCAN step to build its new key and index
-- entry. One call instead of a pipeline of HMGETs, which would cost the controller far more to encode
-- and parse. The answers are re-checked inside COPY_BATCH, so they need not stay true.
-- KEYS  the legacy keys
-- Returns two values per key, in order: workspace_id and enqueued_at (nil when absent), or 0 and 0 for
-- a key that is not a hash.
local out = {}
for i, key in ipairs(KEYS) do
  local r = redis.pcall('HMGET', key, 'workspace_id', 'enqueued_at')
  if type(r) == 'table' and r.err then
    out[2 * i - 1], out[2 * i] = 0, 0
  else
    out[2 * i - 1], out[2 * i] = r[1], r[2]
  end
end
return out
"""

COPY_BATCH = (
    """
-- Copy one SCAN batch of legacy job records to the new layout, index them, and record the batch in the
-- backfill's checkpoint and counts: one atomic step, so a crash can neither lose a batch nor count one
-- twice, and a live UpdateJobStatus (which sets every existing copy) lands wholly before or after it.
-- A copy is made only when the new key is missing or holds a lower rev (field rev, missing = 0): equal is
-- skipped as "exists", higher as "newer". With dry = '1' the same decisions are made and nothing is
-- written (the controller runs it with EVALSHA_RO, so Redis itself refuses any write).
-- KEYS[1]  the backfill's state hash (unused in a dry run)
-- KEYS[2]  the backfill's list of invalid job ids (unused in a dry run)
-- KEYS[3 .. 2 + n_ws]  the job index of each workspace of the batch
-- KEYS[3 + n_ws .. 2 + 2 n_ws]  each workspace's late index (members this step adds to the index,
--   scored by Redis TIME in micros, so that a listing begun earlier finds them in its legacy phase)
-- then 2 keys per copy candidate, its legacy key and its new key (grouped by workspace, in the order of
-- the workspaces), then 1 key per item that could not be placed when read: its legacy key.
local dry = ARGV[1] == '1'
local token = ARGV[2]                   -- this run's fencing token: the state must still carry it
local batches_before = ARGV[3]          -- batches recorded before this one: the state must still say so
local invalid_cap = tonumber(ARGV[4])   -- invalid job ids kept in the list at most
local filtered = tonumber(ARGV[5])      -- keys of other workspaces passed over in this batch
local n_fields = tonumber(ARGV[6])      -- checkpoint field/value pairs that follow (cursor, ...)
local n_ws = tonumber(ARGV[7])          -- workspaces of the copy candidates
local n_invalid = tonumber(ARGV[8])     -- items that could not be placed
-- then 2 * n_fields checkpoint field/value pairs; then per workspace its id and its number of copy
-- candidates; then per copy candidate its index member and its enqueued_at as read; then per item
-- that could not be placed its job id and its workspace_id as read. A field as read is '=' .. value,
-- '-' when absent, 'T' when the key was not a hash. (Plain arguments and flat arrays: a script that
-- parses or builds a table per key spends more of Redis on Lua garbage than on the copy.)
-- Returns {'OK', outcomes, <counts and controls when executing>, micros}, {'STALE'} when an item changed
-- since it was read (nothing written: read the batch again) or {'FENCED'} when this run no longer owns the
-- backfill. Outcomes hold one letter per item, candidates then the others: m migrated, e exists,
-- n newer, i invalid, v vanished (deleted since the scan), x error (the new key or the index holds
-- another type). micros: how long the script ran by Redis' clock (the backfill sizes batches by it).
"""
    + _COPY_DECISION
    + """
local started = redis.call('TIME')
local function micros()
  local t = redis.call('TIME')
  return (t[1] - started[1]) * 1000000 + (t[2] - started[2])
end
local COUNTS = {'scanned', 'migrated', 'skipped_exists', 'skipped_newer', 'skipped_invalid',
  'skipped_vanished', 'errors', 'filtered_out', 'control', 'rate_limit_now', 'batch_size_now'}
local COUNT_OF = {m = 'migrated', e = 'skipped_exists', n = 'skipped_newer', i = 'skipped_invalid',
  v = 'skipped_vanished', x = 'errors'}
if not dry then
  local st = redis.call('HMGET', KEYS[1], 'token', 'batches')
  if st[1] ~= token or (st[2] or '0') ~= batches_before then return {'FENCED'} end
end
-- Whether a field read now is what the caller read: '=' .. value, or '-' for absent (no new string).
local function same(read, value)
  if not value then return read == '-' end
  return #read == #value + 1 and string.find(read, value, 2, true) == 2
end
-- HMGET that answers nil instead of failing on a key that is not a hash.
local function fields_of(key, ...)
  local reply = redis.pcall('HMGET', key, ...)
  if type(reply) == 'table' and reply.err then return nil end
  return reply
end
local a = 9 + 2 * n_fields
local k = 3 + 2 * n_ws
local outcomes, tally = {}, {}
-- The plan, as flat arrays: what to do, the key position, the workspace and the member (or job id).
local acts, at, ws_of, members = {}, {}, {}, {}
local n_items = 0
local function decided(out)
  n_items = n_items + 1
  outcomes[n_items] = out
  tally[COUNT_OF[out]] = (tally[COUNT_OF[out]] or 0) + 1
end
local a_items = a + 2 * n_ws
for w = 1, n_ws do
  local workspace_id, count = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local index = KEYS[2 + w]
  local t = redis.call('TYPE', index)['ok']
  local index_ok = t == 'zset' or t == 'none'
  for _ = 1, count do
    local legacy, new_key = KEYS[k], KEYS[k + 1]
    local member, enq_read = ARGV[a_items], ARGV[a_items + 1]
    local r = fields_of(legacy, 'workspace_id', 'enqueued_at', 'rev')
    if r == nil then return {'STALE'} end
    local out, act = nil, nil
    if not r[1] and redis.call('EXISTS', legacy) == 0 then
      out = 'v'
    else
      if r[1] ~= workspace_id or not same(enq_read, r[2]) then return {'STALE'} end
      if not index_ok then
        out = 'x'
      else
        out, act = copy_decision(new_key, tonumber(r[3] or '0') or 0)
      end
    end
    if act then
      local n = #acts + 1
      acts[n], at[n], ws_of[n], members[n] = act, k, w, member
    end
    decided(out)
    k = k + 2
    a_items = a_items + 2
  end
end
for _ = 1, n_invalid do
  local legacy, job_id, ws_read = KEYS[k], ARGV[a_items], ARGV[a_items + 1]
  k = k + 1
  a_items = a_items + 2
  local r = fields_of(legacy, 'workspace_id')
  if r ~= nil and not r[1] and redis.call('EXISTS', legacy) == 0 then
    decided('v')
  else
    if r == nil then
      if ws_read ~= 'T' then return {'STALE'} end
    elseif not same(ws_read, r[1]) then
      return {'STALE'}
    end
    local n = #acts + 1
    acts[n], members[n] = 4, job_id
    decided('i')
  end
end
local letters = table.concat(outcomes)
if dry then return {'OK', letters, micros()} end

local room = invalid_cap - redis.call('LLEN', KEYS[2])
local clock = redis.call('TIME')
local now = string.format('%d%06d', clock[1], clock[2])
for n = 1, #acts do
  local act = acts[n]
  if act == 4 then
    if room > 0 then
      redis.call('RPUSH', KEYS[2], members[n])
      room = room - 1
    end
  else
    local legacy, new_key = KEYS[at[n]], KEYS[at[n] + 1]
    -- 1 copy, 2 replace an older copy (whole), 3 index only. COPY duplicates the hash as Redis keeps it,
    -- where HGETALL and HSET passed every field through Lua twice (the most of a copy's cost); it also
    -- copies a TTL, which the copy must not have (a record written by HSET has none).
    if act == 1 then
      redis.call('COPY', legacy, new_key)
      redis.call('PERSIST', new_key)
    elseif act == 2 then
      redis.call('COPY', legacy, new_key, 'REPLACE')
      redis.call('PERSIST', new_key)
    end
    if redis.call('ZADD', KEYS[2 + ws_of[n]], 0, members[n]) == 1 then
      redis.call('ZADD', KEYS[2 + n_ws + ws_of[n]], now, members[n])
    end
  end
end
if n_items > 0 then redis.call('HINCRBY', KEYS[1], 'scanned', n_items) end
if filtered > 0 then redis.call('HINCRBY', KEYS[1], 'filtered_out', filtered) end
for name, n in pairs(tally) do redis.call('HINCRBY', KEYS[1], name, n) end
redis.call('HINCRBY', KEYS[1], 'batches', 1)
for s = 9, 8 + 2 * n_fields, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, 8 + 2 * n_fields)))
end
local reply = redis.call('HMGET', KEYS[1], unpack(COUNTS))
table.insert(reply, 1, letters)
table.insert(reply, 1, 'OK')
reply[#reply + 1] = micros()
return reply
"""
)

BACKFILL_CREATE = """
-- Record a new backfill as the current one, only while its creator holds the backfill lease.
-- KEYS[1]  the backfill lease
-- KEYS[2]  the current-backfill pointer
-- KEYS[3]  the new backfill's state hash
-- KEYS[4]  the list of recent backfill ids
local holder = ARGV[1]          -- the creator's lease value
local backfill_id = ARGV[2]
local history_len = tonumber(ARGV[3])
-- then the state's field/value pairs
if redis.call('GET', KEYS[1]) ~= holder then return 0 end
for s = 4, #ARGV, 1000 do redis.call('HSET', KEYS[3], unpack(ARGV, s, math.min(s + 999, #ARGV))) end
redis.call('SET', KEYS[2], backfill_id)
redis.call('LPUSH', KEYS[4], backfill_id)
redis.call('LTRIM', KEYS[4], 0, history_len - 1)
return 1
"""

BACKFILL_WRITE = """
-- Update a backfill's state only while this run still owns it (its fencing token is in the state).
-- KEYS[1]  the backfill's state hash
-- KEYS[2]  the legacy-indexed flag (every legacy record is in the workspace indexes)
local token = ARGV[1]
local indexed_by = ARGV[2]      -- '' or the value to set the legacy-indexed flag to
-- then field/value pairs
if redis.call('HGET', KEYS[1], 'token') ~= token then return 0 end
for s = 3, #ARGV, 1000 do redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV))) end
if indexed_by ~= '' then redis.call('SET', KEYS[2], indexed_by) end
return 1
"""

BACKFILL_CONTROL = """
-- An operator's request about a backfill, from any controller: the owner (whoever holds the lease for
-- this backfill) is asked through the state's control field and obeys between batches; with no owner
-- the change is made here, except a resume, which the caller performs by taking the backfill over.
-- KEYS[1]  the backfill's state hash
-- KEYS[2]  the backfill lease
local backfill_id = ARGV[1]
local action = ARGV[2]          -- pause | resume | cancel | orphan | update
local now = ARGV[3]             -- ISO-8601 UTC
local reason = ARGV[4]
local rate = ARGV[5]            -- for update: keys per second ('' leaves it)
local batch = ARGV[6]           -- for update: keys per batch ('' leaves it)
-- Returns {outcome, state}: outcome MISSING | FINISHED | ASKED | DONE | OWNED | TAKE_OVER.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'MISSING', ''} end
local finished = state == 'COMPLETED' or state == 'FAILED' or state == 'CANCELLED'
local holder = redis.call('GET', KEYS[2]) or ''
local suffix = '/' .. backfill_id
local owned = string.sub(holder, -#suffix) == suffix
if action == 'update' then
  if finished then return {'FINISHED', state} end
  if rate ~= '' then redis.call('HSET', KEYS[1], 'rate_limit_now', rate) end
  if batch ~= '' then redis.call('HSET', KEYS[1], 'batch_size_now', batch) end
  redis.call('HSET', KEYS[1], 'update_time', now)
  return {'DONE', state}
end
if finished then
  if action == 'resume' and state == 'FAILED' and not owned then return {'TAKE_OVER', state} end
  return {'FINISHED', state}
end
if owned then
  if action == 'orphan' then return {'OWNED', state} end
  local control = ''
  if action == 'pause' then control = 'pause' elseif action == 'cancel' then control = 'cancel' end
  redis.call('HSET', KEYS[1], 'control', control)
  return {'ASKED', state}
end
if action == 'pause' then
  redis.call('HSET', KEYS[1], 'state', 'PAUSED', 'control', '', 'reason', reason, 'update_time', now)
  return {'DONE', 'PAUSED'}
elseif action == 'cancel' then
  redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'control', '', 'reason', reason, 'update_time', now,
    'end_time', now)
  return {'DONE', 'CANCELLED'}
elseif action == 'orphan' then
  if state == 'RUNNING' then
    redis.call('HSET', KEYS[1], 'state', 'ORPHANED', 'reason', reason, 'update_time', now)
    return {'DONE', 'ORPHANED'}
  end
  return {'DONE', state}
end
return {'TAKE_OVER', state}
"""

BACKFILL_RESCAN = """
-- Begin a backfill's scan again from cursor 0 because Redis restarted (its run_id changed): a SCAN
-- cursor does not survive a restart, so the keys the old cursor had not reached are unknown. One step:
-- cursor, counts, invalid ids and max_keys continuation fields reset, the new run_id recorded.
-- KEYS[1]  the backfill's state hash
-- KEYS[2]  the backfill's list of invalid job ids
local token = ARGV[1]           -- this run's fencing token: the state must still carry it
local batches_before = ARGV[2]  -- batches recorded so far: the state must still say so (as COPY_BATCH)
local run_id = ARGV[3]          -- the Redis run_id the new pass scans
-- then field/value pairs to set (cursor, counts, ...)
-- Returns 1 when done (or already done for this run_id), 0 when this run no longer owns the backfill.
local st = redis.call('HMGET', KEYS[1], 'token', 'batches', 'run_id')
if st[1] ~= token then return 0 end
if st[3] == run_id then return 1 end
if (st[2] or '0') ~= batches_before then return 0 end
redis.call('HSET', KEYS[1], 'run_id', run_id)
for s = 4, #ARGV, 1000 do redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV))) end
redis.call('HINCRBY', KEYS[1], 'rescans', 1)
redis.call('DEL', KEYS[2])
return 1
"""

BACKFILL_TAKE_OVER = """
-- Make this controller the runner of a backfill nobody runs, from its checkpoint.
-- KEYS[1]  the backfill's state hash
-- KEYS[2]  the backfill lease
-- KEYS[3]  the current-backfill pointer
local holder = ARGV[1]          -- this controller's lease value
local backfill_id = ARGV[2]
local token = ARGV[3]           -- the new fencing token
local owner = ARGV[4]           -- this controller's id
local now = ARGV[5]
local reason = ARGV[6]
-- then the states it may be taken over from
-- Returns {'OK', previous state}, {'NO_LEASE'}, {'NOT_CURRENT'} or {'STATE', state}.
if redis.call('GET', KEYS[2]) ~= holder then return {'NO_LEASE'} end
if redis.call('GET', KEYS[3]) ~= backfill_id then return {'NOT_CURRENT'} end
local state = redis.call('HGET', KEYS[1], 'state') or ''
local allowed = false
for i = 7, #ARGV do if ARGV[i] == state then allowed = true end end
if not allowed then return {'STATE', state} end
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'token', token, 'owner', owner, 'control', '',
  'reason', reason, 'update_time', now, 'end_time', '')
redis.call('HINCRBY', KEYS[1], 'resumes', 1)
return {'OK', state}
"""
