"""Sweep scripts: the cleanup of legacy keys and the reverse copy (new layout back to legacy).

Scripts never trust a legacy key to be a hash: messy data is reported, never an error inside Redis.
"""

from __future__ import annotations

from relay.core.lua.helpers import RECORD_HELPERS as _RECORD_HELPERS

# Shared by the cleanup and the reverse copy, which walk pairs of copies of one job with the same ARGV:
# ARGV[2] the number of data fields, ARGV[3 ..] those fields, then workspace_id and job_id of each pair.
_JOB_PAIRS = """
local function data_fields(field_count)
  local fields = {}
  for f = 1, field_count do fields[f] = ARGV[2 + f] end
  return fields
end
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
-- The outcome decide(KEYS[2i-1], KEYS[2i], workspace_id, job_id) of each key pair i, in order, then how
-- long the script ran in micros by Redis' clock (the controller sizes batches by it: a wall time taken by
-- a busy client holds its own event loop's lag, and shrank batches to one key under load).
local function outcome_per_pair(field_count, decide)
  local started = redis.call('TIME')
  local out = {}
  for i = 1, #KEYS / 2 do
    local a = 3 + field_count + 2 * (i - 1)
    out[i] = decide(KEYS[2 * i - 1], KEYS[2 * i], ARGV[a], ARGV[a + 1])
  end
  local ended = redis.call('TIME')
  out[#out + 1] = (ended[1] - started[1]) * 1000000 + (ended[2] - started[2])
  return out
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
-- Returns one outcome per key: deleted | gone | invalid | missing_new | foreign_new | legacy_newer |
-- differing | pending; then the script's run time in micros
"""
    + _RECORD_HELPERS
    + _JOB_PAIRS
    + """
local fields = data_fields(field_count)
return outcome_per_pair(field_count, function(legacy, new, workspace_id, job_id)
  if redis.call('EXISTS', legacy) == 0 then return 'gone' end
  if not legacy_in_workspace(legacy, workspace_id) then return 'invalid' end
  if not is_hash(new) then return 'missing_new' end
  -- The new key holds another workspace's record: no copy of this job.
  if not new_in_workspace(new, workspace_id) then return 'foreign_new' end
  local rl, rn = rev_of(legacy), rev_of(new)
  if rl > rn then return 'legacy_newer' end
  if rl == rn and not same_data(legacy, new, fields, job_id, workspace_id) then return 'differing' end
  if redis.call('HGET', new, 'status') == 'pending' then return 'pending' end
  if not dry_run then redis.call('DEL', legacy) end
  return 'deleted'
end)
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
      if new_in_workspace(new, workspace_id) and rev_of(new) >= rev then truth = new end
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
-- Returns one outcome per key: copied | unchanged | legacy_newer | differing | invalid | foreign_new | gone;
-- then the script's run time in micros
"""
    + _RECORD_HELPERS
    + _JOB_PAIRS
    + """
local fields = data_fields(field_count)
return outcome_per_pair(field_count, function(new, legacy, workspace_id, job_id)
  if not is_hash(new) then return 'gone' end
  -- Another workspace's record under this workspace's key: never copied.
  if not new_in_workspace(new, workspace_id) then return 'foreign_new' end
  if redis.call('EXISTS', legacy) == 1 then
    if not legacy_in_workspace(legacy, workspace_id) then return 'invalid' end
    local rl, rn = rev_of(legacy), rev_of(new)
    if rl > rn then return 'legacy_newer' end
    if rl == rn then
      if same_data(legacy, new, fields, job_id, workspace_id) then return 'unchanged' end
      return 'differing'
    end
  end
  if not dry_run then put_legacy(legacy, workspace_id, job_id, redis.call('HGETALL', new)) end
  return 'copied'
end)
"""
)

# --- backfill ------------------------------------------------------------------------------------
