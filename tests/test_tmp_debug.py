import json
import pytest
from relay.core.keys import KEYS
from relay.v1 import backfill_pb2 as bpb
from tests.backfill_support import events_of, seed_clean

@pytest.mark.parametrize("n", range(16))
async def test_dbg(relay, redis, keys, n):
    await seed_clean(redis, 3000)
    runs = []
    for _ in range(3):
        ev = await events_of(relay.controller.StartBackfill(bpb.StartBackfillRequest(batch_size=250, max_keys=1000), metadata=keys.md("admin")))
        h = await redis.hgetall(KEYS.backfill(ev[-1].backfill_id))
        runs.append({k.decode(): v.decode()[:100] for k, v in h.items() if k in (b"start_cursor", b"resume_cursor", b"scanned", b"migrated", b"skipped_exists", b"batches", b"cursor")} | {"nskip": len(json.loads(h[b"skip_keys"])), "nresume": len(json.loads(h[b"resume_skip"]))})
    print(runs)
    assert all(r["skipped_exists"] == "0" for r in runs)
