#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds the static agent and
# the images, builds and runs every test with nextest, then the README's tour against scripts/run.sh (with
# the binaries the tests built), then the fuzz targets for 30 s (scripts/fuzz.sh). This is the README's
# test command and what CI runs.
#
# CI has 2 cores and a 25-minute budget, and no single cargo build keeps both busy all the way (the last
# crates of a build compile alone), so two builds run beside others: the static agent beside clippy (its
# own profile and target directory, so neither waits for the other's lock), and the fuzz targets (their
# own workspace) beside the test run, at the lowest CPU priority so the tests, which start real
# containers against deadlines, always come first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# Each stage's wall time is printed at the end (the CI budget is 25 minutes on 2 cores).
t0=$SECONDS; last=$SECONDS; times=""
stage() { times+="$(printf '%-18s %4ds' "$1" $((SECONDS - last)))"$'\n'; last=$SECONDS; }
# Output of the build running beside another stage, shown if it fails; such builds end with the script.
bg_log="$(mktemp)"
finish() {
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -f "$bg_log" "$bg_log.path"
  printf "== stage times (total %ds)\n%s" $((SECONDS - t0)) "$times"
}
trap finish EXIT
bash scripts/install-deps.sh; stage install-deps
export BERTH_TEST_DEPS="$root/.deps"

echo "== fmt"; cargo fmt --all -- --check; stage fmt
echo "== clippy, and the static agent beside it"
bash scripts/build-agent.sh >"$bg_log.path" 2>"$bg_log" &
agent_pid=$!
cargo clippy --locked --workspace --all-targets -- -D warnings; stage clippy
wait "$agent_pid" || { cat "$bg_log" >&2; echo "static agent: the build failed" >&2; exit 1; }
BERTH_STATIC_AGENT="$(cat "$bg_log.path")"; export BERTH_STATIC_AGENT; stage static-agent
echo "== images"
BERTH_TEST_IMAGE="$(BERTH_AGENT_BIN="$BERTH_STATIC_AGENT" bash scripts/build-image.sh minimal)"; export BERTH_TEST_IMAGE
BERTH_FULL_IMAGE="$(BERTH_AGENT_BIN="$BERTH_STATIC_AGENT" bash scripts/build-image.sh full)"; export BERTH_FULL_IMAGE
stage images
echo "== tests: build"; cargo nextest run --locked --workspace --no-run; stage tests-build
echo "== tests: run, and the fuzz targets building beside them"
nice -n 19 bash scripts/fuzz.sh build >"$bg_log" 2>&1 &
fuzz_pid=$!
cargo nextest run --locked --workspace --no-fail-fast "$@"; stage tests-run
echo "== README tour"; bash scripts/tour.sh; stage tour
wait "$fuzz_pid" || { cat "$bg_log" >&2; echo "fuzz: building the targets failed" >&2; exit 1; }
stage fuzz-build-wait
echo "== fuzz"; bash scripts/fuzz.sh "${BERTH_FUZZ_SECONDS:-30}"; stage fuzz
