#!/usr/bin/env bash
# `just status`: each service's readiness, from its /readyz answer (200 ready, 503 not).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/herald-services.sh
for entry in "${HERALD_SERVICES[@]}"; do
  name=${entry%%=*}
  addr=${entry#*=}
  body=$(curl -sS --max-time 3 -w '\n%{http_code}' "http://$addr/readyz" 2>/dev/null) || body=""
  code=${body##*$'\n'}
  json=${body%$'\n'*}
  case "$code" in
    200) printf '%-18s ready      http://%s\n' "$name" "$addr" ;;
    503) printf '%-18s NOT READY  %s\n' "$name" "$json" ;;
    *)   printf '%-18s DOWN       nothing answers on %s\n' "$name" "$addr" ;;
  esac
done
