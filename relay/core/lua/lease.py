"""Lease scripts: renew or release a lease only while its holder still owns it."""

from __future__ import annotations

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
