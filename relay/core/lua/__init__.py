"""Relay's Lua scripts, one module per family, and the one registry every caller goes through.

Every key a script touches arrives in KEYS (so a Redis Cluster layout can route them); every ARGV is
named at the top of its script; each script's KEYS/ARGV builder sits beside it.
"""

from relay.core.lua.registry import ALL_SCRIPTS, LuaScripts

__all__ = ["ALL_SCRIPTS", "LuaScripts"]
