#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, starts the real control plane and ZooKeeper,
# runs the whole workspace's tests against them, and ends with one line counting the tests.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"

stage "install dependencies"
"$repo/e2e/scripts/install-deps.sh"

stage "build (binaries and tests)"
cargo build --workspace --locked --bins
cargo test --workspace --locked --no-run

stage "start the test environment"
# The binary the build stage made: `cargo run -p` would build it with another feature set.
"$CARGO_TARGET_DIR/debug/nodepool-testenv" up --fresh >/dev/null

stage "cargo test"
log=$(mktemp)
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

stage "stop the test environment"
if [ -z "${KEEP_TESTENV:-}" ]; then
  "$CARGO_TARGET_DIR/debug/nodepool-testenv" down
fi
stage ""

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1); if ($(i) ~ /^ignored/) s += $(i-1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"
