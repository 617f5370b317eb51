# Herald's commands. `just` lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@", so quoted ones stay whole
# (`just bootstrap --tenant acme --name "Acme Corp"`).
set positional-arguments

[private]
default:
    @"{{just_executable()}}" --list

# Start RabbitMQ and PostgreSQL if absent, build, and run every service in the background.
up:
    scripts/up.sh

# Stop the services `just up` started.
down:
    scripts/down.sh

# The mails the local mailbox of `just up` received.
mailbox:
    scripts/mailbox.sh

# Each service's readiness.
status:
    scripts/status.sh

# Follow one service's log (after `just up`).
logs SERVICE:
    tail -f ".local/logs/$1.log"

# Run one service in the foreground.
run SERVICE *ARGS:
    scripts/services.sh
    @"{{just_executable()}}" _bin "$@"

# The whole test suite against the real RabbitMQ and PostgreSQL (installed and started first).
test *ARGS:
    scripts/test.sh "$@"

# Create a tenant (when named) and print a new global admin API key: just bootstrap --tenant acme --name "Acme Corp"
bootstrap *ARGS:
    @"{{just_executable()}}" _bin subscription-api bootstrap "$@"

# Publish a message file to the ingress exchange (checked locally first; `just publish --help`).
publish FILE *ARGS:
    @"{{just_executable()}}" _bin herald publish "$@"

# Show a queue's dead letters with their reasons (they stay in place).
dead-letters QUEUE *ARGS:
    @"{{just_executable()}}" _bin herald dead-letters "$@"

# Run a workspace binary from target/debug (`just up` builds them all), building first only
# when one of its sources (cargo lists them in target/debug/<binary>.d) or the manifests are
# newer than it. Not `cargo run -p`: a build of one package resolves the shared dependencies'
# features for that package alone and recompiles them (and again at the next workspace build),
# and any cargo build would wait behind a running `cargo test` for the build directory lock.
_bin NAME *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    exe=target/debug/$1
    shift
    stale() {
      [ -x "$exe" ] && [ -f "$exe.d" ] || return 0
      local f
      # The .d file is `target: source source ...`, with spaces in paths escaped as `\ `.
      while IFS= read -r f; do
        if [ "$f" -nt "$exe" ]; then return 0; fi
      done < <(printf '%s\n' Cargo.toml Cargo.lock migrations/*
               sed -e 's/^[^:]*: *//' -e 's/\([^\\]\) /\1\n/g' -e 's/\\ / /g' "$exe.d")
      return 1
    }
    if stale; then
      echo "[just] building the workspace's binaries first ($exe is older than its sources)" >&2
      cargo build -q --workspace --bins
    fi
    exec "$exe" "$@"

# Broker baseline: runtime vs plain lapin, publish -> consume -> ack, release build.
bench-broker:
    scripts/services.sh
    cargo run -q --release -p herald-bench --bin bench-broker

# Senders: throughput (email vs Apprise on the same SMTP sink; SMS, Telegram, Discord vs fakes; XMPP vs the local Prosody), Telegram, Discord and Teams at their default limits vs fakes enforcing the providers' limits, the XMPP room pool's fill time, 10,000 WebSocket connections with job-to-frame latency, memory. `just bench-senders --only xmpp` runs one channel.
bench-senders *ARGS:
    scripts/bench-tools.sh
    scripts/prosody.sh
    cargo build -q --release -p sender-email -p sender-sms -p sender-telegram -p sender-discord -p sender-xmpp -p sender-teams -p sender-websocket -p herald-bench
    target/release/bench-senders "$@"

# End to end: producer -> router -> no-op sender -> outcome (rate, p50/p99 at 10% and 50% load, PostgreSQL transactions per notification, ratio to the broker baseline), the REST ingress under wrk, and a 100,000-registration fan-out, release build. HERALD_ROUTER__* and HERALD_AMQP__* try other settings.
bench-e2e *ARGS:
    scripts/bench-tools.sh
    cargo run -q --release -p herald-bench --bin bench-e2e -- "$@"

# Every benchmark.
bench: bench-broker bench-senders bench-e2e

# The fault suite (issue #18): release services against a broker and a database of its own, faults under load, counted at the fake provider. `just chaos --only 1,4`; `just chaos --short` is the CI version; `--write-doc` records the table in docs/reliability.md.
chaos *ARGS:
    scripts/services.sh
    cargo build -q --release -p subscription-api -p fanout-router -p sender-sms -p herald-chaos
    target/release/herald-chaos "$@"

# Regenerate docs/schemas from the message types.
schemas:
    HERALD_UPDATE_SCHEMAS=1 cargo test -q -p messaging-core --test schemas_are_current

# Regenerate docs/openapi.json from the API's routes.
openapi:
    HERALD_UPDATE_OPENAPI=1 cargo test -q -p subscription-api --test openapi committed_document_is_current

fmt:
    cargo fmt --all

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
