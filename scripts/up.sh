#!/usr/bin/env bash
# `just up`: local services, a build, and every Herald service in the background.
# Logs go to .local/logs/<service>.log, pids to .local/pids/. `just down` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/herald-services.sh

scripts/services.sh
mkdir -p .local/logs .local/pids .local/mail

# A local mailbox, so the email sender has somewhere to deliver (`just mailbox` reads it).
# An operator's own HERALD_SMTP__* settings win.
if [ -z "${HERALD_SMTP__HOST:-}" ]; then
  sinkpid=.local/pids/smtp-sink.pid
  if ! { [ -f "$sinkpid" ] && kill -0 "$(cat "$sinkpid")" 2>/dev/null; }; then
    nohup python3 crates/herald-testkit/scripts/smtp_sink.py --port 1025 --maildir .local/mail \
      >.local/logs/smtp-sink.log 2>&1 &
    echo $! >"$sinkpid"
    echo "[up] started the local SMTP mailbox on 127.0.0.1:1025 (just mailbox)" >&2
  fi
  export HERALD_SMTP__HOST=127.0.0.1 HERALD_SMTP__PORT=1025 HERALD_SMTP__TLS=none
  export HERALD_SMTP__FROM="${HERALD_SMTP__FROM:-Herald <noreply@herald.local>}"
fi

# The API's database (HERALD_DATABASE__URL defaults to .../herald); migrations run at start.
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'herald'" | grep -q 1; then
  createdb -h 127.0.0.1 -U postgres herald
  echo "[up] created database herald" >&2
fi

# Legacy messages ({"title", "body", "sender"}, R41) go to one person's addresses on their
# channel. Locally that is the person `operator` of tenant `local`, whose email address is
# seeded below, so `just publish docs/examples/first-message.json` lands in `just mailbox`.
export HERALD_ROUTER__LEGACY_TENANT="${HERALD_ROUTER__LEGACY_TENANT:-local}"
export HERALD_ROUTER__LEGACY_USER="${HERALD_ROUTER__LEGACY_USER:-operator}"

echo "[up] building" >&2
cargo build -q --workspace --bins

for entry in "${HERALD_SERVICES[@]}"; do
  name=${entry%%=*}
  pidfile=.local/pids/$name.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "[up] $name already running (pid $(cat "$pidfile"))" >&2
    continue
  fi
  nohup "target/debug/$name" >".local/logs/$name.log" 2>&1 &
  echo $! >"$pidfile"
  echo "[up] started $name (pid $!), log .local/logs/$name.log" >&2
done

# Wait until each service answers and is ready, but not for ones that answer "not ready"
# for a reason that waiting does not fix (a sender without credentials): status says why.
for entry in "${HERALD_SERVICES[@]}"; do
  name=${entry%%=*}
  addr=${entry#*=}
  for _ in $(seq 1 60); do
    body=$(curl -sS --max-time 2 -w '\n%{http_code}' "http://$addr/readyz" 2>/dev/null) || body=""
    if [ "${body##*$'\n'}" = 200 ] || printf '%s' "$body" | grep -q 'not configured'; then break; fi
    sleep 0.5
  done
done
# The local default destination (idempotent; needs the migrations the API applied).
psql -q -h 127.0.0.1 -U postgres -d herald -v ON_ERROR_STOP=1 \
  -v tenant="$HERALD_ROUTER__LEGACY_TENANT" -v person="$HERALD_ROUTER__LEGACY_USER" >/dev/null <<'SQL' \
  || echo "[up] could not seed the local legacy destination (is the API up?)" >&2
INSERT INTO tenants (id, key, name) VALUES (gen_random_uuid(), :'tenant', 'Local')
  ON CONFLICT (key) DO NOTHING;
INSERT INTO users (id, tenant_id, external_id)
  SELECT gen_random_uuid(), id, :'person' FROM tenants WHERE key = :'tenant'
  ON CONFLICT (tenant_id, external_id) DO NOTHING;
INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified)
  SELECT gen_random_uuid(), u.tenant_id, u.id, 'email', 'email', 'operator@herald.local', true
  FROM users u JOIN tenants t ON t.id = u.tenant_id
  WHERE t.key = :'tenant' AND u.external_id = :'person'
  -- A local mailbox that failed once (say, while the sink was down) is marked unreachable
  -- (R6); `just up` makes it usable again.
  ON CONFLICT (user_id, kind, value) DO UPDATE
    SET state = 'active', state_reason = NULL, failure_count = 0, failure_streak_started_at = NULL;
SQL

scripts/status.sh
