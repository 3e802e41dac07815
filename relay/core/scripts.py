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

# Shared by UPDATE_STATUS and CLAIM: the copies of one job a stage uses, and the one that is the truth.
_LIVE_COPIES = """
-- The job's copies in the layouts the stage uses (a legacy record only when it is this workspace's).
local function live_copies(legacy, new, workspace_id, use_legacy, use_new)
  local copies = {}
  if use_legacy and legacy_in_workspace(legacy, workspace_id) then table.insert(copies, legacy) end
  if use_new and is_hash(new) then table.insert(copies, new) end
  return copies
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
  for _, key in ipairs(copies) do redis.call('HSET', key, unpack(fields)) end
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
-- Returns {'OK', revision}, {'NOT_FOUND'} or {'TERMINAL', current status}.
"""
    + _RECORD_HELPERS
    + _LIVE_COPIES
    + """
local copies = live_copies(KEYS[1], KEYS[2], workspace_id, use_legacy, use_new)
if #copies == 0 then return {'NOT_FOUND'} end
local truth, rev = truth_of(copies, KEYS[2], prefer_new)
local current = redis.call('HGET', truth, 'status')
if current == 'completed' or current == 'failed' then return {'TERMINAL', current} end
local changes = {'status', status, 'rev', tostring(rev + 1)}
if status ~= 'running' then
  table.insert(changes, 'finished_at'); table.insert(changes, now)
end
if not redis.call('HGET', truth, 'started_at') then
  table.insert(changes, 'started_at'); table.insert(changes, now)
end
if result_set then table.insert(changes, 'result'); table.insert(changes, result) end
if error_set then table.insert(changes, 'error'); table.insert(changes, error_text) end
write_copies(copies, truth, changes)
return {'OK', tostring(rev + 1)}
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
-- Returns the claimed record as a flat field/value array, or an empty array when it is not claimable.
"""
    + _RECORD_HELPERS
    + _LIVE_COPIES
    + """
redis.call('LREM', KEYS[1], 1, entry)
redis.call('HDEL', KEYS[2], entry)
local copies = live_copies(KEYS[3], KEYS[4], workspace_id, use_legacy, use_new)
if #copies == 0 then return {} end
local truth, rev = truth_of(copies, KEYS[4], prefer_new)
if redis.call('HGET', truth, 'status') ~= 'pending' then return {} end
write_copies(copies, truth, {'status', 'running', 'started_at', now, 'rev', tostring(rev + 1)})
return redis.call('HGETALL', truth)
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


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client (EVALSHA, falling back to EVAL after a Redis restart)."""

    enqueue: AsyncScript
    update_status: AsyncScript
    claim: AsyncScript
    legacy_keys_of_workspace: AsyncScript
    read_records: AsyncScript
    now: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        return cls(
            enqueue=redis.register_script(ENQUEUE),
            update_status=redis.register_script(UPDATE_STATUS),
            claim=redis.register_script(CLAIM),
            legacy_keys_of_workspace=redis.register_script(LEGACY_KEYS_OF_WORKSPACE),
            read_records=redis.register_script(READ_RECORDS),
            now=redis.register_script(NOW),
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

SET_FACTS = """
-- Record facts about completed migration operations, each unless the fact already stored for that
-- field comes from an operation that started later (so a slow old run never overwrites a newer one).
-- KEYS[1]  the migration facts hash
-- ARGV     pairs: field, JSON object with a numeric started_at
for i = 1, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local started = tonumber(cjson.decode(value).started_at) or 0
  local current = redis.call('HGET', KEYS[1], field)
  local newer_stored = false
  if current then
    local ok, old = pcall(cjson.decode, current)
    newer_stored = ok and type(old) == 'table' and (tonumber(old.started_at) or 0) > started
  end
  if not newer_stored then redis.call('HSET', KEYS[1], field, value) end
end
return 1
"""

# Shared by the cleanup and the reverse copy: do two copies of one job hold the same data?
_SAME_DATA = """
-- ``fields`` are the data fields; a missing job_id or workspace_id reads as the job's own, as JobService
-- reads them, and any other missing field as ''.
local function same_data(a, b, fields, job_id, workspace_id)
  for _, f in ipairs(fields) do
    local default = ''
    if f == 'job_id' then default = job_id elseif f == 'workspace_id' then default = workspace_id end
    local va = redis.call('HGET', a, f) or default
    local vb = redis.call('HGET', b, f) or default
    if va ~= vb then return false end
  end
  return true
end
"""

CLEANUP_LEGACY_JOBS = (
    """
-- Delete legacy job keys whose new copy exists and is equal or newer, each decided and deleted here, in
-- one step with the check. Equal revisions count as equal only when the data fields are equal too:
-- writers that do not bump ``rev`` (the old system) could otherwise have changed one copy unseen.
-- Pending jobs are kept: a legacy queue entry may name them, and claimers find their workspace through
-- the legacy record.
-- KEYS[2i-1]  legacy job key i
-- KEYS[2i]    new job key i, built from the workspace_id the legacy record held when it was read
local dry_run = ARGV[1] == '1'          -- classify only, delete nothing
local field_count = tonumber(ARGV[2])   -- ARGV[3 .. 2 + field_count]: the data fields compared
-- then for key i, at ARGV[3 + field_count + 2(i-1)] onwards: workspace_id, job_id
-- Returns one outcome per key: deleted | gone | invalid | missing_new | legacy_newer | differing | pending
"""
    + _RECORD_HELPERS
    + _SAME_DATA
    + """
local fields = {}
for f = 1, field_count do fields[f] = ARGV[2 + f] end
local out = {}
for i = 1, #KEYS / 2 do
  local legacy, new = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 3 + field_count + 2 * (i - 1)
  local workspace_id, job_id = ARGV[a], ARGV[a + 1]
  local outcome
  if redis.call('EXISTS', legacy) == 0 then
    outcome = 'gone'
  elseif not legacy_in_workspace(legacy, workspace_id) then
    outcome = 'invalid'
  elseif not is_hash(new) then
    outcome = 'missing_new'
  else
    local rl, rn = rev_of(legacy), rev_of(new)
    if rl > rn then
      outcome = 'legacy_newer'
    elseif rl == rn and not same_data(legacy, new, fields, job_id, workspace_id) then
      outcome = 'differing'
    elseif redis.call('HGET', new, 'status') == 'pending' then
      outcome = 'pending'
    else
      if not dry_run then redis.call('DEL', legacy) end
      outcome = 'deleted'
    end
  end
  out[i] = outcome
end
return out
"""
)

DRAIN_LEGACY_QUEUE_HEAD = (
    """
-- Remove entries from the head of the legacy pending queue (where claimers take them) whose job is done
-- or gone, stopping at the first entry whose job may still be claimed or that changed since it was read.
-- Claimers drop such entries themselves; this only does it for the ones nobody will claim.
-- KEYS[1]       the legacy pending queue
-- KEYS[2i]      legacy job key of entry i
-- KEYS[2i + 1]  new job key of entry i (the legacy key again when the workspace is not valid)
local dry_run = ARGV[1] == '1'         -- count only: walk the entries in place, remove nothing
local offset = tonumber(ARGV[2])       -- dry run: the position of the first entry (0 otherwise)
-- then for entry i, at ARGV[3 + 3(i-1)] onwards: the entry as read, the legacy record's workspace_id as
-- read ('' when missing), '1' when that workspace_id and the entry are a valid job's
-- Returns {entries removed, 'pending' | 'changed' | 'done'}.
"""
    + _RECORD_HELPERS
    + """
local removed = 0
for i = 1, (#KEYS - 1) / 2 do
  local legacy, new = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 3 + 3 * (i - 1)
  local entry, workspace_id, valid = ARGV[a], ARGV[a + 1], ARGV[a + 2] == '1'
  local position = 0
  if dry_run then position = offset + i - 1 end
  if redis.call('LINDEX', KEYS[1], position) ~= entry then return {removed, 'changed'} end
  if is_hash(legacy) then
    if (redis.call('HGET', legacy, 'workspace_id') or '') ~= workspace_id then return {removed, 'changed'} end
    if valid then
      local truth, rev = legacy, rev_of(legacy)
      if is_hash(new) and rev_of(new) >= rev then truth = new end
      if redis.call('HGET', truth, 'status') == 'pending' then return {removed, 'pending'} end
    end
  end
  if not dry_run then redis.call('LPOP', KEYS[1]) end
  removed = removed + 1
end
return {removed, 'done'}
"""
)

REVERSE_COPY = (
    """
-- Copy new-layout records back to the legacy layout where the legacy copy is missing or older (a lower
-- rev), replacing it whole. Never overwrites a legacy record of another workspace, a key that is not a
-- hash, a newer legacy record, or one with the same rev and other data (reported instead).
-- KEYS[2i-1]  new job key i
-- KEYS[2i]    legacy job key i
local dry_run = ARGV[1] == '1'          -- classify only, write nothing
local field_count = tonumber(ARGV[2])   -- ARGV[3 .. 2 + field_count]: the data fields compared
-- then for key i, at ARGV[3 + field_count + 2(i-1)] onwards: workspace_id, job_id
-- Returns one outcome per key: copied | unchanged | legacy_newer | differing | invalid | gone
"""
    + _RECORD_HELPERS
    + _SAME_DATA
    + """
local fields = {}
for f = 1, field_count do fields[f] = ARGV[2 + f] end
local out = {}
for i = 1, #KEYS / 2 do
  local new, legacy = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 3 + field_count + 2 * (i - 1)
  local workspace_id, job_id = ARGV[a], ARGV[a + 1]
  local outcome = 'copied'
  if not is_hash(new) then
    outcome = 'gone'
  elseif redis.call('EXISTS', legacy) == 1 then
    if not legacy_in_workspace(legacy, workspace_id) then
      outcome = 'invalid'
    else
      local rl, rn = rev_of(legacy), rev_of(new)
      if rl > rn then
        outcome = 'legacy_newer'
      elseif rl == rn then
        outcome = 'differing'
        if same_data(legacy, new, fields, job_id, workspace_id) then outcome = 'unchanged' end
      end
    end
  end
  if outcome == 'copied' and not dry_run then
    local record = redis.call('HGETALL', new)
    redis.call('DEL', legacy)
    redis.call('HSET', legacy, unpack(record))
    -- JobService finds a legacy record's workspace through this field.
    redis.call('HSETNX', legacy, 'workspace_id', workspace_id)
    redis.call('HSETNX', legacy, 'job_id', job_id)
  end
  out[i] = outcome
end
return out
"""
)

# --- backfill ------------------------------------------------------------------------------------
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

COPY_BATCH = """
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
-- Returns {'OK', outcomes, <counts and controls when executing>}, {'STALE'} when an item changed since
-- it was read (nothing written: read the batch again) or {'FENCED'} when this run no longer owns the
-- backfill. Outcomes hold one letter per item, candidates then the others: m migrated, e exists,
-- n newer, i invalid, v vanished (deleted since the scan), x error (the new key or the index holds
-- another type).
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
      elseif redis.call('EXISTS', new_key) == 0 then
        out, act = 'm', 1
      else
        local theirs = redis.pcall('HGET', new_key, 'rev')
        if type(theirs) == 'table' then
          out = 'x'  -- the new key is not a hash
        else
          local mine = tonumber(r[3] or '0') or 0
          theirs = tonumber(theirs or '0') or 0
          if theirs < mine then out, act = 'm', 2
          elseif theirs == mine then out, act = 'e', 3
          else out, act = 'n', 3 end
        end
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
if dry then return {'OK', letters} end

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
    if act ~= 3 then  -- 1 copy, 2 replace an older copy (whole), 3 index only
      if act == 2 then redis.call('DEL', new_key) end
      local flat = redis.call('HGETALL', legacy)
      -- in slices, so a record with thousands of fields stays within Lua's unpack limit
      for s = 1, #flat, 1000 do redis.call('HSET', new_key, unpack(flat, s, math.min(s + 999, #flat))) end
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
if n_fields > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 9, 8 + 2 * n_fields)) end
local reply = redis.call('HMGET', KEYS[1], unpack(COUNTS))
table.insert(reply, 1, letters)
table.insert(reply, 1, 'OK')
return reply
"""

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
redis.call('HSET', KEYS[3], unpack(ARGV, 4))
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
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
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
redis.call('HSET', KEYS[1], 'run_id', run_id, unpack(ARGV, 4))
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
