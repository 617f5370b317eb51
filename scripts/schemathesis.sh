#!/usr/bin/env bash
# Fuzzes the REST API against the OpenAPI document it serves (schemathesis, every check):
# a 5xx is an API bug, and a request the document calls valid but the API refuses (or the
# reverse) means the document does not say what the API enforces. Zero failures allowed.
#
# What it does, each run from scratch:
#   1. a venv with a pinned schemathesis in .local/venv-schemathesis (made once, kept);
#   2. a fresh database on the local PostgreSQL (127.0.0.1:5432, user postgres);
#   3. target/debug/subscription-api on a free loopback port, with a tenant and a global
#      admin key from `subscription-api bootstrap`, and rate limits raised so the fuzzer is
#      not throttled (the 429s are tested in tests/, not here);
#   4. `st run` against /api/openapi.json with a bounded number of examples;
#   5. stops the API and drops the database, also when interrupted.
#
# Environment: ST_MAX_EXAMPLES (default 30), ST_SEED (default 1: the same cases each run,
# so a failure reproduces; set another number to explore), ST_ARGS (more `st run` options,
# for example `--include-path-regex /messages`).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
venv=.local/venv-schemathesis
st=$venv/bin/st

# 1. The venv. Debian 12's system pip refuses to install (PEP 668), so it is a venv, and
# Debian ships the venv module separately.
if ! "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "schemathesis: installing python3-venv"
    if [ "$(id -u)" -eq 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q python3-venv >/dev/null ||
      { DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q python3-venv >/dev/null; }
  fi
  mkdir -p .local
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  echo "schemathesis: installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The binary: built by the tests already in `just test`; this is a no-op then.
cargo build -q -p subscription-api
api_bin=target/debug/subscription-api

# 2. A database of its own, and a topology prefix of its own that the test-topology cleaner
# removes (`t-`), so nothing this run leaves touches the local `herald` service.
run_id="st_$(date +%s)_$$"
db_name="herald_$run_id"
db_server=postgres://postgres@127.0.0.1:5432
createdb -h 127.0.0.1 -U postgres "$db_name"
work=$(mktemp -d)
api_pid=
cleanup() {
  if [ -n "$api_pid" ] && kill -0 "$api_pid" 2>/dev/null; then
    kill -TERM "$api_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$api_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$api_pid" 2>/dev/null || true
    wait "$api_pid" 2>/dev/null || true
  fi
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db_name" || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export HERALD_DATABASE__URL="$db_server/$db_name"
export HERALD_HTTP__ADDR="127.0.0.1:$port"
export HERALD_AMQP__URL="${HERALD_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export HERALD_AMQP__PREFIX="t-$run_id"
export HERALD_API__CALLER_PER_MINUTE=1000000
export HERALD_API__TRIGGER_PER_MINUTE=1000000
# The fuzzer sends thousands of requests without a valid credential from one address: the
# failed-login limit would answer everything after the first 60 with 429.
export HERALD_API__IP_FAILURES_PER_MINUTE=0
export HERALD_API__TENANT_MESSAGES_PER_MINUTE=0
export HERALD_API__TENANT_RECIPIENTS_PER_MINUTE=0
# Issue #17's caps would turn schema-valid requests into 422 and 429 after a few cases: the
# fuzzer checks shapes, the route tests check the caps.
export HERALD_API__ADDRESSES_PER_CHANNEL=1000000
export HERALD_API__REGISTRATIONS_PER_USER=1000000
export HERALD_API__SMS_COUNTRY_CODES=1,2,3,4,5,6,7,8,9
export HERALD_VERIFICATION__PER_ADDRESS_PER_DAY=1000000
export HERALD_VERIFICATION__PER_TENANT_PER_HOUR=1000000
export HERALD_VERIFICATION__CODE_SECRET="schemathesis-codes-$run_id"
# Configured, as a deployment with the WebSocket channel is: unconfigured, the token route
# answers 503 by design, which schemathesis counts as a server error.
export HERALD_WEBSOCKET__TOKEN_SECRET="schemathesis-$run_id"
export HERALD_LOG__FILTER="${HERALD_LOG__FILTER:-warn}"

# 3. Tenant and key, then the API.
key=$("$api_bin" bootstrap --tenant fuzz --name Fuzz | grep -o 'hk_[A-Za-z0-9]*' | tail -n 1)
[ -n "$key" ] || { echo "schemathesis: bootstrap printed no key" >&2; exit 1; }
"$api_bin" >"$work/api.log" 2>&1 &
api_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fsS -o /dev/null "$base/api/openapi.json" 2>/dev/null && break
  kill -0 "$api_pid" 2>/dev/null || { cat "$work/api.log" >&2; exit 1; }
  sleep 0.2
done

# 4. The fuzzer. NUL characters are left out: PostgreSQL cannot store them in text or jsonb,
# and the API answers them with 422 `Invalid` from the database. The stateful phase is left
# out: it infers links only from the `Location` of a 202, and 4.32.5 pins that one to the
# wrong operation ("Invalid OpenAPI Links Definition"). `--checks all` with positive and negative data: the document must say every
# rule the API enforces, and nothing the API does not. The key is given per security scheme
# (both take an API key), not as a plain header, so that the `ignored_auth` check knows which
# credential to leave out or spoil; a plain header would stay valid beside the spoilt one.
export HERALD_ST_KEY="$key"
cat >"$work/schemathesis.toml" <<'TOML'
headers = { Herald-Tenant = "fuzz" }
# Every check (`--checks all`, set here so that the operations below can turn one off).
[checks]
enabled = true
[auth.openapi.apiKey]
api_key = "${HERALD_ST_KEY}"
[auth.openapi.bearer]
bearer = "${HERALD_ST_KEY}"

# Rules a JSON Schema cannot state, so a schema-valid request may still get 422 here; every
# other check still runs on these operations. Each is checked by the route tests instead.
# Cron syntax and IANA time zones (schedules):
[[operations]]
include-path-regex = "/schedules"
checks.positive_data_acceptance.enabled = false
# Template syntax, checked when written:
[[operations]]
include-path-regex = "/templates/"
checks.positive_data_acceptance.enabled = false
# A key's role depends on Herald-Tenant, and `userId` on the role:
[[operations]]
include-path-regex = "/api-keys$"
checks.positive_data_acceptance.enabled = false
# `deliveryMode: preferred` needs `preferredChannel`:
[[operations]]
include-path-regex = "/users/[^/]+$"
checks.positive_data_acceptance.enabled = false
# A registration names one of the person's proven addresses, and a code must match the one
# sent (issue #17): state, not shape.
[[operations]]
include-path-regex = "/(subscribe|verify|verification)$"
checks.positive_data_acceptance.enabled = false
[[operations]]
include-path-regex = "/verify/"
checks.positive_data_acceptance.enabled = false
# An SMS number must have one of the tenant's country codes, which the fuzzer itself sets
# through PUT /tenants/{tenant}/sms-country-codes (state, not shape):
[[operations]]
include-path-regex = "/addresses$"
checks.positive_data_acceptance.enabled = false
# `address` needs `channel`:
[[operations]]
include-path-regex = "/unsubscribe$"
checks.positive_data_acceptance.enabled = false
# An Idempotency-Key used before with another request is refused (state, not shape):
[[operations]]
include-path-regex = "/(messages|trigger/[^/]+)$"
checks.positive_data_acceptance.enabled = false
# The staff subscription must exist in the tenant (state, not shape):
[[operations]]
include-path-regex = "/support/settings$"
checks.positive_data_acceptance.enabled = false
# Help-desk rooms come from the XMPP bot's pool, and no bot runs here: a staff member's
# request finds the pool empty (503 `no-free-room` with Retry-After, by design), a client's
# finds no staff member waiting (409 `no-staff-available`). State, not shape; both answers
# are documented, and every other check still runs.
[[operations]]
include-path-regex = "/help-desk/rooms/staff$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
checks.positive_data_acceptance.enabled = false
[[operations]]
include-path-regex = "/help-desk/rooms/client$"
checks.positive_data_acceptance.enabled = false
TOML
status=0
# One worker: with two, a run once ended in a "Runtime Error" inside schemathesis itself (a
# KeyError in hypothesis's lambda-description cache, probably because the worker threads
# share it), though the API did nothing wrong. One worker took as long here (78 s).
# shellcheck disable=SC2086 # ST_ARGS is a list of options
"$st" --config-file "$work/schemathesis.toml" --no-color run "$base/api/openapi.json" \
  --max-examples "${ST_MAX_EXAMPLES:-30}" \
  --seed "${ST_SEED:-1}" \
  --generation-database none \
  --generation-allow-x00 false \
  --phases examples,coverage,fuzzing \
  --workers "${ST_WORKERS:-1}" \
  --request-timeout 10 \
  ${ST_ARGS:-} || status=$?
if grep -q 'ERROR\|panicked' "$work/api.log"; then
  echo "schemathesis: the API logged errors:" >&2
  grep 'ERROR\|panicked' "$work/api.log" | head -n 20 >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
