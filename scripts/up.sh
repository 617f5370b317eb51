#!/usr/bin/env bash
# `just up`: local services, a build, and every Herald service in the background.
# Logs go to .local/logs/<service>.log, pids to .local/pids/. `just down` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/herald-services.sh

scripts/services.sh
echo "[up] building" >&2
cargo build -q --workspace --bins
mkdir -p .local/logs .local/pids

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

# Wait until each answers /readyz, so `just up` returning means the system is usable.
for entry in "${HERALD_SERVICES[@]}"; do
  name=${entry%%=*}
  addr=${entry#*=}
  for _ in $(seq 1 60); do
    curl -fsS "http://$addr/readyz" >/dev/null 2>&1 && break
    sleep 0.5
  done
done
scripts/status.sh
