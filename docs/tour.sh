#!/usr/bin/env bash
# The README's tour, for real: a private Redis seeded as the old system left it (3,000 legacy jobs of three
# workspaces, two broken keys), `relay serve` against it, and the relayctl calls an operator makes.
# Run after `make gen`: docs/tour.sh > docs/tour.txt
set -u
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export XDG_CONFIG_HOME=$work/cfg
redis-server --port "$port" --save "" --appendonly no --dir "$work" --daemonize yes >/dev/null
sleep 0.5
TOUR_REDIS_PORT=$port .venv/bin/python - <<'PY'
import json, uuid, redis
r = redis.Redis(port=int(__import__('os').environ['TOUR_REDIS_PORT']))
p = r.pipeline()
for n in range(3000):
    ws = ["acme", "globex", "initech"][n % 3]
    jid = str(uuid.uuid4())
    p.hset(f"ai:jobs:{jid}", mapping={"job_id": jid, "status": "completed" if n % 2 else "failed",
        "action_provider": "openai", "action_name": "chat", "params": json.dumps({"prompt": "hi"}),
        "workspace_id": ws, "actor_id": "u1", "result": "", "enqueued_at": f"2025-10-{1 + n % 28:02d}T12:00:00"})
p.hset("ai:jobs:broken-1", mapping={"job_id": "broken-1", "status": "pending"})  # no workspace_id
p.set("ai:jobs:not-a-hash", "oops")
p.execute()
PY
export REDIS_URL=redis://127.0.0.1:$port/0 RELAY_LISTEN=127.0.0.1:50651 RELAY_METRICS_LISTEN= AI_JOBS_NEW_SCHEMA=off
.venv/bin/relay serve > "$work/serve.log" 2>&1 &
SERVE=$!
sleep 3
R=.venv/bin/relayctl
quote() { local out="" a; for a in "$@"; do if [[ "$a" =~ [^A-Za-z0-9_./:=,-] ]]; then out+="'$a' "; else out+="$a "; fi; done; echo "${out% }"; }
show() { echo "\$ relayctl $(quote "$@")"; $R "$@" 2>&1; echo "(exit $?)"; echo; }
show stage get
show keys create --workspace acme --scope actions:preview --description "acme dashboards"
ACME=$($R keys create --workspace acme --scope actions:preview | awk '/^api_key/ {print $2}')
echo "\$ relayctl --api-key \$ACME jobs list --page-size 3"; $R --api-key "$ACME" jobs list --page-size 3 2>&1; echo
show stage set dual-write
sleep 3  # replicas see a stage within a second; the controller waits a settle time before trusting it
show jobs execute --provider openai --action chat.completions --params '{"model":"gpt-4o"}' --client-request-id req-1
show stage set read-new
show backfill start --dry-run
show backfill start --execute --rps 2000 --batch 500
show stage set read-new --shadow
show verify
show stage set new-only
sleep 3
show cleanup --dry-run
show cleanup --execute
show stage set legacy-cleaned
show stage set read-new
show reverse-copy --execute
show stage set read-new
show jobs list --page-size 3
echo "\$ relayctl --api-key \$ACME jobs list --page-size 3"; $R --api-key "$ACME" jobs list --page-size 3 2>&1; echo
kill $SERVE; wait $SERVE 2>/dev/null
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1
rm -rf "$work"
