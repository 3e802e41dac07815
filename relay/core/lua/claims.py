"""The claim rotation: per-workspace queues, and a fair way for ClaimJob to find pending work.

Every workspace has its own FIFO queue in its own slot (``KeyLayout.queue``); the legacy queue is one more
queue on the legacy store. A sorted set in Relay's global slot (``KeyLayout.ready``) names the queues that
may hold work, scored by when a claimer last served them: a claimer serves the least recently served
queue, so a busy workspace never starves a quiet one. A claimer that finds a workspace's queue empty drops
it from the rotation only if nothing was pushed since it looked (the queue's sequence number) and no
Execute is between its steps, so that no pending job is ever left in a queue that nobody visits.
"""

from __future__ import annotations

from relay.core.keys import LEGACY_QUEUE_MEMBER

ROTATE = f"""
-- Pick the queue to serve next: the least recently served one, now marked as served.
-- KEYS[1]  the ready rotation (sorted set: queue name -> when last served, micros)
-- KEYS[2]  the ready sequences (hash: queue name -> its queue sequence when last seen, and
--          <queue name>:inflight -> Executes between their steps)
-- Returns {{queue name, its sequence as last seen ('' when unknown)}}, or {{}} when no queue is ready.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The legacy queue is always in the rotation: the old system pushes to it without telling anyone.
redis.call('ZADD', KEYS[1], 'NX', 0, '{LEGACY_QUEUE_MEMBER}')
local pick = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if not pick then return {{}} end
redis.call('ZADD', KEYS[1], 'XX', now, pick)
return {{pick, redis.call('HGET', KEYS[2], pick) or ''}}
"""

TAKE = """
-- Put back the entries of this queue's claimers that died (taken at least ``timeout`` seconds ago,
-- oldest first, at most ``max_recovered``) at the head of the queue, then move the head to the claiming
-- list, noting when, so that it can be put back if its claimer dies before marking the job.
-- KEYS[1]  the pending queue (job ids, or <workspace_id>:<job_id> in queues of older Relays)
-- KEYS[2]  the claiming list (oldest claim at the head)
-- KEYS[3]  the claim times hash (entry -> Redis TIME in seconds)
-- KEYS[4]  the queue's sequence (pushes ever made; absent for the legacy queue)
local timeout = tonumber(ARGV[1])
local max_recovered = tonumber(ARGV[2])
-- Returns {entry or '', the queue's sequence, entries still claiming}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for _ = 1, max_recovered do
  local entry = redis.call('LINDEX', KEYS[2], 0)
  if not entry then break end
  local taken = tonumber(redis.call('HGET', KEYS[3], entry))
  if not taken then
    -- Left by a claimer that kept no time: its timeout starts now.
    redis.call('HSET', KEYS[3], entry, tostring(now))
    break
  end
  if now - taken < timeout then break end
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[3], entry)
  redis.call('LPUSH', KEYS[1], entry)
end
local seq = redis.call('GET', KEYS[4]) or '0'
local entry = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if entry then redis.call('HSET', KEYS[3], entry, tostring(now)) end
return {entry or '', seq, redis.call('LLEN', KEYS[2])}
"""

FORGET_CLAIM = """
-- Forget a claiming entry: its job is marked running, or there is no claimable job behind it.
-- KEYS[1]  the claiming list
-- KEYS[2]  the claim times hash
local entry = ARGV[1]
redis.call('LREM', KEYS[1], 1, entry)
redis.call('HDEL', KEYS[2], entry)
return 1
"""

DROP_READY = f"""
-- Drop a workspace whose queue was found empty from the rotation, unless something was pushed since
-- (its sequence moved on) or an Execute is between its steps.
-- KEYS[1]  the ready rotation
-- KEYS[2]  the ready sequences
local name = ARGV[1]
local seen = tonumber(ARGV[2])   -- the queue's sequence when it was found empty
-- Returns 1 when dropped.
if name == '{LEGACY_QUEUE_MEMBER}' then return 0 end
if tonumber(redis.call('HGET', KEYS[2], name .. ':inflight') or '0') > 0 then return 0 end
local known = tonumber(redis.call('HGET', KEYS[2], name) or '0') or 0
if known > seen then return 0 end
redis.call('ZREM', KEYS[1], name)
redis.call('HDEL', KEYS[2], name)
return 1
"""

MARK_READY = """
-- Before (begin = '1') and after (begin = '0') an Execute of a split topology pushes to a workspace's
-- queue in another slot: while one is between its steps the workspace is never dropped, and after it the
-- rotation knows the queue's sequence. An Execute that dies between its steps leaves the workspace in
-- the rotation for good, which costs a look at an empty queue, never a lost job.
-- KEYS[1]  the ready rotation
-- KEYS[2]  the ready sequences
local name = ARGV[1]
local begin = ARGV[2] == '1'
local seq = tonumber(ARGV[3])    -- after: the queue's sequence the Execute reached
redis.call('ZADD', KEYS[1], 'NX', 0, name)
if begin then
  redis.call('HINCRBY', KEYS[2], name .. ':inflight', 1)
else
  local left = redis.call('HINCRBY', KEYS[2], name .. ':inflight', -1)
  if left <= 0 then redis.call('HDEL', KEYS[2], name .. ':inflight') end
  local known = tonumber(redis.call('HGET', KEYS[2], name) or '0') or 0
  if seq > known then redis.call('HSET', KEYS[2], name, seq) end
end
return 1
"""
