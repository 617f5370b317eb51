#!/usr/bin/env bash
# Makes sure the XMPP server the XMPP tests use runs: Prosody 0.12 with multi-user chat on
# 127.0.0.1:$HERALD_XMPP_TEST_PORT (15222 by default: not 5222, so that it never meets a
# system Prosody), with the bot account herald@localhost registered.
#
# Everything is the project's own, under .local/prosody/: the config file this script writes
# (prosody.cfg.lua), the data (data/: accounts, rooms), the pid file and the log. Nothing in
# /etc/prosody is read and the system's Prosody service, if any, is left alone.
# Idempotent: a second run with the same settings only checks that the port answers. When the
# config changed (another port, an edited script), the running instance is restarted.
# Run by scripts/services.sh (`just up`, `just test`, CI); installing needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
log_tag=prosody
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

port=${HERALD_XMPP_TEST_PORT:-15222}
bot_password=${HERALD_XMPP_TEST_BOT_PASSWORD:-herald-bot-pw}
dir=$PWD/.local/prosody
cfg=$dir/prosody.cfg.lua
pidfile=$dir/prosody.pid

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# lua-unbound is Prosody's DNS resolver; without it every prosodyctl call warns.
missing=()
installed prosody || missing+=(prosody)
installed lua-unbound || missing+=(lua-unbound)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# Run as root, prosodyctl (and the server it starts) switches to the user `prosody` first,
# which must be able to write the data directory, the pid file and the log, and read the
# config: the directory is that user's. Where that user cannot reach the checkout at all (a
# clone under /root, mode 700), Prosody stays root instead, which it allows when told to.
# certs/ stays empty (no TLS), but Prosody logs an error at start when it is missing.
as_root mkdir -p "$dir/data" "$dir/certs"
as_root chown prosody:prosody "$dir" "$dir/data"
run_as_root=false
if ! as_root runuser -u prosody -- test -w "$dir"; then
  log "user prosody cannot write $dir (a parent directory is closed to it): running Prosody as root"
  run_as_root=true
fi

config="-- Written by scripts/prosody.sh on every run: change the script, not this file.
-- Prosody for Herald's XMPP tests: loopback only, plain TCP, no federation, no HTTP.

pidfile = \"$pidfile\"
data_path = \"$dir/data\"
log = { info = \"$dir/prosody.log\" }
run_as_root = $run_as_root
-- This instance is started by prosodyctl on purpose; no init system manages it.
prosodyctl_service_warnings = false

interfaces = { \"127.0.0.1\" }
c2s_ports = { $port }
c2s_direct_tls_ports = { }
-- No federation and no HTTP (BOSH, websockets, uploads): nothing but c2s listens.
s2s_ports = { }
s2s_direct_tls_ports = { }
http_ports = { }
https_ports = { }

-- There is no certificate: clients log in with SASL PLAIN over plain TCP on loopback.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true

-- Accounts come from prosodyctl register only (the script, herald-testkit's Prosody).
allow_registration = false

modules_enabled = {
  \"saslauth\"; -- logging in (SASL PLAIN)
  \"roster\"; -- clients ask for their roster after login
  \"disco\"; -- service discovery: clients find conference.localhost and its features
  \"ping\"; -- XEP-0199, the clients' keepalive
  -- presence, message, iq, offline, c2s and posix (the pid file) are always loaded.
}
-- Loaded by default otherwise; federation is off.
modules_disabled = { \"s2s\"; \"s2s_auth_certs\" }

VirtualHost \"localhost\"

-- Multi-user chat. Any local account may create a room. A new room stays locked until its
-- owner submits the configuration form (XEP-0045 10.1.2), the path Herald's room pool takes.
Component \"conference.localhost\" \"muc\"
  restrict_room_creation = false
  muc_room_locking = true"

if [ ! -f "$cfg" ] || [ "$(cat "$cfg")" != "$config" ]; then
  printf '%s\n' "$config" | as_root tee "$cfg" >/dev/null
  log "wrote $cfg"
fi
config_sum=$(sha256sum "$cfg" | cut -d' ' -f1)
# The config the running instance started with, so that a changed one restarts it.
started_stamp=$dir/started.sha256
bot_stamp=$dir/bot.sha256

ctl() {
  local out
  if ! out=$(as_root prosodyctl --config "$cfg" "$@" 2>&1); then
    log "prosodyctl $1 failed:"
    printf '%s\n' "$out" >&2
    return 1
  fi
}

# Registering again sets the password, so a changed HERALD_XMPP_TEST_BOT_PASSWORD applies.
bot_sum=$(printf '%s' "$bot_password" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$bot_stamp" 2>/dev/null)" != "$bot_sum" ] ||
  ! as_root test -f "$dir/data/localhost/accounts/herald.dat"; then
  ctl register herald localhost "$bot_password"
  echo "$bot_sum" | as_root tee "$bot_stamp" >/dev/null
  log "registered herald@localhost"
fi

# The pid of the Prosody this config started, if it still runs. The pid file is readable
# by its owner only.
running_pid() {
  local pid
  pid=$(as_root cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -qa prosody "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

pid=$(running_pid) || pid=
if [ -n "$pid" ] && [ "$(cat "$started_stamp" 2>/dev/null)" != "$config_sum" ]; then
  log "the config changed since Prosody (pid $pid) started: restarting it"
  ctl stop
  pid=
fi
if [ -n "$pid" ] && port_open "$port"; then
  log "Prosody is running on 127.0.0.1:$port"
  exit 0
fi
if [ -z "$pid" ]; then
  if port_open "$port"; then
    log "127.0.0.1:$port is taken by a process that is not this project's Prosody;" \
      "stop it or choose another port with HERALD_XMPP_TEST_PORT"
    exit 1
  fi
  log "starting Prosody on 127.0.0.1:$port (config $cfg)"
  ctl start
  echo "$config_sum" | as_root tee "$started_stamp" >/dev/null
fi
for _ in $(seq 1 100); do
  port_open "$port" && break
  sleep 0.1
done
if ! port_open "$port"; then
  log "Prosody did not open 127.0.0.1:$port within 10 s; the end of $dir/prosody.log:"
  as_root tail -n 20 "$dir/prosody.log" >&2 || true
  exit 1
fi
log "Prosody is up on 127.0.0.1:$port"
