#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds the static agent and
# the images, builds and runs every test with nextest (one cargo build for the binaries and the tests,
# which the tour then uses), then the README's tour against scripts/run.sh, then the fuzz targets for
# 30 s (scripts/fuzz.sh). This is the README's test command and what CI runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# Each stage's wall time is printed at the end (the CI budget is 25 minutes on 2 cores).
t0=$SECONDS; last=$SECONDS; times=""
stage() { times+="$(printf '%-18s %4ds' "$1" $((SECONDS - last)))"$'\n'; last=$SECONDS; }
trap 'printf "== stage times (total %ds)\n%s" $((SECONDS - t0)) "$times"' EXIT
bash scripts/install-deps.sh; stage install-deps
export BERTH_TEST_DEPS="$root/.deps"

echo "== fmt"; cargo fmt --all -- --check; stage fmt
echo "== clippy"; cargo clippy --locked --workspace --all-targets -- -D warnings; stage clippy
echo "== static agent"; BERTH_STATIC_AGENT="$(bash scripts/build-agent.sh)"; export BERTH_STATIC_AGENT; stage static-agent
echo "== images"
BERTH_TEST_IMAGE="$(BERTH_AGENT_BIN="$BERTH_STATIC_AGENT" bash scripts/build-image.sh minimal)"; export BERTH_TEST_IMAGE
BERTH_FULL_IMAGE="$(BERTH_AGENT_BIN="$BERTH_STATIC_AGENT" bash scripts/build-image.sh full)"; export BERTH_FULL_IMAGE
stage images
echo "== tests"; cargo nextest run --locked --workspace --no-fail-fast "$@"; stage tests
echo "== README tour"; bash scripts/tour.sh; stage tour
echo "== fuzz"; bash scripts/fuzz.sh "${BERTH_FUZZ_SECONDS:-30}"; stage fuzz
