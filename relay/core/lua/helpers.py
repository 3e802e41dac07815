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
local function rev_of(key)
  return tonumber(redis.call('HGET', key, 'rev') or '0') or 0
end
"""
