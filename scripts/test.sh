#!/usr/bin/env bash
# `just test`: the services the tests need, then every test in the workspace, then one
# closing line with the totals over all test binaries (cargo prints one line per binary,
# and the last of those is often a crate with no tests of its own).
set -uo pipefail
cd "$(dirname "$0")/.."
# Docs name only links and paths that exist; a failure fails the run, after the tests ran.
docs_report=$(python3 scripts/check-docs.py 2>&1)
docs_status=$?
echo "$docs_report"
scripts/services.sh || exit 1
# Test topologies left by earlier runs (see the script for why they must not pile up).
scripts/clean-test-topology.py || true
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The API against its own OpenAPI document (scripts/schemathesis.sh): after the tests, and
# never hiding their result; either failing fails the run.
scripts/schemathesis.sh
fuzz_status=$?
# The short fault suite (issue #18: scenarios 2, 3, 6 and 9 at small loads) on the debug
# binaries `cargo test` just built, against a broker and a database of its own.
chaos_status=0
if [ "$#" -eq 0 ]; then
  cargo build -q --workspace --bins && target/debug/herald-chaos --short --bin-dir target/debug
  chaos_status=$?
fi
scripts/clean-test-topology.py || true
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/) p += $i
         if ($(i+1) ~ /^failed/) f += $i
         if ($(i+1) ~ /^ignored/) s += $i
       }
     }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if [ "$chaos_status" -ne 0 ]; then
  echo "chaos: the short fault suite failed (exit $chaos_status; service logs in target/chaos-logs)"
  [ "$status" -ne 0 ] || status=$chaos_status
fi
if [ "$fuzz_status" -ne 0 ]; then
  echo "schemathesis: the API does not match its OpenAPI document (exit $fuzz_status)"
  [ "$status" -ne 0 ] || status=$fuzz_status
fi
# Repeated here, where it is seen: the docs problems, and a non-zero exit even if the tests passed.
if [ "$docs_status" -ne 0 ]; then
  echo "$docs_report"
  [ "$status" -ne 0 ] || status=$docs_status
fi
exit "$status"
