#!/usr/bin/env bash
# `just down`: stops the services `just up` started (SIGTERM: they finish in-flight work).
set -uo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for pidfile in .local/pids/*.pid; do
  name=$(basename "$pidfile" .pid)
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { echo "[down] $name did not stop in 15 s; killing" >&2; kill -KILL "$pid"; }
    echo "[down] stopped $name" >&2
  fi
  rm -f "$pidfile"
done
