#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds the workspace and the
# static agent, runs every test with nextest, then the README's tour against scripts/run.sh, then each fuzz
# target for 30 s (scripts/fuzz.sh). This is the README's test command and what CI runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
export BERTH_TEST_DEPS="$root/.deps"

echo "== fmt"; cargo fmt --all -- --check
echo "== clippy"; cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== build"; cargo build --locked --workspace --bins
echo "== static agent"; BERTH_STATIC_AGENT="$(bash scripts/build-agent.sh)"; export BERTH_STATIC_AGENT
echo "== images"
BERTH_TEST_IMAGE="$(BERTH_AGENT_BIN="$BERTH_STATIC_AGENT" bash scripts/build-image.sh minimal)"; export BERTH_TEST_IMAGE
BERTH_FULL_IMAGE="$(BERTH_AGENT_BIN="$BERTH_STATIC_AGENT" bash scripts/build-image.sh full)"; export BERTH_FULL_IMAGE
echo "== tests"; cargo nextest run --locked --workspace --no-fail-fast "$@"
echo "== README tour"; bash scripts/tour.sh
echo "== fuzz"; bash scripts/fuzz.sh "${BERTH_FUZZ_SECONDS:-30}"
