"""The controller's scripts for a split topology (the legacy layout on its own Redis, the new one on a
cluster or another Redis): each touches one store, and on the new store one slot.

No script spans the two stores, so every decision that needs both copies is made in two steps: a read of
one store, then a script on the other that writes only if what it depends on in its own store is still
what was read (a revision, or the whole record). What the first read saw may change after it; each
script says why its check is enough.
"""

from __future__ import annotations

from relay.core.lua.helpers import COPY_DECISION as _COPY_DECISION
from relay.core.lua.helpers import RECORD_HELPERS as _RECORD_HELPERS

READ_LEGACY_RECORDS = """
-- Read-only, on the legacy store: whole legacy records, telling a missing key from one that is not a hash.
-- KEYS[i]  a legacy job key
-- Returns per key: 0 when it is not a hash, else its flat field/value list (empty when missing).
local out = {}
for i, key in ipairs(KEYS) do
  local reply = redis.pcall('HGETALL', key)
  if type(reply) == 'table' and reply.err then out[i] = 0 else out[i] = reply end
end
return out
"""

BACKFILL_COPY_WORKSPACE = (
    """
-- On the new store, in ONE workspace's slot: copy that workspace's share of a backfill batch (records read
-- from the legacy store), index it, and remember what this batch applied here, so that a batch replayed
-- after a crash (the checkpoint in the global slot is written after this) is counted once.
-- A record is written only when the new key is missing or holds a lower rev (field rev, missing = 0):
-- equal is "exists", higher is "newer", and neither is overwritten. A JobService write that raced the copy
-- bumped rev in the copy it caught up, so this check never undoes it.
-- KEYS[1]      the backfill's applied hash in this slot (``KeyLayout.backfill_applied``): field <batch>
--              -> 'job:letter ...' of the batch, 'carry' -> letters of jobs an earlier attempt of a
--              replayed batch applied that its replay no longer holds, 'last' -> the latest batch number
-- KEYS[2]      the workspace's job index
-- KEYS[3]      the workspace's late index (members this backfill added, scored by Redis TIME in micros)
-- KEYS[3 + i]  item i's new job key
local dry = ARGV[1] == '1'         -- decide only (run with EVALSHA_RO: Redis refuses any write)
local batch = ARGV[2]              -- the batch's number: the batches the global state recorded before it
local ttl = tonumber(ARGV[3])      -- seconds the applied hash outlives its last batch
-- then per item i: job_id, index member, rev read, n (field/value pairs), then the 2n values
-- Returns {outcomes, acts}: one letter per item each. Outcomes are what the batch counts (m migrated,
-- e exists, n newer, x error: the new key or the index holds another type), taken from an earlier attempt
-- of the same batch when there was one; acts say what this call did ('c' wrote the record, '-' not).
"""
    + _COPY_DECISION
    + """
local function parse(text, into)
  if text then
    for job, letter in string.gmatch(text, '([^ :]+):(%a)') do into[job] = letter end
  end
end
local prior, carry = {}, {}
if not dry then
  parse(redis.call('HGET', KEYS[1], batch), prior)
  parse(redis.call('HGET', KEYS[1], 'carry'), carry)
end
local t = redis.call('TYPE', KEYS[2])['ok']
local index_ok = t == 'zset' or t == 'none'
local now = ''
if not dry then
  local clock = redis.call('TIME')
  now = string.format('%d%06d', clock[1], clock[2])
end
local outcomes, acts, applied, here = {}, {}, {}, {}
local a = 4
for i = 1, #KEYS - 3 do
  local key = KEYS[3 + i]
  local job_id, member, mine, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]) or 0, tonumber(ARGV[a + 3])
  local first, last = a + 4, a + 3 + 2 * n
  a = last + 1
  local out, act = 'x', nil
  if index_ok then out, act = copy_decision(key, mine) end
  local reported = prior[job_id] or carry[job_id] or out
  carry[job_id] = nil
  here[job_id] = true
  outcomes[i] = reported
  acts[i] = (act == 1 or act == 2) and 'c' or '-'
  applied[i] = job_id .. ':' .. reported
  if act and not dry then
    if act ~= 3 then
      if act == 2 then redis.call('DEL', key) end
      for s = first, last, 1000 do redis.call('HSET', key, unpack(ARGV, s, math.min(s + 999, last))) end
    end
    if redis.call('ZADD', KEYS[2], 0, member) == 1 then redis.call('ZADD', KEYS[3], now, member) end
  end
end
if not dry then
  -- An earlier attempt applied jobs this replay no longer holds (its SCAN step was sized otherwise): they
  -- come in a later batch, which takes their letters from 'carry'.
  for job, letter in pairs(prior) do
    if not here[job] then carry[job] = letter end
  end
  local carried = {}
  for job, letter in pairs(carry) do carried[#carried + 1] = job .. ':' .. letter end
  local last = redis.call('HGET', KEYS[1], 'last')
  -- A batch is sent only once the one before it is recorded: older batches are never replayed.
  if last and last ~= batch then redis.call('HDEL', KEYS[1], last) end
  redis.call('HSET', KEYS[1], batch, table.concat(applied, ' '), 'last', batch)
  if #carried > 0 then
    redis.call('HSET', KEYS[1], 'carry', table.concat(carried, ' '))
  else
    redis.call('HDEL', KEYS[1], 'carry')
  end
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {table.concat(outcomes), table.concat(acts)}
"""
)

BACKFILL_RECOPY = """
-- On the new store: copy a legacy record again that changed after the backfill read and copied it (the
-- old system writes without bumping rev). Written only when the new key still holds exactly what the
-- backfill wrote, or is missing, or holds a lower rev: a newer write by JobService is never undone.
-- KEYS[1]  the new job key
-- KEYS[2]  the workspace's job index
local rev = tonumber(ARGV[1]) or 0  -- the rev of the record now in the legacy store
local member = ARGV[2]              -- its index member
local n_old = tonumber(ARGV[3])     -- field/value pairs the backfill wrote, then their 2 n_old values
-- then the record to write as field/value pairs.
-- Returns 'OK' or 'KEPT' (someone else wrote the new key since: nothing written).
local new_at = 4 + 2 * n_old
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' then
  if t ~= 'hash' then return 'KEPT' end
  local theirs = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0') or 0
  local ours = redis.call('HLEN', KEYS[1]) == n_old
  if ours then
    for f = 4, new_at - 1, 2 do
      if redis.call('HGET', KEYS[1], ARGV[f]) ~= ARGV[f + 1] then ours = false break end
    end
  end
  if not ours and theirs >= rev then return 'KEPT' end
  redis.call('DEL', KEYS[1])
end
for s = new_at, #ARGV, 1000 do redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV))) end
redis.call('ZADD', KEYS[2], 0, member)
return 'OK'
"""

BACKFILL_RECORD_BATCH = """
-- In the global slot: record a batch that a split-topology backfill copied (per workspace, before this):
-- its counts and the checkpoint, only while this run owns the backfill and no batch came between.
-- KEYS[1]  the backfill's state hash
-- KEYS[2]  the backfill's list of invalid job ids
local token = ARGV[1]                   -- this run's fencing token: the state must still carry it
local batches_before = ARGV[2]          -- batches recorded before this one: the state must still say so
local invalid_cap = tonumber(ARGV[3])   -- invalid job ids kept in the list at most
local n_fields = tonumber(ARGV[4])      -- checkpoint field/value pairs
local n_counts = tonumber(ARGV[5])      -- count name/increment pairs
local outcomes = ARGV[6]                -- the batch's outcome letters (echoed back)
-- then 2 * n_fields checkpoint values, 2 * n_counts count values, then the invalid job ids.
-- Returns as COPY_BATCH executing: {'OK', outcomes, counts..., control, rate_limit_now, batch_size_now}
-- or {'FENCED'}.
local COUNTS = {'scanned', 'migrated', 'skipped_exists', 'skipped_newer', 'skipped_invalid',
  'skipped_vanished', 'errors', 'filtered_out', 'control', 'rate_limit_now', 'batch_size_now'}
local st = redis.call('HMGET', KEYS[1], 'token', 'batches')
if st[1] ~= token or (st[2] or '0') ~= batches_before then return {'FENCED'} end
local a = 7
if n_fields > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, a, a + 2 * n_fields - 1)) end
a = a + 2 * n_fields
for _ = 1, n_counts do
  local n = tonumber(ARGV[a + 1])
  if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[a], n) end
  a = a + 2
end
local room = invalid_cap - redis.call('LLEN', KEYS[2])
for i = a, #ARGV do
  if room <= 0 then break end
  redis.call('RPUSH', KEYS[2], ARGV[i])
  room = room - 1
end
redis.call('HINCRBY', KEYS[1], 'batches', 1)
local reply = redis.call('HMGET', KEYS[1], unpack(COUNTS))
table.insert(reply, 1, outcomes)
table.insert(reply, 1, 'OK')
return reply
"""

DELETE_UNCHANGED_LEGACY = """
-- On the legacy store: delete legacy job records that cleanup compared with an equal or newer copy in the
-- new store, each only if it is still exactly the record compared (every field, no more, no fewer). The
-- new copy only moves forwards, so it is still equal or newer; the legacy one is checked here.
-- KEYS[i]  legacy job key i
-- then per key i: n (field/value pairs compared), then the 2n values
-- Returns per key: 'deleted', 'changed' (kept) or 'gone'.
local out = {}
local a = 1
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  local first, last = a + 1, a + 2 * n
  a = last + 1
  local t = redis.call('TYPE', key)['ok']
  local outcome = 'deleted'
  if t == 'none' then
    outcome = 'gone'
  elseif t ~= 'hash' or redis.call('HLEN', key) ~= n then
    outcome = 'changed'
  else
    for f = first, last, 2 do
      if redis.call('HGET', key, ARGV[f]) ~= ARGV[f + 1] then outcome = 'changed' break end
    end
  end
  if outcome == 'deleted' then redis.call('DEL', key) end
  out[i] = outcome
end
return out
"""

REVERSE_COPY_RECORDS = (
    """
-- On the legacy store: bring legacy records up to date from new-layout records read from the new store,
-- only forwards: written where the legacy copy is missing or has a lower rev, replacing it whole. Never
-- over a legacy record of another workspace, a key that is not a hash, a newer legacy record, or one with
-- the same rev and other data (reported). A new record that moved on after it was read is copied on the
-- next run; the legacy copy never goes backwards.
-- KEYS[i]  legacy job key i
local dry_run = ARGV[1] == '1'          -- classify only, write nothing
local field_count = tonumber(ARGV[2])   -- ARGV[3 .. 2 + field_count]: the data fields compared
-- then per key i: workspace_id, job_id, rev, n (field/value pairs), then the 2n values of the new record
-- Returns one outcome per key: copied | unchanged | legacy_newer | differing | invalid
"""
    + _RECORD_HELPERS
    + """
local fields = {}
for f = 1, field_count do fields[f] = ARGV[2 + f] end
local out = {}
local a = 3 + field_count
for i, legacy in ipairs(KEYS) do
  local workspace_id, job_id, rev, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]) or 0, tonumber(ARGV[a + 3])
  local first, last = a + 4, a + 3 + 2 * n
  a = last + 1
  local record = {}
  for f = first, last, 2 do record[ARGV[f]] = ARGV[f + 1] end
  record.job_id = record.job_id or job_id
  record.workspace_id = record.workspace_id or workspace_id
  local outcome = 'copied'
  if redis.call('EXISTS', legacy) == 1 then
    if not legacy_in_workspace(legacy, workspace_id) then
      outcome = 'invalid'
    else
      local rl = rev_of(legacy)
      if rl > rev then
        outcome = 'legacy_newer'
      elseif rl == rev then
        outcome = 'unchanged'
        for _, f in ipairs(fields) do
          local default = ''
          if f == 'job_id' then default = job_id elseif f == 'workspace_id' then default = workspace_id end
          if (redis.call('HGET', legacy, f) or default) ~= (record[f] or '') then
            outcome = 'differing'
            break
          end
        end
      end
    end
  end
  if outcome == 'copied' and not dry_run then put_legacy(legacy, workspace_id, job_id, ARGV, first, last) end
  out[i] = outcome
end
return out
"""
)
