#!/usr/bin/env bash
# Makes sure the services Herald needs run on loopback: RabbitMQ and PostgreSQL, plus the
# Python SMTP server the email tests use.
# Idempotent: anything already running is left alone; anything missing is installed from
# Debian's packages and started. Used by `just up`, `just test` and CI.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_rabbitmq() {
  if port_open 5672 && rabbitmqctl -q status >/dev/null 2>&1; then
    log "RabbitMQ is running"
    return
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached
  fi
  rabbitmqctl -q await_startup --timeout 90
  log "RabbitMQ is up"
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
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }
  log "PostgreSQL is up"
}

# Python packages the tests and `just up` use: aiosmtpd is the SMTP server the email
# sender is tested against (and the local mailbox of `just up`); pika lets
# scripts/clean-test-topology.py delete what tests declared.
ensure_python_packages() {
  local missing=()
  python3 -c "import aiosmtpd" 2>/dev/null || missing+=(aiosmtpd)
  python3 -c "import pika" 2>/dev/null || missing+=(pika)
  if [ ${#missing[@]} -eq 0 ]; then
    log "aiosmtpd and pika are installed"
    return
  fi
  log "installing ${missing[*]} (pip)"
  python3 -m pip install -q "${missing[@]}" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  python3 -c "import aiosmtpd, pika" || { log "${missing[*]} could not be installed"; exit 1; }
}

ensure_rabbitmq
ensure_postgres
ensure_python_packages
