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
local_mailbox=0
if [ -z "${HERALD_SMTP__HOST:-}" ]; then
  local_mailbox=1
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

# The XMPP bot on the local Prosody that scripts/services.sh started (127.0.0.1:15222, the
# account herald@localhost): any XMPP client can log in there with an account made by
# `prosodyctl --config "$PWD/.local/prosody/prosody.cfg.lua" register NAME localhost PW`.
# An operator's own HERALD_XMPP__* settings win.
if [ -z "${HERALD_XMPP__JID:-}" ]; then
  export HERALD_XMPP__JID=herald@localhost
  export HERALD_XMPP__PASSWORD="${HERALD_XMPP_TEST_BOT_PASSWORD:-herald-bot-pw}"
  export HERALD_XMPP__SERVER="127.0.0.1:${HERALD_XMPP_TEST_PORT:-15222}" HERALD_XMPP__TLS=none
  export HERALD_XMPP__MUC_SERVICE=conference.localhost
fi

# Exports VAR as the secret kept in .local/FILE, made once (32 random bytes, hex) and kept
# (.local is not committed), unless the operator set VAR.
local_secret() {
  local var=$1 file=.local/$2
  [ -z "${!var:-}" ] || return 0
  mkdir -p .local
  if [ ! -s "$file" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  fi
  export "$var=$(cat "$file")"
}
# The WebSocket channel: the API signs client tokens with it and sender-websocket checks them.
local_secret HERALD_WEBSOCKET__TOKEN_SECRET websocket-secret
# The key verification and link codes are hashed with (issue #17), by the API and the
# router: kept, so a code sent before a restart still works after it.
local_secret HERALD_VERIFICATION__CODE_SECRET code-secret

# Locally no SMS provider is configured (sender-sms says so in its /readyz), so no SMS leaves
# this machine: numbers of every country may be added to try the API. A real deployment
# names its own list (docs/configuration.md, `api`).
export HERALD_API__SMS_COUNTRY_CODES="${HERALD_API__SMS_COUNTRY_CODES:-1,2,3,4,5,6,7,8,9}"

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

# Every binary of the workspace, the `herald` CLI and `subscription-api bootstrap` included,
# so `just publish` and `just bootstrap` run them as built here without compiling.
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
INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified, verified_at,
                       verified_how, verified_by)
  SELECT gen_random_uuid(), u.tenant_id, u.id, 'email', 'email', 'operator@herald.local', true,
         now(), 'import', 'just up'
  FROM users u JOIN tenants t ON t.id = u.tenant_id
  WHERE t.key = :'tenant' AND u.external_id = :'person'
  -- A local mailbox that failed once (say, while the sink was down) is marked unreachable
  -- (R6); `just up` makes it usable again.
  ON CONFLICT (user_id, kind, value) DO UPDATE
    SET state = 'active', state_reason = NULL, failure_count = 0, failure_streak_started_at = NULL;
SQL

# A ready API key for the next steps printed below: a global admin key, minted once and kept
# in .local/api-key (.local is not committed), so every `just up` prints the same key rather
# than adding another. A stored key the API refuses (the database was dropped since) is
# replaced; one that cannot be checked (the API is down) is kept.
api=http://127.0.0.1:8080
keyfile=.local/api-key
key=$(cat "$keyfile" 2>/dev/null || true)
if [ -n "$key" ]; then
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $key" \
    -H "Herald-Tenant: local" "$api/api/messaging/subscriptions" 2>/dev/null) || code=000
  if [ "$code" = 401 ]; then key=""; fi
fi
if [ -z "$key" ]; then
  if out=$(target/debug/subscription-api bootstrap --tenant local --name Local); then
    key=$(printf '%s\n' "$out" | grep -o 'hk_[[:alnum:]]*' | tail -n 1 || true)
  fi
  if [ -n "$key" ]; then
    (umask 077 && printf '%s\n' "$key" >"$keyfile")
    echo "[up] created a global admin API key, kept in $keyfile" >&2
  else
    echo "[up] could not create an API key (see above); \`just bootstrap\` makes one" >&2
  fi
fi

scripts/status.sh

if [ "${HERALD_ROUTER__STRICT_PRODUCERS:-false}" != true ]; then
  cat <<EOF

Open producers: any broker user may publish requests for any tenant (a broker on loopback).
In production, give each producer its own broker user, bind it to its tenant
(PUT /api/messaging/tenants/{tenant}/broker-producers/{user}) and set
HERALD_ROUTER__STRICT_PRODUCERS=true: docs/security.md.
EOF
fi

cat <<EOF

Herald is running. Things to try next (\`just\` works in place of \`./run\`):
  ./run publish docs/examples/first-message.json   publish a message to herald.ingress
EOF
if [ "$local_mailbox" = 1 ]; then
  echo "  ./run mailbox                                     the mail it became, in the local mailbox"
fi
cat <<EOF
  ./run status | ./run logs <service> | ./run down  readiness, a service's log, stop everything

  API:     $api/api/messaging   (OpenAPI: $api/api/openapi.json, docs/api.md)
  API key: ${key:-none, see above}   (global admin: name the tenant with Herald-Tenant)
  curl -s $api/api/messaging/subscriptions \\
    -H "Authorization: Bearer ${key:-hk_...}" -H "Herald-Tenant: local"
EOF
