#!/usr/bin/env bash
# What the benchmarks need besides the services: postfix's smtp-sink (a fast SMTP server that
# discards mail) and smtp-source (its load generator, the email ceiling), Apprise (the
# comparison), and wrk (bench-e2e's HTTP load generator). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
if ! command -v smtp-sink >/dev/null; then
  echo "[bench-tools] installing postfix (for smtp-sink)" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
if ! command -v wrk >/dev/null; then
  echo "[bench-tools] installing wrk" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
# Apprise in a virtual environment of the build's own (Debian refuses a system-wide pip
# install); bench-senders runs target/bench-venv/bin/python3.
VENV=target/bench-venv
if ! "$VENV/bin/python3" -c "import apprise" 2>/dev/null; then
  echo "[bench-tools] installing apprise into $VENV" >&2
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q apprise
fi
