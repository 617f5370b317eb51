#!/usr/bin/env bash
# Makes sure the services Herald needs run on loopback: RabbitMQ and PostgreSQL, plus the
# Python SMTP server the email tests use, the XMPP server the XMPP tests use (Prosody, through
# scripts/prosody.sh), and the tools the scripts call (curl, psql).
# Idempotent: anything already running is left alone; anything missing is installed from
# Debian's packages and started, so a fresh Debian 12 with only the Rust toolchain works.
# Used by `just up`, `just test`, `just run` and CI. Installing needs root (or sudo).
set -euo pipefail

log_tag=services
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# RabbitMQ's file handle cache counts about 2.5 handles per quorum queue against a limit it
# derives from the broker's soft NOFILE limit (927 under Debian's default of 1024), while the
# files it really holds open are a few dozen. Past that count every queue declaration waits
# for a handle, for ever: with the test suite's parallel topologies (about 30 queues each) a
# few hundred queues wedge the broker (seen twice here). The count is raised on the running
# broker, not the process limit: the real open files stay far below 1024.
raise_rabbitmq_handle_limit() {
  local limit
  limit=$(as_root rabbitmqctl -q eval \
    '{_, L} = lists:keyfind(total_limit, 1, file_handle_cache:info()), L.' 2>/dev/null) || return 0
  if [ -n "$limit" ] && [ "$limit" -lt 5000 ] 2>/dev/null; then
    as_root rabbitmqctl -q eval 'file_handle_cache:set_limit(5000).' >/dev/null
    log "raised RabbitMQ's file handle count limit from $limit to 5000"
  fi
}

ensure_rabbitmq() {
  if port_open 5672 && as_root rabbitmqctl -q status >/dev/null 2>&1; then
    log "RabbitMQ is running"
    raise_rabbitmq_handle_limit
    return
  fi
  # rabbitmq-server is in sbin, which a non-root PATH may leave out.
  [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  if ! port_open 5672; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached
  fi
  as_root rabbitmqctl -q await_startup --timeout 90
  log "RabbitMQ is up"
  raise_rabbitmq_handle_limit
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "PostgreSQL is running"
    return
  fi
  local installed_now=0
  if [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql
    installed_now=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ "$installed_now" = 1 ]; then
    # A fresh Debian cluster asks for passwords on TCP; local development and tests use
    # trust on loopback only, as the brief's machines do.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  # Where the package started the cluster itself (before the trust lines above), the start
  # above does nothing: reload so they apply.
  if [ "$installed_now" = 1 ]; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }
  log "PostgreSQL is up"
}

# Tools the scripts call: curl (`just up`, `just status`), python3 (the SMTP sink, `just
# mailbox`, scripts/clean-test-topology.py), and PostgreSQL's client programs (`just up`
# creates the database with them) when a server runs but the client is not installed.
ensure_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  # The email sender's TLS tests make their throwaway certificates with it.
  command -v openssl >/dev/null || missing+=(openssl)
  if ! command -v psql >/dev/null && port_open 5432; then missing+=(postgresql-client); fi
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# Python packages the tests and `just up` use: aiosmtpd is the SMTP server the email
# sender is tested against (and the local mailbox of `just up`); pika lets
# scripts/clean-test-topology.py delete what tests declared. Both come from Debian's
# packages for Debian's own Python, which refuses pip installs (PEP 668, "externally
# managed"), and from pip for a Python of one's own (pyenv, a virtualenv) first on PATH,
# since the tests run whichever `python3` PATH finds.
ensure_python_packages() {
  local missing=()
  python3 -c "import aiosmtpd" 2>/dev/null || missing+=(aiosmtpd)
  python3 -c "import pika" 2>/dev/null || missing+=(pika)
  if [ ${#missing[@]} -eq 0 ]; then
    log "aiosmtpd and pika are installed"
    return
  fi
  if [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ]; then
    apt_install "${missing[@]/#/python3-}"
  else
    log "installing ${missing[*]} (pip, into $(command -v python3))"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q "${missing[@]}"
  fi
  python3 -c "import aiosmtpd, pika" || { log "${missing[*]} could not be installed"; exit 1; }
}

ensure_tools
ensure_rabbitmq
ensure_postgres
ensure_python_packages
# Last, and a script of its own so that it can run alone: the XMPP tests' Prosody.
"$(dirname "$0")/prosody.sh"
