#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine with only the Rust toolchain ahead of time (an image, a
# CI runner): the `just` command runner and the local services. `./run up` and `./run test`
# do all of this themselves; this script is for when nothing should start yet.
# Every step fails loudly: a machine that is half prepared should stop here, not later.
set -euo pipefail
cd "$(dirname "$0")/.."

./run --version   # installs just with cargo when it is missing
scripts/services.sh
