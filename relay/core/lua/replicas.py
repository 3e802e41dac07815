"""Writes across two stores (split topologies): one layout's half of an RPC, in one single-slot script.

No transaction spans two Redis deployments, so a write follows one order (``docs/two-stores.md``): the
layout the stage reads first is written first, together with an outbox entry that records the write still
owed to the other layout; then the other layout is brought up to date, whole and only forwards by
revision; then the outbox entry is cleared. A crash between the steps leaves the outbox entry, which the
controller's repairer replays (the replica step is idempotent), and verification reports what is left.
"""

from __future__ import annotations

ENQUEUE_LAYOUT = """
-- Enqueue a batch of jobs of one workspace in ONE layout of a split topology, with the idempotency check
-- inside the same step.
-- KEYS[1]           the queue to push to (the workspace's queue, or the legacy queue)
-- KEYS[2]           the queue's sequence (pushes ever made; untouched for the legacy queue)
-- KEYS[3]           the workspace's job index (new layout; untouched for the legacy layout)
-- KEYS[4]           the outbox of this store (untouched unless ``owed`` is '1')
-- KEYS[3 + 2i]      action i's idempotency key in this layout
-- KEYS[4 + 2i]      action i's job key in this layout
local push = ARGV[1] == '1'        -- push the new jobs to KEYS[1]
local count_seq = ARGV[2] == '1'   -- KEYS[2] counts the pushes (workspace queues)
local indexed = ARGV[3] == '1'     -- this is the new layout: index the jobs
local first = ARGV[4] == '1'       -- written first: a replayed client_request_id returns the original id
local owed = ARGV[5] == '1'        -- the other layout is written too: record it in the outbox
local ttl = ARGV[6]                -- seconds an idempotency key lives
local workspace_id = ARGV[7]
local owed_prefix = ARGV[8]        -- precedes a job id in an outbox field ('<ws>:' on the legacy store)
-- then for action i, at ARGV[9 + 5(i-1)] onwards: job_id, has_client_request_id ('1'/'0'),
--   index member, record (JSON array field, value, ...), its outbox entry (JSON)
-- Returns {queue sequence, queue length, then per action: the job id and '1' when it was created here}.
local out = {}
local n = (#KEYS - 4) / 2
for i = 1, n do
  local k = 3 + 2 * i
  local a = 9 + 5 * (i - 1)
  local job_id, has_crid, member = ARGV[a], ARGV[a + 1] == '1', ARGV[a + 2]
  local original = has_crid and redis.call('GET', KEYS[k])
  if original and first then
    out[#out + 1] = original
    out[#out + 1] = '0'
  else
    if has_crid and not original then redis.call('SET', KEYS[k], job_id, 'EX', ttl) end
    -- A replica write replayed by the repairer finds its record already there: nothing to redo.
    local created = redis.call('EXISTS', KEYS[k + 1]) == 0
    if created then
      local record = cjson.decode(ARGV[a + 3])
      for s = 1, #record, 1000 do
        redis.call('HSET', KEYS[k + 1], unpack(record, s, math.min(s + 999, #record)))
      end
      if indexed then redis.call('ZADD', KEYS[3], 0, member) end
      if push then
        redis.call('RPUSH', KEYS[1], job_id)
        if count_seq then redis.call('INCR', KEYS[2]) end
      end
    end
    if owed and first then redis.call('HSET', KEYS[4], owed_prefix .. job_id, ARGV[a + 4]) end
    out[#out + 1] = job_id
    out[#out + 1] = created and '1' or '0'
  end
end
local seq = count_seq and (redis.call('GET', KEYS[2]) or '0') or '0'
table.insert(out, 1, redis.call('LLEN', KEYS[1]))
table.insert(out, 1, seq)
return out
"""

PUT_RECORD = """
-- Replace one job record whole, if it is still what the caller read (compare and set), and note the
-- write still owed to the other layout in this store's outbox, in the same step.
-- KEYS[1]  the job key
-- KEYS[2]  the workspace's job index (new layout; untouched for the legacy layout)
-- KEYS[3]  this store's outbox (untouched when ``owed`` is empty)
local expected_rev = ARGV[1]       -- the rev read ('' when the key was missing)
local expected_status = ARGV[2]    -- the status read ('' when the key was missing)
local member = ARGV[3]             -- index member ('' for the legacy layout)
local owed_field = ARGV[4]         -- outbox field ('' when nothing is owed)
local owed = ARGV[5]               -- outbox entry (JSON)
-- then the record as field, value pairs.
-- Returns 'OK', or 'CHANGED' when the record is no longer what was read (nothing written).
local cur = redis.pcall('HMGET', KEYS[1], 'rev', 'status')
if type(cur) == 'table' and cur.err then return 'CHANGED' end
local exists = redis.call('EXISTS', KEYS[1]) == 1
if expected_rev == '' then
  if exists then return 'CHANGED' end
else
  if not exists or (cur[1] or '0') ~= expected_rev or (cur[2] or '') ~= expected_status then
    return 'CHANGED'
  end
  redis.call('DEL', KEYS[1])
end
for s = 6, #ARGV, 1000 do redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV))) end
if member ~= '' then redis.call('ZADD', KEYS[2], 0, member) end
if owed_field ~= '' then redis.call('HSET', KEYS[3], owed_field, owed) end
return 'OK'
"""

CATCH_UP = """
-- Bring one layout's copy of a job up to a newer revision, whole: only forwards, never over another
-- workspace's record, never backwards (a replayed or late replica write changes nothing).
-- KEYS[1]  the job key
-- KEYS[2]  the workspace's job index (new layout; untouched for the legacy layout)
-- KEYS[3]  the idempotency key of the job's client_request_id in this layout (untouched when none)
local rev = tonumber(ARGV[1])      -- the revision being written
local workspace_id = ARGV[2]
local member = ARGV[3]             -- index member ('' for the legacy layout)
local job_id = ARGV[4]
local ttl = ARGV[5]                -- the idempotency key's lifetime ('' when there is none)
-- then the record as field, value pairs.
-- Returns 'OK', 'BEHIND' (this copy is as new or newer: nothing written) or 'FOREIGN'.
local cur = redis.pcall('HMGET', KEYS[1], 'rev', 'workspace_id')
if type(cur) == 'table' and cur.err then return 'FOREIGN' end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if cur[2] and cur[2] ~= workspace_id then return 'FOREIGN' end
  if (tonumber(cur[1] or '0') or 0) >= rev then return 'BEHIND' end
  redis.call('DEL', KEYS[1])
end
for s = 6, #ARGV, 1000 do redis.call('HSET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV))) end
if member ~= '' then redis.call('ZADD', KEYS[2], 0, member) end
if ttl ~= '' then redis.call('SET', KEYS[3], job_id, 'EX', ttl, 'NX') end
return 'OK'
"""

SETTLE_OUTBOX = """
-- Clear an outbox entry once the write it records is in the other layout, unless a newer write of the
-- same job replaced the entry meanwhile.
-- KEYS[1]  the outbox
local field = ARGV[1]
local entry = ARGV[2]            -- the entry as written
-- Returns 1 when cleared.
if redis.call('HGET', KEYS[1], field) == entry then return redis.call('HDEL', KEYS[1], field) end
return 0
"""
