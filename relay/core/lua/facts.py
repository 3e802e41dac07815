"""The script that records completed migration operations, newest start wins."""

from __future__ import annotations

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
