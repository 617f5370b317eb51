#!/usr/bin/env bash
# `just status`: each service's readiness.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/herald-services.sh
for entry in "${HERALD_SERVICES[@]}"; do
  name=${entry%%=*}
  addr=${entry#*=}
  body=$(curl -sS --max-time 3 "http://$addr/readyz" 2>/dev/null) || body=""
  if [ -z "$body" ]; then
    printf '%-18s DOWN (nothing answers on %s)\n' "$name" "$addr"
  elif printf '%s' "$body" | grep -q '"ready":true'; then
    printf '%-18s ready  http://%s\n' "$name" "$addr"
  else
    printf '%-18s NOT READY %s\n' "$name" "$body"
  fi
done
