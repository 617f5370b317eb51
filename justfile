# Herald's commands. `just` lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

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
    tail -f .local/logs/{{SERVICE}}.log

# Run one service in the foreground.
run SERVICE:
    scripts/services.sh
    cargo run -p {{SERVICE}}

# The whole test suite against the real RabbitMQ and PostgreSQL.
test *ARGS:
    scripts/test.sh {{ARGS}}

# Create a tenant (when named) and print a new global admin API key: just bootstrap --tenant acme
bootstrap *ARGS:
    cargo run -q -p subscription-api -- bootstrap {{ARGS}}

# Publish a message file to the ingress exchange (checked locally first).
publish FILE:
    cargo run -q -p herald-cli -- publish {{FILE}}

# Show a queue's dead letters with their reasons (they stay in place).
dead-letters QUEUE:
    cargo run -q -p herald-cli -- dead-letters {{QUEUE}}

# Broker baseline: runtime vs plain lapin, publish -> consume -> ack, release build.
bench-broker:
    scripts/services.sh
    cargo run -q --release -p herald-bench --bin bench-broker

# Email and SMS senders: throughput (email vs Apprise on the same SMTP sink) and memory.
bench-senders:
    scripts/bench-tools.sh
    cargo build -q --release -p sender-email -p sender-sms -p herald-bench
    target/release/bench-senders

# End to end: producer -> router -> no-op sender -> outcome (rate, p50/p99 at 10% load, ratio to the broker baseline) and a 100,000-registration fan-out, release build.
bench-e2e *ARGS:
    scripts/services.sh
    cargo run -q --release -p herald-bench --bin bench-e2e -- {{ARGS}}

# Every benchmark.
bench: bench-broker bench-senders bench-e2e

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
