"""relayctl stage: shows and changes stages, clears an override, and reports a refused move with its
reason."""

from __future__ import annotations

from relay.core.stages import Stage
from tests.migration_testkit import relayctl


async def test_stage_get_set_and_a_refusal_through_the_cli(start_relay, keys):
    relay = await start_relay(stage=Stage.LEGACY_ONLY)
    admin = keys.raw["admin"]
    code, out, _ = await relayctl(relay.target, admin, "stage", "get")
    assert code == 0 and "LEGACY_ONLY" in out and "environment" in out
    code, out, _ = await relayctl(relay.target, admin, "stage", "set", "dual-write", "--workspace", "ws-a")
    assert (code, out.strip()) == (0, "workspace ws-a: LEGACY_ONLY -> DUAL_WRITE, version 1")
    code, _, err = await relayctl(relay.target, admin, "stage", "set", "READ_NEW", "--workspace", "ws-a")
    assert code == 3
    assert err.startswith("error: FAILED_PRECONDITION [BACKFILL_REQUIRED]: workspace ws-a began dual-write")
    code, _, err = await relayctl(relay.target, admin, "stage", "set", "sideways")
    assert code == 2 and "legacy-only, dual-write" in err


async def test_stage_clear_puts_a_workspace_back_on_the_global_default(start_relay, keys):
    relay = await start_relay(stage=Stage.LEGACY_ONLY)
    admin = keys.raw["admin"]
    # An override may be cleared only where it agrees with the global default (else data would hide).
    assert (await relayctl(relay.target, admin, "stage", "set", "legacy-only", "--workspace", "ws-a"))[0] == 0
    code, out, _ = await relayctl(relay.target, admin, "stage", "clear", "--workspace", "ws-a")
    assert (code, out.strip()) == (0, "workspace ws-a follows the global default: LEGACY_ONLY")
    code, out, _ = await relayctl(relay.target, admin, "stage", "get", "--workspace", "ws-a", "--json")
    assert code == 0 and '"inherited": true' in out
